"""The README is the user's manual: every command is in it and answers --help; its set-up block
holds the two commands CI and a newcomer run."""

from __future__ import annotations

from pathlib import Path

from typer.main import get_command
from typer.testing import CliRunner

from rethink.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def commands() -> list[str]:
    return sorted(get_command(app).commands)


def test_every_command_is_documented_and_has_help():
    names = commands()
    assert {"train", "submit", "status", "resume", "cancel", "query", "logs"} <= set(names)
    runner = CliRunner()
    for name in names:
        assert f"rethink {name}" in README, f"`rethink {name}` is not in the README"
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout, name


def test_setup_block_has_the_install_and_the_test_command_ci_runs():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    install, test = block
    assert "pip install -c constraints.txt" in install and "rethink submit examples/quickstart.yaml" in install
    assert test in (ROOT / ".ci" / "run").read_text()


def test_view_columns_in_the_readme_exist_in_the_schema():
    from rethink.storage import schema

    for column in schema.EPOCHS.names + schema.EXPERIMENT_RUNS.names:
        assert f"`{column}" in README or f" {column}," in README or f"{column}`" in README, column
