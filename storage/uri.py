"""Store URIs: refused when they hold credentials (a URI is printed in titles, errors and shared
reports, so a key in it leaks), and opened as pyarrow filesystems whose every remote call waits a
bounded time. pyarrow's `FileSystem.from_uri` takes no timeouts, so s3:// and gs:// filesystems are
built here from the same query options it accepts; other schemes go through it unchanged.

A remote store is probed once when opened (one HeadBucket on S3, one HTTP request on GCS), so an
endpoint that is down, refuses or never answers is one line naming what to check, not a long wait
and a library's message. Every other remote error is shown through `describe`, which also scrubs
anything credential-shaped from the text."""

from __future__ import annotations

import datetime
import math
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

from rethink.storage.errors import StoreError
from rethink.text import redacted

TIMEOUT_ENV = "RETHINK_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0  # one request's wait for an answer; a silent endpoint fails in ~3 tries of it
MAX_TIMEOUT_S = 3600.0
ATTEMPTS = 3  # tries per remote call (AWS's standard retry mode): transient 5xx and timeouts retried
CREDENTIALS = ("store URIs must not hold credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
               "~/.aws/credentials (GOOGLE_APPLICATION_CREDENTIALS for gs://)")
OBJECT_SCHEMES = ("s3", "gs", "gcs")  # the authority is a bucket: never a user, a password or a port
S3_OPTIONS = ("region", "scheme", "endpoint_override", "allow_bucket_creation", "allow_bucket_deletion",
              "tls_ca_file_path", "tls_verify_certificates")
GCS_OPTIONS = ("scheme", "endpoint_override", "retry_limit_seconds", "project_id")
# A query key naming a secret, in any scheme (pyarrow's, Azure's, presigned URLs').
_SECRET_KEY = re.compile(r"secret|passw|token|credential|signature|sas|(^|_)key$|^x-amz-", re.IGNORECASE)
_NOT_SECRET = ("credential_kind",)  # Azure's: which kind of credentials to look up, not one


@dataclass(frozen=True)
class Remote:
    """Where a remote store's requests go, for messages: 'the S3 endpoint 127.0.0.1:9000'."""

    kind: str  # "S3" or "GCS"
    endpoint: str  # host[:port] as given, or the service's default host
    seconds: float  # how long one request waits for an answer (timeout_s)
    scheme: str = "https"
    tries: int = 1  # how many times a request is sent before it fails
    option: str = "endpoint_override"  # what the user sets to change the endpoint


# ---- credentials -----------------------------------------------------------------------------


def check(uri: str) -> None:
    """Refuse a URI that holds credentials, saying where without repeating them. Run before the
    URI is parsed or printed anywhere."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, host = authority.rpartition("@")
    where = None
    if at and (":" in userinfo or scheme.lower() in OBJECT_SCHEMES):
        where = "KEY:SECRET@ or KEY@ before the bucket or host"
    elif ":" in host and (scheme.lower() in OBJECT_SCHEMES or not _is_port(host)):
        where = "KEY:SECRET@ before the bucket or host"  # a secret holding '/' splits the authority
    else:
        for key, value in query_pairs(uri):
            if _SECRET_KEY.search(key) and key not in _NOT_SECRET:
                where = f"the query key '{_safe_name(key)}'"
            elif "@" in value and key.lower() in ("endpoint_override", "endpoint"):
                where = f"a user before the {_safe_name(key)} host"
            if where:
                break
    if where:
        raise StoreError(f"the store URI holds credentials ({where}); {CREDENTIALS}")


def _is_port(host: str) -> bool:
    """Whether what follows the host's last ':' is a port (an IPv6 literal '[::1]' has colons too)."""
    return host.endswith("]") or host.rsplit(":", 1)[1].isdigit()


def _safe_name(key: str) -> str:
    return key if re.fullmatch(r"[\w.-]{1,40}", key) else "?"


def query_pairs(uri: str) -> list[tuple[str, str]]:
    """The query's (key, value) pairs, percent-decoded ('+' stays '+', as pyarrow reads it)."""
    query = uri.split("#", 1)[0].partition("?")[2]
    pairs = []
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        pairs.append((unquote(key), unquote(value)))
    return pairs


# ---- the remote timeout ----------------------------------------------------------------------


def timeout_s() -> float:
    """Seconds one remote request waits to connect and for an answer: RETHINK_REMOTE_TIMEOUT, else
    DEFAULT_TIMEOUT_S; a value that is not a number of seconds is one line."""
    from rethink.storage.envtime import seconds

    return seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, most=MAX_TIMEOUT_S, example=30)


# ---- opening -----------------------------------------------------------------------------------


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) for a store URI or absolute local path, credentials refused first;
    s3:// and gs:// with bounded waits, probed once."""
    fs, root, remote = filesystem(uri)
    if remote is not None and remote.kind == "S3":
        probe_s3(fs, root.split("/", 1)[0], remote)
    elif remote is not None:
        _probe_http(remote, f"/storage/v1/b/{root.split('/', 1)[0]}?fields=name")
    return fs, root


def filesystem(uri: str) -> tuple[pafs.FileSystem, str, Remote | None]:
    """(filesystem, root path, where its requests go) without a request made, but for the region
    of an S3 bucket given with neither region nor endpoint (as pyarrow's from_uri finds it)."""
    check(uri)
    scheme = uri.partition("://")[0] if "://" in uri else ""
    if scheme not in ("s3", "gs", "gcs"):
        return (*pafs.FileSystem.from_uri(uri), None)
    parts = urlsplit(uri)
    bucket = parts.netloc
    if not bucket:
        raise StoreError(f"the store URI names no bucket: give {scheme}://BUCKET/PATH")
    root = (bucket + unquote(parts.path)).rstrip("/")
    options = _options(uri, S3_OPTIONS if scheme == "s3" else GCS_OPTIONS, "S3" if scheme == "s3" else "GCS")
    fs, remote = (_s3 if scheme == "s3" else _gcs)(bucket, options, timeout_s())
    return fs, root, remote


def _options(uri: str, valid: tuple[str, ...], kind: str) -> dict[str, str]:
    """The query's options (the first of a repeated key wins and an empty value is unset, as in
    pyarrow); an unknown key is one line listing the valid ones."""
    out: dict[str, str] = {}
    for key, value in query_pairs(uri):
        if key not in valid:
            raise StoreError(f"unknown {kind} store URI option '{_safe_name(key)}'; valid: {', '.join(valid)}")
        if value and key not in out:
            out[key] = value
    return out


def _flag(key: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise StoreError(f"store URI option {key} must be true or false, got {value[:20]!r}")


def _s3(bucket: str, options: dict[str, str], seconds: float) -> tuple[pafs.S3FileSystem, Remote]:
    scheme = options.get("scheme", "https")
    if scheme not in ("http", "https"):
        raise StoreError(f"store URI option scheme must be http or https, got {scheme[:20]!r}")
    if not _flag("tls_verify_certificates", options.get("tls_verify_certificates", "true")):
        raise StoreError("store URI option tls_verify_certificates=false is not supported: give the server's "
                         "CA certificate with tls_ca_file_path=PATH")
    endpoint = options.get("endpoint_override")
    region = options.get("region")
    if region is None and endpoint is None:  # as pyarrow's from_uri: the bucket's own region
        region = _bucket_region(bucket)
    fs = pafs.S3FileSystem(
        region=region, scheme=scheme, endpoint_override=endpoint,
        allow_bucket_creation=_flag("allow_bucket_creation", options.get("allow_bucket_creation", "false")),
        allow_bucket_deletion=_flag("allow_bucket_deletion", options.get("allow_bucket_deletion", "false")),
        tls_ca_file_path=options.get("tls_ca_file_path"),
        connect_timeout=seconds, request_timeout=seconds,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS))
    where = endpoint or f"s3.{region + '.' if region else ''}amazonaws.com (bucket {bucket})"
    return fs, Remote("S3", where, seconds, scheme, ATTEMPTS)


def _bucket_region(bucket: str) -> str:
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot find the region of bucket '{bucket}': {describe(exc)}; "
                         "give it as ?region=REGION") from None


def _gcs(bucket: str, options: dict[str, str], seconds: float) -> tuple[pafs.GcsFileSystem, Remote]:
    scheme = options.get("scheme", "https")
    if scheme not in ("http", "https"):
        raise StoreError(f"store URI option scheme must be http or https, got {scheme[:20]!r}")
    limit = seconds * ATTEMPTS  # GCS bounds retries by time (its token fetch too), not by tries
    if "retry_limit_seconds" in options:
        try:
            limit = float(options["retry_limit_seconds"])
        except ValueError:
            limit = math.nan
        if not 0 < limit <= MAX_TIMEOUT_S:
            raise StoreError(f"store URI option retry_limit_seconds must be a number of seconds in "
                             f"(0, {MAX_TIMEOUT_S:g}], got {options['retry_limit_seconds'][:20]!r}")
    fs = pafs.GcsFileSystem(scheme=scheme, endpoint_override=options.get("endpoint_override"),
                            project_id=options.get("project_id"), default_bucket_location="",  # as from_uri
                            retry_time_limit=datetime.timedelta(seconds=limit))
    return fs, Remote("GCS", options.get("endpoint_override", "storage.googleapis.com"), seconds, scheme)


# ---- probing and describing failures -------------------------------------------------------


def probe_s3(fs: pafs.FileSystem, bucket: str, remote: Remote) -> None:
    """One HeadBucket: an endpoint that is down, refuses or never answers is one line now. Any
    answer (a missing bucket, access denied: some keys may not HEAD a bucket) is left to the
    store's own reads to report."""
    try:
        fs.get_file_info(bucket)
    except OSError as exc:
        failure = network_failure(exc)
        if failure:
            raise StoreError(unreachable(remote, failure)) from None


def _probe_http(remote: Remote, path: str) -> None:
    """One GET with our own timeouts (pyarrow's GCS client waits up to 120 s for a silent server
    whatever its options say); any HTTP answer means the endpoint is up."""
    import http.client  # only for gs://: `rethink status` on a local store never loads ssl
    import ssl

    address = remote.endpoint.rpartition("://")[2]
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    try:
        if remote.scheme == "https":
            conn = http.client.HTTPSConnection(host, int(port or 443), timeout=remote.seconds,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, int(port or 80), timeout=remote.seconds)
        try:
            conn.request("GET", path)
            conn.getresponse().close()
        finally:
            conn.close()
    except ValueError:
        raise StoreError(f"the {remote.kind} {remote.option} '{remote.endpoint}' is not HOST:PORT") from None
    except (OSError, http.client.HTTPException) as exc:
        failure = network_failure(exc) or "no HTTP answer"
        raise StoreError(unreachable(remote, failure)) from None


def network_failure(exc: BaseException) -> str | None:
    """What kept a request from an answer ('no answer', 'could not connect', 'unknown host'...), from
    pyarrow's, botocore's or the socket's error; None for an answer the server gave."""
    text = str(exc)
    name = type(exc).__name__
    if isinstance(exc, (socket.timeout, TimeoutError)) or "curlCode: 28" in text or "Timeout" in name \
            or "Timeout was reached" in text or "timed out" in text.lower():
        return "no answer"
    if isinstance(exc, ConnectionRefusedError) or "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, socket.gaierror) or "curlCode: 6," in text or "resolve host" in text \
            or "Name or service not known" in text:
        return "unknown host"
    if any(f"curlCode: {code}," in text for code in (52, 56)) or "Empty reply from server" in text \
            or "Connection reset" in text or isinstance(exc, ConnectionResetError):
        return "connection closed without an answer"
    if any(f"curlCode: {code}," in text for code in (1, 8, 35)) or "Received HTTP/0.9" in text \
            or "Weird server reply" in text:
        return "no HTTP answer"
    if "curlCode: 7," in text or "CURL error [7]" in text or "Could not connect" in text \
            or name in ("EndpointConnectionError", "ConnectionClosedError") or isinstance(exc, ConnectionError):
        return "could not connect"
    return None


def unreachable(remote: Remote, failure: str) -> str:
    """The one line for an endpoint that gave no answer: what to check, how to wait longer."""
    if failure == "no answer":
        tries = f", {remote.tries} tries" if remote.tries > 1 else ""
        return (f"cannot reach the {remote.kind} endpoint {remote.endpoint} within {remote.seconds:g} s "
                f"(no answer{tries}): check {remote.option} and that the server is up; {TIMEOUT_ENV} raises the limit")
    return (f"cannot reach the {remote.kind} endpoint {remote.endpoint} ({failure}): check {remote.option} "
            "and that the server is up")


def describe(exc: BaseException) -> str:
    """A library's error as one line with nothing credential-shaped in it."""
    return redacted(" ".join(str(exc).split()))
