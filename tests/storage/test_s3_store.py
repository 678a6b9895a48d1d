"""Exactly-once on object stores, against a real S3 server (SeaweedFS on loopback, tests/s3server.py):
claims raced by many processes have one winner, a beating owner stays live and a silent one goes
stale, every write is one PUT, and a grid is frozen once (locally too). A store kind without
exclusive create (mock://) takes a driver lease and refuses a second driver in one line."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time

import pytest

from rethink.storage import claims as claims_module
from rethink.storage.layout import DRIVER_LEASE, ExperimentPaths, RunPaths
from rethink.storage.store import Store, StoreError

# Fresh interpreters, not forks: by the time these tests run, the session may have started Ray,
# whose threads a forked child inherits half-held (it crashed with SIGSEGV in CI). Children get
# the S3 keys through os.environ and import this module by name.
FORK = multiprocessing.get_context("spawn")


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    bucket, _, rest = uri.removeprefix("s3://").partition("/")
    return bucket, rest.split("?", 1)[0]


def _keys(s3_server, uri: str) -> list[str]:
    bucket, prefix = _bucket_and_prefix(uri)
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"].removeprefix(prefix + "/") for page in pages for o in page.get("Contents", []))


# -- (a) one winner among many processes ---------------------------------------------------------

def _claimer(uri: str, who: int, trials: int, barrier, answers) -> None:
    store = Store.open(uri)
    for trial in range(trials):
        barrier.wait()
        attempt = store.claim(f"r{trial}", token=f"p{who}")
        answers.put((trial, who, attempt, attempt is not None and store.owns(f"r{trial}", attempt)))


def test_processes_claiming_one_run_at_once_give_one_owner(s3_store):
    Store.open(s3_store, create=True)
    procs, trials = 8, 10  # SeaweedFS makes racing conditional PUTs on one key wait 1-2 s each
    barrier, answers = FORK.Barrier(procs, timeout=60), FORK.Queue()
    workers = [FORK.Process(target=_claimer, args=(s3_store, i, trials, barrier, answers)) for i in range(procs)]
    for w in workers:
        w.start()
    got = [answers.get(timeout=60) for _ in range(procs * trials)]
    for w in workers:
        w.join(timeout=30)
    store = Store.open(s3_store)
    for trial in range(trials):
        winners = [(who, attempt, owns) for t, who, attempt, owns in got if t == trial and attempt is not None]
        assert len(winners) == 1, f"trial {trial}: {winners}"
        who, attempt, owns = winners[0]
        assert attempt == 1 and owns
        newest, owner = store.newest_claim(f"r{trial}")
        assert newest == 1 and owner["token"] == f"p{who}"  # the object says who won


# -- (b) heartbeats ------------------------------------------------------------------------------

def test_a_beating_s3_claim_stays_live_and_a_silent_one_goes_stale(s3_store, monkeypatch):
    owner, other = Store.open(s3_store, create=True), Store.open(s3_store)
    assert owner.claim("cheap", token="a") == 1
    etag = owner.objects.get(owner.path(RunPaths("cheap").claim(1)))[1]
    for _ in range(20):  # every epoch calls owns(): no PUT each time (CLAIM_TIMEOUT_S / 10 apart)
        assert owner.owns("cheap", 1)
    assert owner.objects.get(owner.path(RunPaths("cheap").claim(1)))[1] == etag

    monkeypatch.setattr(claims_module, "CLAIM_TIMEOUT_S", 2.0)  # a beat at most every 0.2 s
    assert owner.claim("r", token="a") == 1
    deadline = time.monotonic() + 4.5  # more than twice the timeout
    while time.monotonic() < deadline:
        assert owner.owns("r", 1)
        assert other.claim_holder("r")["token"] == "a"
        assert other.claim("r", token="b") is None
        time.sleep(0.4)
    assert "beat" in other.claim_holder("r")
    deadline = time.monotonic() + 6  # the owner stops beating (its process lives on: mtime decides)
    while other.claim_holder("r") is not None and time.monotonic() < deadline:
        time.sleep(0.25)
    assert other.claim_holder("r") is None
    assert other.claim("r", token="b") == 2
    assert not owner.owns("r", 1) and other.owns("r", 2)
    path = other.path(RunPaths("r").claim(2))
    etag = other.objects.get(path)[1]  # a beat reads the claim, then a release lands:
    other.release("r", 2)
    assert not other.objects.replace(path, b"{}", etag)  # the beat's PUT (If-Match) writes nothing
    assert other.newest_claim("r")[1].get("released")


# -- (c) single PUTs -----------------------------------------------------------------------------

def test_s3_writes_are_single_puts_to_the_final_key(s3_server, s3_store):
    store = Store.open(s3_store, create=True)
    calls: list[str] = []
    store.objects.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    seen: set[str] = set()
    listing = threading.Event()

    def watch() -> None:  # lists the bucket while the writes go on: no temporary object, ever
        while not listing.is_set():
            seen.update(_keys(s3_server, s3_store))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for epoch in range(1, 9):
            store.write(RunPaths("r").checkpoint(epoch), b"x" * 100_000)
            store.put_status("r", {"run_id": "r", "status": "running", "attempts": 1, "epochs_done": epoch})
    finally:
        listing.set()
        watcher.join()
    assert calls == ["PutObject"] * 16  # one PUT a write: no temp object, copy or delete
    seen.update(_keys(s3_server, s3_store))
    assert not [k for k in seen if ".tmp" in k or k.endswith("/")], sorted(seen)
    assert store.read_status("r")["epochs_done"] == 8 and store.read_checkpoint("r", 8) == b"x" * 100_000


def test_a_refused_write_is_one_line(s3_store, monkeypatch):
    Store.open(s3_store, create=True)
    store = Store.open(s3_store)  # no write yet: no boto3 client yet
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")  # read when the first write makes the client
    with pytest.raises(StoreError, match=r"^cannot write s3://.*/store/runs/run_id=r/status.parquet: access denied; "
                                         r"check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY$"):
        store.put_status("r", {"run_id": "r", "status": "running"})
    with pytest.raises(StoreError, match=r"^cannot list store 's3://.*SIGNATURE_DOES_NOT_MATCH") as info:
        store.claim("r", token="t")
    assert "\n" not in str(info.value)


def test_opening_a_store_does_not_import_boto3(tmp_path):
    code = ("import sys; from rethink.storage.store import Store; s = Store.open(sys.argv[1], create=True); "
            "s.claim('r', 't'); s.owns('r', 1); print('boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# -- (d) a grid is frozen once -------------------------------------------------------------------

def _freezer(uri: str, name: str, grid: str, barrier, answers) -> None:
    store = Store.open(uri)
    barrier.wait()
    try:
        store.save_experiment(name, grid, [{"experiment": name, "run_id": grid.split()[-1]}])
        answers.put((grid, "ok"))
    except StoreError as exc:
        answers.put((grid, str(exc)))


def _race(uri: str, name: str, grids: list[str]) -> list[tuple[str, str]]:
    barrier, answers = FORK.Barrier(len(grids), timeout=60), FORK.Queue()
    procs = [FORK.Process(target=_freezer, args=(uri, name, g, barrier, answers)) for g in grids]
    for p in procs:
        p.start()
    got = [answers.get(timeout=60) for _ in grids]
    for p in procs:
        p.join(timeout=30)
    return got


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path) -> str:
    return str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_store")


def test_two_submits_of_different_grids_under_one_name_have_one_winner(any_store):
    store = Store.open(any_store, create=True)
    for trial in range(4):
        name = f"race{trial}"
        got = _race(any_store, name, [f"name: {name}\nseed: 1\n", f"name: {name}\nseed: 2\n"])
        ok = [grid for grid, answer in got if answer == "ok"]
        refused = [answer for _, answer in got if answer != "ok"]
        assert len(ok) == 1 and len(refused) == 1, got
        assert "already exists in this store with a different grid" in refused[0] and "\n" not in refused[0]
        assert store.experiment_grid(name) == ok[0]  # the winner's grid and its runs
        assert [r["run_id"] for r in store.experiment_rows(name)] == [ok[0].split()[-1]]


def test_the_same_grid_twice_is_fine_and_completes_a_crashed_freeze(any_store):
    store = Store.open(any_store, create=True)
    grid = "name: same\nseed: 1\n"
    assert _race(any_store, "same", [grid, grid]) == [(grid, "ok"), (grid, "ok")]
    assert [r["run_id"] for r in store.experiment_rows("same")] == ["1"]
    store.write(ExperimentPaths("half").grid, b"name: half\n")  # a winner that died before runs.parquet
    with pytest.raises(StoreError, match="different grid"):
        store.save_experiment("half", "name: half\nseed: 2\n", [])
    assert not store.exists(ExperimentPaths("half").runs)
    store.save_experiment("half", "name: half\n", [{"experiment": "half", "run_id": "h"}])
    assert [r["run_id"] for r in store.experiment_rows("half")] == ["h"]


# -- (e) a store kind without exclusive create ---------------------------------------------------

def test_a_second_driver_on_a_store_without_exclusive_create_is_refused(monkeypatch):
    monkeypatch.setattr(claims_module, "LEASE_SETTLE_S", 0.05)
    first = Store.open("mock://store", create=True)
    assert not first.exclusive and first.objects is None
    second = Store(first.fs, first.root, first.uri)  # another driver on the same filesystem
    with first.driver_lease():
        assert json.loads(first.read(DRIVER_LEASE))["pid"] > 0
        with pytest.raises(StoreError, match=r"another driver .* mock:// stores have no exclusive create") as info:
            with second.driver_lease():
                pass
        assert "\n" not in str(info.value)
    assert not first.exists(DRIVER_LEASE)  # given back at the end: the next driver goes ahead
    with second.driver_lease():
        pass
    # two drivers starting at the same moment: the last lease written wins, the other is refused
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def drive(store: Store) -> None:
        start.wait()
        try:
            with store.driver_lease():
                time.sleep(0.3)
            outcomes.append("ran")
        except StoreError:
            outcomes.append("refused")

    threads = [threading.Thread(target=drive, args=(s,)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ran", "refused"]


def test_local_and_s3_stores_need_no_driver_lease(tmp_path, s3_store):
    for uri in (str(tmp_path), s3_store):
        store = Store.open(uri, create=True)
        with store.driver_lease(), Store.open(uri).driver_lease():
            assert store.exclusive and not store.exists(DRIVER_LEASE)
