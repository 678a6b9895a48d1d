"""Hostile and mistaken inputs beyond a malformed grid: files that never end or expand without
bound, names that climb out of the store or outgrow the filesystem, paths that cannot be written.
Each gets one `Error:` line, a non-zero exit, no traceback, no hang — and the store is unchanged."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rethink.cli import app
from rethink.runner.grid import parse_grid, run_row
from rethink.storage.store import Store

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="devices and FIFOs as on Linux")

GOOD = "name: good\ndataset: synthetic\nmodel: mlp1x512\ntrain: {epochs: 1}\n"


def laughs(levels: int = 9) -> str:
    """The "billion laughs": each anchor is ten aliases of the one before (10**levels values)."""
    lines = ["name: lol", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines + [f"seed: *a{levels}"]) + "\n"


def chain(links: int = 200) -> str:
    """Aliases that nest each anchor inside the next: linear in size, deep once expanded."""
    lines = ["name: deep", "l0: &l0 [0]"] + [f"l{i}: &l{i} [*l{i - 1}]" for i in range(1, links)]
    return "\n".join(lines) + "\n"


GRID_TEXTS: dict[str, bytes] = {
    "billion laughs": laughs().encode(),
    "billion laughs as the name": laughs().replace("seed: *a9", "name2: 1").replace("name: lol", "name: *a9")
    .replace("name2: 1", "").encode(),
    "alias chain 200 deep": chain().encode(),
    "alias inside its own anchor": b"name: x\nseed: &s [0, *s]\n",
    "NUL byte": b"name: x\nseed: 0\x00\n",
    "control character": b"name: x\nseed: 0\x07\n",
    "not UTF-8": b"name: x\nseed: \xff\xfe\n",
    "5000 nested brackets": b"name: x\nseed: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "5000 nested mappings": b"name: x\nseed: " + b"{a: " * 5000 + b"0" + b"}" * 5000 + b"\n",
    "2 MiB file": b"name: x\n#" + b"a" * (2 << 20) + b"\n",
    "name of 300 characters": b"name: " + b"a" * 300 + b"\n",
    "name with a slash": b"name: a/../b\n",
    "name with a trailing newline": b'name: "abc\\n"\n',
    "name a list": b"name: [a, b]\n",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store holding one experiment (grid and run list; nothing trained: no torch)."""
    root = tmp_path_factory.mktemp("store") / "s"
    grid = parse_grid(GOOD)
    Store.open(root, create=True).save_experiment(grid.name, grid.text, [run_row(grid.name, r) for r in grid.runs])
    return root


def fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode() + (path.read_bytes() if path.is_file() else b"/"))
    return digest.hexdigest()


def one_line_error(args: list[str], store: Path | None = None) -> str:
    """Invoke `rethink ARGS`; assert one `Error:` line, a non-zero exit, no traceback and an
    unchanged store. Returns the line."""
    before = fingerprint(store) if store else None
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0, f"{args}: exit 0\n{result.output}"
    assert "Traceback" not in result.output, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, repr(result.stderr)
    if store:
        assert fingerprint(store) == before, f"{args} changed the store"
    return result.stderr


@pytest.mark.parametrize("label", GRID_TEXTS)
def test_bad_grid_file(label: str, store: Path, tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_bytes(GRID_TEXTS[label])
    line = one_line_error(["submit", str(path), "--store", str(store)], store)
    assert str(path) in line


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "/dev/null", "fifo", "folder"])
def test_grid_that_is_not_a_regular_file_is_refused_at_once(special: str, store: Path, tmp_path: Path) -> None:
    """Nothing is read from a device or a pipe (a FIFO with no writer would block forever)."""
    path = special
    if special == "fifo":
        path = str(tmp_path / "grid.fifo")
        os.mkfifo(path)
    elif special == "folder":
        path = str(tmp_path)
    line = one_line_error(["submit", path, "--store", str(store), "--dry-run"], store)
    assert "not a regular file" in line


def test_size_limit_is_stated(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(GRID_TEXTS["2 MiB file"])
    assert "1 MiB" in one_line_error(["submit", str(path), "--dry-run"])


SET_VALUES = {
    "nested 3000 deep": "seed=" + "[" * 3000 + "]" * 3000,
    "billion laughs": "seed=[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x, x]"] + ["*a"] * 20) + "]",
    "unclosed list": "seed=[0,",
    "control character": "seed=\x07",
    "name climbing out": "name=../../x",
}


@pytest.mark.parametrize("label", SET_VALUES)
def test_bad_set_value(label: str, store: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    one_line_error(["submit", str(good), "--store", str(store), "--set", SET_VALUES[label]], store)


def test_alias_expansion_under_the_cap_still_loads(tmp_path: Path) -> None:
    """Anchors are fine in a grid; only their unbounded expansion is refused."""
    grid = parse_grid("name: ok\ndataset: synthetic\nwidth: &w [0.5, 2.0]\ninit_scale: *w\n")
    assert sorted((r.width, r.init_scale) for r in grid.runs) == [(0.5, 0.5), (0.5, 2.0), (2.0, 0.5), (2.0, 2.0)]


BAD_NAMES = ["NAME/../../../x", "../x", "x/y", "Upper", "a" * 101, "with space", "", "a\n"]


@pytest.mark.parametrize("command", ["status", "resume", "cancel", "report"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_command_checks_the_name_first(command: str, name: str, store: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`cancel NAME/../../../x` once wrote cancel.json outside the store."""
    monkeypatch.chdir(tmp_path)  # report's default --out is ./report/NAME
    line = one_line_error([command, name, "--store", str(store)], store)
    assert "name must match" in line
    assert not list(tmp_path.rglob("cancel.json")) and not (tmp_path / "report").exists()


def test_logs_checks_the_name_before_calling_the_cluster() -> None:
    assert "name must match" in one_line_error(["logs", "../x", "--cluster", "http://127.0.0.1:9"])


def test_a_name_of_100_characters_is_accepted(tmp_path: Path) -> None:
    assert parse_grid(f"name: {'a' * 100}\n").name == "a" * 100


def bad_stores(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    return {
        "a device": "/dev/null",
        "a device as a URI": "file:///dev/null",
        "a FIFO": str(tmp_path / "fifo"),
        "under a device": "/dev/null/store",
        "under a regular file": str(tmp_path / "afile" / "store"),
        "in /proc": "/proc/rethink-store",
        "in /sys": "/sys/kernel/rethink-store",
        "a name too long": str(tmp_path / ("a" * 300)),
        "s3 without a bucket": "s3://",
        "s3 without a bucket, with a path": "s3:///x",
        "gs without a bucket": "gs://",
        "empty": "",
    }


@pytest.mark.parametrize("command", ["submit", "status", "query"])
def test_store_paths_that_cannot_hold_a_store(command: str, tmp_path: Path) -> None:
    """Checked before any work (no Ray starts): one line naming the path."""
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    args = {"submit": ["submit", str(good), "--quiet"], "status": ["status"], "query": ["query", "select 1"]}[command]
    for label, store in bad_stores(tmp_path).items():
        line = one_line_error(args + ["--store", store])
        if "without a bucket" in label:  # not echoed: what stands before the bucket may be a key
            assert "no bucket" in line, f"{label}: {line}"
        else:
            assert (store in line) or not store, f"{label}: {line}"
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "afile").is_dir()


def train_cases(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "afile").write_text("x")
    cases = {
        "--device tpu": ["--device", "tpu"],
        "--device cuda:x": ["--device", "cuda:x"],
        "--device gpu": ["--device", "gpu"],
        "--device CPU": ["--device", "CPU"],
        "--checkpoint a folder": ["--checkpoint", str(tmp_path)],
        "--checkpoint a device": ["--checkpoint", "/dev/null"],
        "--checkpoint under a file": ["--checkpoint", str(tmp_path / "afile" / "run.ckpt")],
    }
    import torch

    if not torch.cuda.is_available():
        cases |= {"--device cuda without CUDA": ["--device", "cuda"], "--device cuda:0 without CUDA": ["--device", "cuda:0"]}
    else:
        cases |= {"--device cuda:N past the GPUs": ["--device", f"cuda:{torch.cuda.device_count()}"]}
    return cases


def test_train_refuses_devices_and_checkpoints_before_training(tmp_path: Path) -> None:
    for label, extra in train_cases(tmp_path).items():
        line = one_line_error(["train", "--dataset", "synthetic", "--epochs", "1", *extra])
        assert ("--device" in line and ("cpu" in line or "GPU" in line)) or "--checkpoint" in line, f"{label}: {line}"
    assert (tmp_path / "afile").read_text() == "x" and os.path.exists("/dev/null")
