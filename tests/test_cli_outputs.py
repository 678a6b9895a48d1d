"""Where `rethink` prints: every write to stdout goes through one guard (rethink/streams.py), so a
full or closed stdout is one `Error:` line and a non-zero exit from every command, never a
traceback nor Python's "Exception ignored" at exit; a closed fd 1 is reserved before any file is
opened; a leading `~` is the home folder in every path option; error lines show store text as
text. Real `rethink` processes over a store a real `rethink submit` wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

RETHINK = str(Path(sys.executable).with_name("rethink"))
GRID = """\
name: out
dataset: synthetic
data: {train_size: 40, test_size: 20, image_size: 8}
model: mlp1x512
width: 0.05
corruption: [none, {kind: labels, level: 1.0}]
train: {epochs: 2, batch_size: 20}
resources: {cpus: 1, gpus: 0}
"""


def rethink(args: list[str], sink: str = "pipe", env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`rethink ARGS` with stdout captured ("pipe"), on /dev/full ("full") or closed ("closed")."""
    command = [RETHINK, *args]
    if sink == "closed":  # stdout=DEVNULL would be open: the shell closes fd 1 before exec
        command = ["sh", "-c", 'exec "$@" >&-', "sh", *command]
    with open(os.devnull if sink != "full" else "/dev/full", "w") as full:
        return subprocess.run(command, stdout=subprocess.PIPE if sink == "pipe" else full, stderr=subprocess.PIPE,
                              text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A store written by a real `rethink submit` (embedded Ray) whose own stdout was full."""
    home = tmp_path_factory.mktemp("home")
    (home / "grid.yaml").write_text(GRID)
    done = rethink(["submit", str(home / "grid.yaml"), "--store", str(home / "store"), "--quiet"], "full",
                   env={"RETHINK_COMPACT": "0"})
    return home / "store", done


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_submit_trains_then_says_in_one_line_that_its_summary_could_not_be_printed(made) -> None:
    store, done = made
    assert one_error_line(done) == "Error: cannot write to standard output: no space left on the device"
    assert rethink(["query", "select count(*) from runs where status = 'done'", "--store", str(store),
                    "--format", "csv"]).stdout.split() == ["count_star()", "2"]


COMMANDS = {
    "status": ["status"],
    "status NAME": ["status", "out"],
    "query table": ["query", "select * from epochs"],
    "query csv": ["query", "select * from epochs", "--format", "csv"],
    "query json": ["query", "select * from epochs", "--format", "json"],
    "report": ["report", "out", "--out", "{tmp}/report"],
    "compact": ["compact", "out"],
    "cancel": ["cancel", "out"],
}


@pytest.mark.parametrize("sink", ["full", "closed"])
@pytest.mark.parametrize("label", [*COMMANDS, "--help"])
def test_stdout_that_cannot_be_written_is_one_line(made, tmp_path: Path, label: str, sink: str) -> None:
    store, _ = made
    args = ["query", "--help"] if label == "--help" else \
        [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[label]] + ["--store", str(store)]
    line = one_error_line(rethink(args, sink))
    assert line == ("Error: cannot write to standard output: no space left on the device" if sink == "full"
                    else "Error: standard output is closed, so nothing can be printed; "
                         "redirect it instead (e.g. > FILE or > /dev/null)")


def test_closed_stdout_is_reserved_so_no_file_opened_later_takes_fd_1(made, tmp_path: Path) -> None:
    """With fd 1 closed, the first file opened would be fd 1 and receive the prints. A command that
    prints nothing still succeeds; its file is whole; closed stdout and stderr: a quiet exit 1."""
    store, _ = made
    out = tmp_path / "q.parquet"
    ok = rethink(["query", "select * from epochs", "--format", "parquet", "--out", str(out), "--store", str(store)],
                 "closed")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert pq.read_table(out).num_rows == 4
    probe = ("import os, sys; from rethink import streams; streams.guard_stdout(); "
             "f = open(sys.argv[1], 'w'); assert f.fileno() > 2, f.fileno()")
    child = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-c", probe, str(tmp_path / "f")],
                           stderr=subprocess.PIPE, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    both = subprocess.run(["sh", "-c", 'exec "$@" >&- 2>&-', "sh", RETHINK, "status", "--store", str(store)],
                          timeout=60)
    assert both.returncode == 1


def test_a_leading_tilde_is_home_in_every_path_option(made) -> None:
    """bash leaves `~` after `=` alone (`--store=~/store`): rethink expands it, never making a
    folder named `~` in the working directory."""
    store, _ = made
    home = store.parent
    work = home / "work"
    work.mkdir(exist_ok=True)
    env = {"HOME": str(home)}
    listed = rethink(["status", "--store=~/store"], env=env, cwd=work)
    assert listed.returncode == 0 and "out" in listed.stdout, listed.stderr
    wrote = rethink(["query", "select 1 as one", "--store=~/store", "--format=csv", "--out=~/one.csv"],
                    env=env, cwd=work)
    assert wrote.returncode == 0 and (home / "one.csv").read_text().split() == ["one", "1"], wrote.stderr
    planned = rethink(["submit", "~/grid.yaml", "--dry-run"], env=env, cwd=work)
    assert planned.returncode == 0 and "labels" in planned.stdout, planned.stderr
    assert not (work / "~").exists()


def test_error_lines_show_terminal_control_as_text(made) -> None:
    """An error's text may come from a store or a query: its escapes are shown, never sent."""
    store, _ = made
    result = rethink(["query", "select error(chr(27) || ']0;owned' || chr(7) || chr(27) || '[2J boom')",
                      "--store", str(store)])
    line = one_error_line(result)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\\x1b]0;owned\\x07\\x1b[2J boom" in line
