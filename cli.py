"""The `rethink` command: thin Typer commands that parse, call one library function, and print.
Every RethinkError, usage error and stray OSError becomes one line `Error: ...` and a non-zero
exit; every write to stdout goes through rethink/streams.py, so an output that cannot be written
is one of those lines too."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # recent typer vendors its own click; older ones use click itself
    from typer._click import exceptions as clickx
except ImportError:  # pragma: no cover
    from click import exceptions as clickx

from rethink import streams
from rethink.errors import RethinkError, os_error
from rethink.text import one_line, redacted


class _OneLineErrors(TyperGroup):
    """Runs a command and turns every expected failure into one line on stderr."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        streams.guard_stdout()
        try:
            try:
                result = super().main(*args, standalone_mode=False, **kwargs)
            except typer.Exit as exc:
                result = exc.exit_code
            streams.flush()  # a full or closed stdout is said here at the latest, not by Python at exit
        except streams.ReaderGone:  # `rethink query ... | head`: the reader has what it wanted
            result = 0
        except clickx.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # typer has printed the help already
                sys.exit(2)
            _die(exc.format_message(), 2)
        except clickx.ClickException as exc:
            _die(exc.format_message(), exc.exit_code)
        except RethinkError as exc:
            _die(str(exc), exc.exit_code)
        except (KeyboardInterrupt, typer.Abort):
            _die("interrupted", 130)
        except OSError as exc:  # the safety net: an OS error that no layer below worded
            _die(str(os_error(exc)), 1)
        if isinstance(result, int) and not isinstance(result, bool) and result:
            sys.exit(result)  # click hands back a typer.Exit's code instead of raising it
        return result


def _die(message: str, code: int) -> None:
    """One line on stderr, shown as text (a store's error may hold terminal control), with
    anything credential-shaped masked (a --cluster or $RAY_ADDRESS with a user:password, a
    library's message quoting a URI), and exit."""
    streams.flush_quietly()  # what was printed goes out first; a stdout failing now is the lesser news
    try:
        typer.echo(f"Error: {_line(message)}", err=True)
    except OSError:
        pass  # stderr cannot take it either (full): the exit code says it
    sys.exit(code)


def _line(text: object) -> str:
    """A message on one line as text, credentials masked: what every error and note line prints."""
    return one_line(redacted(str(text)))


def _home(value: Any) -> Any:
    """A leading `~` is the home folder for every path option and argument, also after `=`
    where the shell leaves it (`--store=~/runs`); a URI is left as it is."""
    if isinstance(value, (str, Path)) and str(value).startswith("~"):
        expanded = os.path.expanduser(value)
        if expanded.startswith("~"):  # `~nosuch/x`: left as is here, a RuntimeError in pathlib later
            raise typer.BadParameter(f"{one_line(str(value).split('/')[0])} names no user of this machine; "
                                     "give the folder in full")
        return type(value)(expanded)
    return value


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Randomization tests on deep networks: corrupted-data grids on Ray, metrics in Parquet, SQL via DuckDB.",
)


@app.callback()
def _root() -> None:
    """Randomization tests on deep networks (Zhang et al., 2017) at scale."""


def _default_data_dir() -> Path:
    """$RETHINK_DATA, its `~` expanded as a flag's is, else ~/.cache/rethink/data."""
    text = os.environ.get("RETHINK_DATA")
    if not text:
        return Path.home() / ".cache" / "rethink" / "data"
    try:
        return _home(Path(text))
    except typer.BadParameter as exc:
        raise RethinkError(f"RETHINK_DATA: {exc.message}") from None


DataDir = Annotated[Path | None, typer.Option(help="Dataset folder (Parquet or torchvision layout); default $RETHINK_DATA or ~/.cache/rethink/data.", show_default=False, callback=_home)]


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="cifar10 | cifar100 | synthetic")] = "cifar10",
    model: Annotated[str, typer.Option(help="mlp1x512 | mlp3x512 | alexnet_small | inception_small | resnet18")] = "mlp1x512",
    corruption: Annotated[str, typer.Option(help="none | labels:P | label_noise:P | shuffled_pixels | random_pixels | gaussian")] = "none",
    regularizer: Annotated[str, typer.Option(help="none, or e.g. weight_decay=5e-4,dropout=0.5,augment,early_stopping=5")] = "none",
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 0.01,
    momentum: float = 0.9,
    lr_decay: Annotated[float, typer.Option(help="lr multiplier per epoch")] = 0.95,
    optimizer: Annotated[str, typer.Option(help="sgd | adam")] = "sgd",
    seed: int = 0,
    train_size: Annotated[int | None, typer.Option(help="stratified subset of the training set")] = None,
    test_size: Annotated[int | None, typer.Option(help="stratified subset of the test set")] = None,
    crop: Annotated[int | None, typer.Option(help="centre crop side (Zhang et al.: 28)")] = None,
    whiten: Annotated[bool, typer.Option(help="per-image standardization instead of per-channel normalization")] = False,
    width: float = 1.0,
    init_scale: float = 1.0,
    fit_threshold: float = 0.99,
    checkpoint: Annotated[Path | None, typer.Option(help="checkpoint file: resumed from if present, written at the run's checkpoint cadence and at its end", callback=_home)] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | cuda:N; default cuda when available")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per epoch on stdout instead of the table")] = False,
    data_dir: DataDir = None,
) -> None:
    """Train one run in this process (no Ray, no store): for debugging a config."""
    from rethink.tasks.spec import DataSpec, RunSpec, TrainSpec, parse_corruption, parse_regularizer

    spec = RunSpec(
        data=DataSpec(dataset=dataset, train_size=train_size, test_size=test_size, crop=crop, whiten=whiten),
        model=model, width=width, init_scale=init_scale, seed=seed,
        corruption=parse_corruption(corruption), regularizer=parse_regularizer(regularizer),
        train=TrainSpec(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, lr_decay=lr_decay,
                        optimizer=optimizer, fit_threshold=fit_threshold),
    )
    from rethink.runner.single import run_one  # torch: imported once the options are known to be valid

    outcome = run_one(spec, data_dir or _default_data_dir(), checkpoint=checkpoint, device=device, as_json=as_json)
    if outcome.status == "failed":
        raise RethinkError(f"run {outcome.run_id} failed at epoch {outcome.epochs_done}: {outcome.error}")


def _experiment(name: str | None) -> str | None:
    """NAME checked by the store's one name rule before a command touches anything."""
    from rethink.storage.layout import check_name

    return None if name is None else check_name(name)


NameArg = Annotated[str, typer.Argument(help="Experiment name.", callback=_experiment)]
StoreOpt = Annotated[str, typer.Option("--store", help="Store folder or pyarrow filesystem URI.", callback=_home)]
AddressOpt = Annotated[str | None, typer.Option(help="Ray cluster to join (default $RAY_ADDRESS, else an embedded local one).")]
ClusterOpt = Annotated[str | None, typer.Option(help="Ray Jobs address of a remote cluster, e.g. http://HEAD:8265 (token: $RAY_AUTH_TOKEN).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="Log lines instead of a progress bar.")]
PackOpt = Annotated[int, typer.Option(help="Runs trained together per task (same data and model shape); 0 = sized to GPU memory, 1 without GPUs.", min=0)]
DEFAULT_STORE = "./rethink-store"


def _print_summary(name: str, summary) -> None:
    name = one_line(name)
    line = f"{name}: {summary.done} done, {summary.failed} failed, {summary.skipped} already done"
    typer.echo(line + (" — cancelled; `rethink resume " + name + "` finishes it" if summary.cancelled else ""))
    for note in summary.notes:
        typer.echo(f"note: {_line(note)}", err=True)
    for run_id, error in summary.errors.items():  # both read back from the store: shown as text
        typer.echo(f"failed {one_line(run_id)}: {_line(error)}", err=True)


@app.command()
def submit(
    grid_file: Annotated[Path, typer.Argument(help="Grid YAML file.", metavar="GRID.yaml", callback=_home)],
    store: StoreOpt = DEFAULT_STORE,
    data_dir: DataDir = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs and exit.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a grid key, e.g. --set train.epochs=5 --set seed=[0,1].")] = None,
    address: AddressOpt = None,
    cluster: ClusterOpt = None,
    quiet: QuietOpt = False,
    pack_size: PackOpt = 0,
) -> None:
    """Expand a grid into runs and train them on Ray; wait with a progress bar."""
    from rethink.runner import api, dryrun, grid

    spec = grid.load_grid(grid_file, grid.parse_overrides(set_ or []))
    if dry_run:
        from rich.console import Console

        Console(width=max(120, Console().width)).print(dryrun.run_table(spec))
        return
    if cluster:
        from rethink.runner import cluster as jobs

        typer.echo(_line(jobs.submit_job(cluster, spec, store, str(data_dir) if data_dir else None, pack_size)))
        return
    summary = api.submit(spec, store, data_dir or _default_data_dir(), address=address, quiet=quiet, pack_size=pack_size)
    _print_summary(spec.name, summary)
    raise typer.Exit(1 if summary.failed else 0)


@app.command()
def resume(
    name: NameArg,
    store: StoreOpt = DEFAULT_STORE,
    data_dir: DataDir = None,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    pack_size: PackOpt = 0,
) -> None:
    """Finish every run of NAME that is not done (failed, interrupted, never started)."""
    from rethink.runner import api

    summary = api.resume(name, store, data_dir or _default_data_dir(), address=address, quiet=quiet, pack_size=pack_size)
    _print_summary(name, summary)
    raise typer.Exit(1 if summary.failed else 0)


@app.command()
def cancel(name: NameArg, store: StoreOpt = DEFAULT_STORE) -> None:
    """Stop NAME's running tasks; finished epochs and checkpoints stay, and NAME stays resumable."""
    from rethink.runner import api

    api.cancel(name, store)
    typer.echo(f"{name}: cancel requested; its driver and workers stop within an epoch. `rethink resume {name}` goes on.")


@app.command()
def compact(name: NameArg, store: StoreOpt = DEFAULT_STORE) -> None:
    """Fold NAME's finished runs (their epoch and status files) into a few larger Parquet parts."""
    from rethink.storage.compact import compact as fold
    from rethink.storage.store import Store

    typer.echo(_line(fold(Store.open(store), name).line()))


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="Experiment name (default: all).", callback=_experiment)] = None,
    store: StoreOpt = DEFAULT_STORE,
    cluster: ClusterOpt = None,
) -> None:
    """Counts of runs per state, and the failed runs with their errors (--cluster: the Ray Jobs)."""
    from rich.console import Console

    if cluster:
        from rethink.runner.cluster import job_table

        Console().print(job_table(cluster, name))
        return
    from rethink.storage.arrow_import import import_pyarrow_without_numpy

    import_pyarrow_without_numpy()  # status converts no arrays: 0.07 s less a call
    from rethink.runner.status import status_tables

    for table in status_tables(store, name):
        Console().print(table)


@app.command()
def logs(
    name: NameArg,
    cluster: Annotated[str, typer.Option(help="Ray Jobs address of the cluster, e.g. http://HEAD:8265.")],
) -> None:
    """The driver log of NAME's newest job on a remote cluster (`submit --cluster`)."""
    from rethink.runner.cluster import job_logs
    from rethink.text import visible

    typer.echo(visible(job_logs(cluster, name), keep="\n\t"), nl=False)  # a log may quote store text


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="A read-only SQL query over the views runs and epochs.")],
    store: StoreOpt = DEFAULT_STORE,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json (one array of row objects) | parquet (needs --out). With --out, rows stream to the file as DuckDB makes them.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write the result to this regular file (atomically) instead of stdout.", callback=_home)] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop the query after this many seconds (default: no limit; Ctrl-C stops it too).", show_default=False)] = None,
) -> None:
    """Ask the store a question in SQL (DuckDB, read-only)."""
    from rethink.storage.arrow_import import import_pyarrow_without_numpy

    import_pyarrow_without_numpy()  # rows go out as text or Parquet, never as arrays: 0.07 s less
    from rethink.storage.query import run_query

    streamed = fmt in ("csv", "json") and out is None  # rows printed as they come, never held whole
    text = run_query(store, sql, fmt, str(out) if out else None, timeout=timeout,
                     echo=sys.stdout.write if streamed else None)
    if text is not None:
        typer.echo(text)


@app.command()
def report(
    name: NameArg,
    store: StoreOpt = DEFAULT_STORE,
    out: Annotated[Path | None, typer.Option(help="Folder for the figures and report.html (default ./report/NAME).", show_default=False, callback=_home)] = None,
    fmt: Annotated[str, typer.Option("--format", help="Figure formats, comma-separated: png, pdf, svg.")] = "png",
) -> None:
    """Summary tables, figures (Zhang et al. Fig. 1) and one self-contained HTML page for NAME."""
    from rich.console import Console

    from rethink.runner.report import build_report

    result = build_report(store, name, str(out or Path("report") / name), fmt)
    typer.echo(_line(result.header))
    for table in result.tables:
        Console().print(table)
    for note in result.notes:
        typer.echo(f"note: {_line(note)}", err=True)
    # the folder is the user's --out, which may hold ESC or a newline: shown as text too
    typer.echo(_line(f"wrote {result.html} ({len(result.figures)} figures as {', '.join(result.formats)} beside it)"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
