"""A symbolic link inside a store never leads a write, delete or read outside it (storage/localfs.py):
the unit walk (a link as a middle or last name, to a folder or a file, dangling, swapped in while
writing), and the real commands over a store whose run or experiment folder was made a link."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rethink.storage.localfs import LocalStore, StoreLinkError
from rethink.storage.store import Store

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="O_NOFOLLOW and dir_fd as on Linux")

GRID = """\
name: lk
dataset: synthetic
data: {train_size: 64, test_size: 32, image_size: 8}
model: mlp1x512
width: 0.05
corruption: none
seed: [0, 1]
train: {epochs: 2, batch_size: 32, checkpoint_every: 1}
resources: {cpus: 1, gpus: 0}
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the store holding files a link could lead a write or delete to."""
    folder = tmp_path / "outside"
    folder.mkdir()
    for name in ("epochs.parquet", "epoch=0001.ckpt", "grid.yaml", "x.json"):
        (folder / name).write_bytes(b"keep")
    return folder


@pytest.fixture
def files(tmp_path: Path) -> LocalStore:
    root = tmp_path / "store"
    (root / "a").mkdir(parents=True)
    return LocalStore(str(root), str(root))


@pytest.mark.parametrize("where", ["a/link", "link"])
def test_a_link_to_a_folder_is_never_walked(files: LocalStore, outside: Path, where: str) -> None:
    """As a middle name: every operation refuses it, naming the store-relative path and the target."""
    before = snapshot(outside)
    os.symlink(outside, Path(files.root, where))
    operations = {
        "write": lambda: files.write(f"{where}/epochs.parquet", b"new"),
        "write a new folder": lambda: files.write(f"{where}/deeper/x.json", b"new"),
        "create": lambda: files.create_exclusive(f"{where}/new.json", b"new"),
        "read": lambda: files.open_read(f"{where}/x.json"),
        "delete": lambda: files.delete(f"{where}/epoch=0001.ckpt"),
        "list": lambda: files.listdir(where),
        "rename": lambda: files.rename(f"{where}/x.json", "y.json"),
        "stat": lambda: files.stat(f"{where}/x.json"),
        "touch": lambda: files.touch(f"{where}/x.json"),
        "exists": lambda: files.is_file(f"{where}/x.json"),
    }
    for label, operation in operations.items():
        with pytest.raises(StoreLinkError, match=rf"holds a symbolic link at {where} \(→ {outside}\); rethink "
                                                 "never follows links inside a store: remove it"):
            operation()
    assert snapshot(outside) == before and not (outside / "deeper").exists()


def test_a_link_as_the_last_name(files: LocalStore, outside: Path) -> None:
    """A link to a file, and a dangling one: read and write refuse it; nothing is created or
    changed where it points; a delete removes the link itself, never its target."""
    before = snapshot(outside)
    os.symlink(outside / "x.json", Path(files.root, "a", "to-file.json"))
    os.symlink(outside / "made-through-link.json", Path(files.root, "a", "dangling.json"))
    for name in ("to-file.json", "dangling.json"):
        with pytest.raises(StoreLinkError, match=f"link at a/{name}"):
            files.open_read(f"a/{name}")
        with pytest.raises(StoreLinkError, match=f"link at a/{name}"):
            files.write(f"a/{name}", b"new")
        assert files.create_exclusive(f"a/{name}", b"new") is False  # something is there: not ours
    assert not (outside / "made-through-link.json").exists()
    files.delete("a/to-file.json")
    assert snapshot(outside) == before and not Path(files.root, "a", "to-file.json").is_symlink()
    assert [n for n in os.listdir(Path(files.root, "a")) if n.endswith(".tmp")] == []  # no temp file left


def test_a_dangling_link_as_a_folder_is_not_created_through(files: LocalStore, tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere", Path(files.root, "a", "gone"))
    with pytest.raises(StoreLinkError, match="link at a/gone"):
        files.write("a/gone/x.json", b"new")
    assert not (tmp_path / "nowhere").exists()


def test_the_root_may_be_a_link_and_plain_files_work(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "chosen").symlink_to(real)
    store = Store.open(tmp_path / "chosen", create=True)
    store.write("epochs/run_id=r/x.json", b"1")
    assert store._create_exclusive("runs/run_id=r/claims/attempt=0001.json", b"{}") is True
    assert store._create_exclusive("runs/run_id=r/claims/attempt=0001.json", b"{}") is False
    assert store.read("epochs/run_id=r/x.json") == b"1" and (real / "epochs/run_id=r/x.json").is_file()
    assert store.listdir("runs/run_id=r/claims") == ["attempt=0001.json"]
    store.delete("epochs/run_id=r/x.json")
    assert store.read("epochs/run_id=r/x.json") is None


def test_a_folder_swapped_for_a_link_mid_write_is_refused(files: LocalStore, outside: Path) -> None:
    """The walk is the guard, not a check before it: a folder made a link after the store was
    opened (as a racing writer would) is refused by the open that meets it."""
    files.write("epochs/run_id=r/epochs.parquet", b"old")
    before = snapshot(outside)
    folder = Path(files.root, "epochs", "run_id=r")
    for name in os.listdir(folder):
        os.unlink(folder / name)
    folder.rmdir()
    folder.symlink_to(outside)
    with pytest.raises(StoreLinkError):
        files.write("epochs/run_id=r/epochs.parquet", b"new")
    assert snapshot(outside) == before


# -- the real commands -------------------------------------------------------------------------

def rethink(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RETHINK_DATA": "unused", "RETHINK_COMPACT": "0"}
    return subprocess.run([sys.executable, "-m", "rethink.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose two runs trained (2 epochs each), kept as a template for each test."""
    folder = tmp_path_factory.mktemp("linked")
    (folder / "grid.yaml").write_text(GRID)
    done = rethink("submit", "grid.yaml", "--store", "s", "--quiet", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


def copy_store(trained: Path, tmp_path: Path) -> Path:
    subprocess.run(["cp", "-a", str(trained / "s"), str(tmp_path / "s")], check=True)
    (tmp_path / "grid.yaml").write_text(GRID)
    return tmp_path / "s"


def fail_one_run(store: Path) -> str:
    """Mark one run failed, so that resume trains it again; its run id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    status = sorted(store.glob("runs/run_id=*/status.parquet"))[0]
    rows = pq.read_table(status).to_pylist()
    rows[0].update(status="failed", stop_reason="error", error="x")
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(status)), status)
    return status.parent.name.removeprefix("run_id=")


@pytest.mark.parametrize("linked", ["epochs", "checkpoints"])
def test_resume_over_linked_run_folders_writes_and_deletes_nothing_outside(
        trained: Path, tmp_path: Path, outside: Path, linked: str) -> None:
    """The red team's case: a failed run's epochs or checkpoints folder made a link to a folder
    holding files of those names. Resume fails in one line naming the link (the run fails, its
    status says why, where the worker meets it), and every file outside is as it was."""
    store = copy_store(trained, tmp_path)
    run_id = fail_one_run(store)
    before = snapshot(outside)
    target = store / linked / f"run_id={run_id}"
    subprocess.run(["rm", "-rf", str(target)], check=True)
    target.parent.mkdir(exist_ok=True)
    target.symlink_to(outside)
    done = rethink("resume", "lk", "--store", "s", "--quiet", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "symbolic link" in line]  # the error, or the run's failure
    assert lines and all(f"holds a symbolic link at {linked}/" in line
                         and f"run_id={run_id} (→ {outside}); rethink never follows" in line for line in lines), done.stderr
    assert snapshot(outside) == before
    if linked != "checkpoints":  # status reads the epochs (and no checkpoint)
        assert "symbolic link" in one_line(rethink("status", "lk", "--store", "s", cwd=tmp_path))


def test_submit_into_a_linked_experiment_folder_writes_nothing_outside(
        trained: Path, tmp_path: Path, outside: Path) -> None:
    store = copy_store(trained, tmp_path)
    before = snapshot(outside)
    (store / "experiments" / "name=lk2").symlink_to(outside)
    (tmp_path / "grid2.yaml").write_text(GRID.replace("name: lk", "name: lk2"))
    for args in (["submit", "grid2.yaml"], ["cancel", "lk2"], ["status", "lk2"]):
        line = one_line(rethink(*args, "--store", "s", cwd=tmp_path))
        assert f"holds a symbolic link at experiments/name=lk2 (→ {outside})" in line, line
    assert snapshot(outside) == before
