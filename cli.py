"""The `rethink` command: thin Typer commands that parse, call one library function, and print.
Every RethinkError and usage error becomes one line `Error: ...` and a non-zero exit."""

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

from rethink.errors import RethinkError


class _OneLineErrors(TyperGroup):
    """Runs a command and turns every expected failure into one line on stderr."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
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


def _die(message: str, code: int) -> None:
    first_line = " ".join(message.split())
    typer.echo(f"Error: {first_line}", err=True)
    sys.exit(code)


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
    return Path(os.environ.get("RETHINK_DATA") or Path.home() / ".cache" / "rethink" / "data")


DataDir = Annotated[Path | None, typer.Option(help="Dataset folder (Parquet or torchvision layout); default $RETHINK_DATA or ~/.cache/rethink/data.", show_default=False)]


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
    checkpoint: Annotated[Path | None, typer.Option(help="checkpoint file: resumed from if present, written every epoch")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | cuda:N; default cuda when available")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per epoch on stdout instead of the table")] = False,
    data_dir: DataDir = None,
) -> None:
    """Train one run in this process (no Ray, no store): for debugging a config."""
    from rethink.runner.single import run_one
    from rethink.tasks.spec import DataSpec, RunSpec, TrainSpec, parse_corruption, parse_regularizer

    spec = RunSpec(
        data=DataSpec(dataset=dataset, train_size=train_size, test_size=test_size, crop=crop, whiten=whiten),
        model=model, width=width, init_scale=init_scale, seed=seed,
        corruption=parse_corruption(corruption), regularizer=parse_regularizer(regularizer),
        train=TrainSpec(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, lr_decay=lr_decay,
                        optimizer=optimizer, fit_threshold=fit_threshold),
    )
    outcome = run_one(spec, data_dir or _default_data_dir(), checkpoint=checkpoint, device=device, as_json=as_json)
    if outcome.status == "failed":
        raise RethinkError(f"run {outcome.run_id} failed at epoch {outcome.epochs_done}: {outcome.error}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
