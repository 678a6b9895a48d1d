"""Store URIs (storage/uri.py): one holding credentials is refused by every way in (the CLI, the
Python API, a cluster submit) without the secret ever printed; the s3:// and gs:// filesystems
rethink builds itself, to give them timeouts, take every option pyarrow's from_uri takes and
mean the same store; the timeout variable is checked."""

from __future__ import annotations

import pytest
import pyarrow.fs as pafs
from typer.testing import CliRunner

from rethink import RethinkError
from rethink.cli import app
from rethink.runner.cluster import submit_job
from rethink.runner.grid import parse_grid
from rethink.storage import uri as store_uri
from rethink.storage.results import open_store

SECRET = "SuperSecret123"
WITH_CREDENTIALS = [
    f"s3://AKIAEXAMPLE:{SECRET}@bkt/x?endpoint_override=127.0.0.1:9&scheme=http",
    f"s3://AKIAEXAMPLE:{SECRET}/withslash@bkt/x",  # a secret holding '/' ends the authority early
    f"s3://{SECRET}@bkt/x",  # a key id alone
    f"s3://?secret_key={SECRET}",  # and no bucket: refused for that, unechoed too
    f"s3://bkt/x?region=us-east-1&secret_key={SECRET}",
    f"s3://bkt/x?access_key=AKIA&session_token={SECRET}",
    f"s3://bkt/x?endpoint_override=user:{SECRET}@127.0.0.1:9",
    f"s3://bkt/x?X-Amz-Security-Token={SECRET}",
    f"gs://bkt/x?credentials={SECRET}",
    f"gcs://{SECRET}@bkt/x",
    f"abfs://container@acct.dfs.core.windows.net/x?sas_token={SECRET}",
    f"abfs://acct:{SECRET}@container/x",
    f"hdfs://user:{SECRET}@namenode:8020/x",
]


@pytest.mark.parametrize("uri", WITH_CREDENTIALS)
def test_a_uri_with_credentials_is_refused_without_echoing_them(uri, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    for command in (["status", "--store", uri], ["query", "select 1", "--store", uri],
                    ["report", "x", "--store", uri, "--out", str(tmp_path / "r")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, result.output
        assert ("names no bucket" if uri.startswith("s3://?") else "must not hold credentials") in result.output
        assert SECRET not in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(RethinkError) as raised:
        open_store(uri)
    assert SECRET not in str(raised.value)
    with pytest.raises(RethinkError, match="must not hold credentials") as raised:  # before Ray is reached
        submit_job("http://127.0.0.1:9", parse_grid("name: x"), uri, None, 1)
    assert SECRET not in str(raised.value)


def test_redacted_masks_credentials_quoted_in_an_error_text():
    text = (f"cannot open 's3://AKIA:{SECRET}@bkt/x?secret_key={SECRET}&region=eu-west-1' and "
            f"gs://bkt/y?access_token={SECRET}")
    shown = store_uri.redacted(text)
    assert SECRET not in shown
    assert "s3://***@bkt/x?secret_key=***&region=eu-west-1" in shown and "access_token=***" in shown
    assert store_uri.redacted("s3://bkt/x?endpoint_override=127.0.0.1:9") == "s3://bkt/x?endpoint_override=127.0.0.1:9"


SAME_AS_FROM_URI = [
    "s3://bkt/x?endpoint_override=127.0.0.1:9&scheme=http",
    "s3://bkt/a%20b/c/?region=eu-west-1&allow_bucket_creation=TRUE&allow_bucket_deletion=1",
    "s3://bkt?region=us-east-2&tls_ca_file_path=/etc/ssl/ca.pem&region=ignored",
    "s3://bkt//deep//?endpoint_override=http://127.0.0.1:9&region=",
    "gs://bkt/x/?endpoint_override=127.0.0.1:9&scheme=http&project_id=p",
    "gcs://bkt/a%2Fb?retry_limit_seconds=7",
]
TIMEOUTS = ("connect_timeout", "request_timeout", "retry_time_limit")  # what rethink adds


@pytest.mark.parametrize("uri", SAME_AS_FROM_URI)
def test_rethink_builds_the_filesystem_pyarrow_would_with_timeouts_added(uri, monkeypatch):
    monkeypatch.setenv(store_uri.TIMEOUT_ENV, "4")
    fs, root, remote = store_uri.filesystem(uri)
    theirs, their_root = pafs.FileSystem.from_uri(uri)
    assert (type(fs), root) == (type(theirs), their_root)
    ours, expected = fs.__reduce__()[1][0], theirs.__reduce__()[1][0]
    assert {k: v for k, v in ours.items() if k not in TIMEOUTS} == \
        {k: v for k, v in expected.items() if k not in TIMEOUTS}
    if remote.kind == "S3":
        assert (ours["connect_timeout"], ours["request_timeout"]) == (4, 4)
    elif "retry_limit_seconds" not in uri:
        assert ours["retry_time_limit"].total_seconds() == 4 * store_uri.ATTEMPTS


@pytest.mark.parametrize("uri, message", [
    ("s3://bkt/x?endpoint=127.0.0.1:9", "unknown S3 store URI option 'endpoint'; valid: region"),
    ("s3://bkt/x?region=r&scheme=ftp", "scheme must be http or https"),
    ("s3://bkt/x?region=r&allow_bucket_creation=yes", "allow_bucket_creation must be true or false"),
    ("s3://bkt/x?region=r&tls_verify_certificates=false", "give the server's CA certificate with tls_ca_file_path"),
    ("gs://bkt/x?retry_limit_seconds=0", "retry_limit_seconds must be a number of seconds"),
])
def test_a_bad_option_is_one_line(uri, message):
    with pytest.raises(RethinkError, match=message):
        store_uri.filesystem(uri)


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "inf", "1e9"])
def test_a_bad_timeout_value_is_one_line(value, monkeypatch):
    monkeypatch.setenv(store_uri.TIMEOUT_ENV, value)
    result = CliRunner().invoke(app, ["status", "--store", "s3://bkt/x?endpoint_override=127.0.0.1:9&scheme=http"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {store_uri.TIMEOUT_ENV} must be a number of seconds in (0, 3600] "
                                     f"(e.g. 30), got {value!r}")
