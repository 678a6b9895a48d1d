"""Conditional writes on S3 (AWS, MinIO, SeaweedFS): what pyarrow's filesystems cannot do
(apache/arrow#44281, closed unresolved). A create-if-absent PUT (`If-None-Match: *`) makes a claim
or a grid freeze exactly-once; a compare-and-swap PUT (`If-Match: ETAG`) refreshes a claim's
heartbeat without overwriting anyone else's write; every other write is one plain PUT, already
atomic on S3 (no temporary object, no copy and delete).

boto3 is imported on first use, so `rethink status` and `--help` never pay for it. Only S3 stores
get an `S3Objects`; other pyarrow filesystems (gs://, hdfs://, mock://) have no exclusive create
here, and the store guards them with a driver lease instead (Store.driver_lease)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from rethink.storage import uri as store_uri
from rethink.storage.store import StoreError

CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3Objects:
    """Single-PUT and conditional writes to the bucket of an `s3://BUCKET/KEY?...` store URI.
    Paths are pyarrow's full paths, `BUCKET/KEY`, as Store.path gives them."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client = None
        self._query = dict(reversed(store_uri.query_pairs(uri)))  # the first of a repeated key, as pyarrow
        self._seconds = store_uri.timeout_s()
        self._remote = store_uri.Remote("S3", self._query.get("endpoint_override") or "s3.amazonaws.com",
                                        self._seconds, tries=store_uri.ATTEMPTS)

    @property
    def client(self):
        """A boto3 S3 client for the URI pyarrow took: its endpoint_override and scheme, its region
        (the `region` parameter, else AWS_REGION / AWS_DEFAULT_REGION), its CA file, credentials from
        boto3's usual chain (environment, profile, instance role), and the same bounded waits and tries
        as the store's pyarrow filesystem (storage/uri.py). Made once, on first use."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            query, seconds = self._query, self._seconds
            endpoint = query.get("endpoint_override") or None
            if endpoint and "://" not in endpoint:
                endpoint = f"{query.get('scheme') or 'https'}://{endpoint}"
            region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            config = Config(connect_timeout=seconds, read_timeout=seconds,  # a silent endpoint: ~3 waits
                            retries={"mode": "standard", "max_attempts": store_uri.ATTEMPTS},
                            s3={"addressing_style": "path"} if endpoint else {})  # path-style, as pyarrow does
            self._client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region,
                                                          config=config, verify=query.get("tls_ca_file_path"))
        return self._client

    def put(self, path: str, data: bytes) -> str:
        """Write `data` to `path` in one PUT (readers see the old object or the new, never half);
        returns the new ETag."""
        bucket, key = _split(path)
        with self._errors("write", path):
            return self.client.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]

    def create(self, path: str, data: bytes) -> bool:
        """Create `path` only when absent: True for the one writer that made it. A conflict whose
        object holds exactly `data` is ours (a retried PUT whose first answer was lost)."""
        bucket, key = _split(path)
        with self._errors("create", path):
            try:
                self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except Exception as exc:
                if not _conflict(exc):
                    raise
        found = self.get(path)
        return found is not None and found[0] == data

    def delete(self, path: str) -> None:
        """Delete `path` (absent is fine). One DELETE, and nothing in its place: pyarrow's
        delete_file also checks the parent "folder" and writes an empty marker object for it,
        requests that compaction would pay once per deleted run file."""
        bucket, key = _split(path)
        with self._errors("delete", path):
            self.client.delete_object(Bucket=bucket, Key=key)

    def replace(self, path: str, data: bytes, etag: str) -> bool:
        """Overwrite `path` only while it is still the version `etag`: False when anyone wrote it
        since (or deleted it), and then nothing is written."""
        bucket, key = _split(path)
        with self._errors("write", path):
            try:
                self.client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=etag)
                return True
            except Exception as exc:
                if _conflict(exc) or _missing(exc):
                    return False
                raise

    def get(self, path: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when there is none."""
        bucket, key = _split(path)
        with self._errors("read", path):
            try:
                answer = self.client.get_object(Bucket=bucket, Key=key)
            except Exception as exc:
                if _missing(exc):
                    return None
                raise
            return answer["Body"].read(), answer["ETag"]

    @contextmanager
    def _errors(self, doing: str, path: str) -> Iterator[None]:
        """botocore's errors (credentials, bucket, network, a server without conditional writes) as
        one StoreError line naming the object and what to do; nothing credential-shaped quoted."""
        try:
            yield
        except Exception as exc:
            if not type(exc).__module__.startswith(("botocore", "boto3", "urllib3")):
                raise
            raise StoreError(f"cannot {doing} s3://{path}: {self._hint(exc)}") from None

    def _hint(self, exc: BaseException) -> str:
        code = _code(exc)
        if code == "NotImplemented" or _status(exc) == 501:
            return ("the server does not support conditional writes (If-None-Match, If-Match); "
                    "use AWS S3, MinIO or SeaweedFS")
        if code == "NoSuchBucket":
            return "the bucket does not exist; create it first"
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or _status(exc) == 403:
            return "access denied; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        if type(exc).__name__ == "NoCredentialsError":
            return "no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        failure = store_uri.network_failure(exc)
        if failure:
            return store_uri.unreachable(self._remote, failure)
        return store_uri.describe(exc)


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


def _code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None


def _conflict(exc: BaseException) -> bool:
    """412 PreconditionFailed (the condition did not hold) or 409 ConditionalRequestConflict (a
    concurrent conditional write won)."""
    return _code(exc) in CONFLICT_CODES or _status(exc) in (409, 412)


def _missing(exc: BaseException) -> bool:
    return _code(exc) in ("NoSuchKey", "404") or _status(exc) == 404
