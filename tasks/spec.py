"""What one run is: frozen dataclasses built once (by runner/ from a grid, or by `rethink train`
from flags) and passed to every function in tasks/. Validation lives here so a bad value is
refused with one sentence before any data is loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from rethink.errors import SpecError

DATASETS = ("cifar10", "cifar100", "synthetic")
MODELS = ("mlp1x512", "mlp3x512", "alexnet_small", "inception_small", "resnet18", "ioc_mlp")
LABEL_KINDS = ("labels", "label_noise")  # take a level p in [0, 1]
IMAGE_KINDS = ("shuffled_pixels", "random_pixels", "gaussian")  # whole training set, no level
CORRUPTIONS = ("none",) + LABEL_KINDS + IMAGE_KINDS
OPTIMIZERS = ("sgd", "adam")
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}  # (train, test) images
SYNTHETIC_SIZES = (1000, 500)  # (train, test) images of a synthetic set that leaves them unset (tasks/data.py)
# Bounds past which a run can never train (no memory holds it, no generator takes the seed): far
# above any real grid, so a slip (image_size: 0, num_classes: 10**12) is refused by the dry run.
MAX_IMAGES = 10_000_000  # a split's subset or a synthetic split; CIFAR's training split has 50,000
MAX_IMAGE_SIZE = 1024  # pixels on a side
MAX_CLASSES = 100_000
MAX_SYNTHETIC_VALUES = 1 << 31  # pixels a synthetic set generates: images plus one template per class
MAX_SEED = (1 << 63) - 1  # torch.Generator.manual_seed takes a 64-bit integer
MAX_EPOCHS = 100_000
MAX_WIDTH = 256.0  # times the model's hidden units / channels: past it no model fits a GPU
MAX_INIT_SCALE = 1e6  # times the initial weights: far past it float32 weights overflow
MIN_SIDE = {"inception_small": 7}  # the smallest input a model's strided layers take (pixels)
# Whether a model has BatchNorm when the run leaves batch_norm unset (None).
DEFAULT_BATCH_NORM: dict[str, bool] = {
    "mlp1x512": False,
    "mlp3x512": False,
    "alexnet_small": False,
    "inception_small": True,
    "resnet18": True,
    "ioc_mlp": False,
}


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "cifar10"
    train_size: int | None = None  # stratified seeded subset of the training split; None = all
    test_size: int | None = None  # likewise for the test split
    crop: int | None = None  # centre crop side in pixels (Zhang et al.: 28); None = full image
    whiten: bool = False  # per-image standardization (Zhang et al.) instead of per-channel norm
    seed: int = 0  # picks the subset; the same for every run so runs see the same images
    image_size: int = 32  # synthetic only: side of the square images
    num_classes: int = 10  # synthetic only

    def __post_init__(self) -> None:
        _one_of("dataset", self.dataset, DATASETS)
        for name, top in (("train_size", MAX_IMAGES), ("test_size", MAX_IMAGES), ("crop", MAX_IMAGE_SIZE)):
            if getattr(self, name) is not None:
                _int_in(f"data.{name}", getattr(self, name), 1, top)
        _int_in("data.image_size", self.image_size, 1, MAX_IMAGE_SIZE)
        _int_in("data.num_classes", self.num_classes, 2, MAX_CLASSES)
        _int_in("data.seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.whiten, bool):
            raise SpecError(f"data.whiten must be true or false, got {self.whiten!r}")
        if self.crop is not None and self.crop > self.image_size:
            raise SpecError(f"data.crop={self.crop} is larger than the {self.image_size}-pixel images")
        if self.dataset == "synthetic":
            _check_synthetic_size(self)


@dataclass(frozen=True)
class CorruptionSpec:
    kind: str = "none"
    level: float = 0.0  # probability p for labels / label_noise; 1.0 for the image kinds

    def __post_init__(self) -> None:
        _one_of("corruption", self.kind, CORRUPTIONS)
        if self.kind in LABEL_KINDS:
            _fraction(f"level of {self.kind}", self.level)
        elif self.kind == "none" and self.level not in (0, 0.0):
            raise SpecError(f"corruption 'none' takes no level, got {self.level!r}")
        elif self.kind in IMAGE_KINDS and self.level != 1.0:
            raise SpecError(f"corruption '{self.kind}' applies to every image and takes no level")

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.level:g}" if self.kind in LABEL_KINDS else self.kind


@dataclass(frozen=True)
class RegularizerSpec:
    weight_decay: float = 0.0  # L2 coefficient added by the optimizer
    dropout: float = 0.0  # drop probability on hidden fully connected layers
    augment: bool = False  # random crop (4-pixel padding) + horizontal flip, on the device
    early_stopping: int = 0  # patience in epochs on the held-out slice; 0 = off
    holdout: float = 0.1  # fraction of the training set held out when early_stopping is on
    label_smoothing: float = 0.0
    batch_norm: bool | None = None  # None = the model's default (on for inception/resnet)

    def __post_init__(self) -> None:
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise SpecError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _fraction("dropout", self.dropout, upper_open=True)
        _fraction("label_smoothing", self.label_smoothing, upper_open=True)
        _int_in("early_stopping (a patience in epochs)", self.early_stopping, 0, MAX_EPOCHS)
        if not (_is_number(self.holdout) and 0 < self.holdout < 1):
            raise SpecError(f"holdout must be in (0, 1), got {self.holdout!r}")
        for name in ("augment", "batch_norm"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "batch_norm" and value is None):
                raise SpecError(f"{name} must be true or false, got {value!r}")

    @property
    def label(self) -> str:
        """A short readable name, e.g. 'weight_decay=0.0005+augment'; 'none' when all are off."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "holdout" or value == f.default:
                continue
            parts.append(f.name if value is True else f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}")
        return "+".join(parts) or "none"


DEFAULT_CHECKPOINT_EVERY = "60s"  # by time: a crash loses about a minute of work, whatever the model size
NOT_IDENTITY = {"train": ("checkpoint_every",)}  # settings that change no row, so not which run it is


def checkpoint_cadence(value: int | str) -> tuple[int | None, float | None]:
    """`checkpoint_every` as (epochs, None) or (None, seconds); a bad value is refused."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min)?\s*", value)
        if match and match.group(2) is None and "." not in match.group(1) and int(match.group(1)) >= 1:
            return int(match.group(1)), None  # "5" from a flag: epochs
        if match and match.group(2) and float(match.group(1)) > 0:
            return None, float(match.group(1)) * (1 if match.group(2) == "s" else 60)
    raise SpecError(f"train.checkpoint_every must be a number of epochs (e.g. 5) or a time (e.g. \"60s\", \"5m\"), "
                    f"got {value!r}")


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.01  # initial learning rate
    momentum: float = 0.9  # SGD momentum (beta1 for adam)
    lr_decay: float = 0.95  # lr multiplied by this after every epoch
    optimizer: str = "sgd"
    fit_threshold: float = 0.99  # a run has fit once train accuracy reaches this
    probe_every: int = 0  # probes every K epochs; 0 = never
    # checkpoint cadence: every N epochs (an int), or every N seconds of training ("60s", "5m");
    # not part of the run's identity (it changes no row), see RunSpec.identity
    checkpoint_every: int | str = DEFAULT_CHECKPOINT_EVERY

    def __post_init__(self) -> None:
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        checkpoint_cadence(self.checkpoint_every)
        _int_in("train.epochs", self.epochs, 1, MAX_EPOCHS)
        _int_in("train.batch_size", self.batch_size, 1, MAX_IMAGES)
        _int_in("train.probe_every", self.probe_every, 0, MAX_EPOCHS)
        _positive("train.lr", self.lr, math.inf)
        _fraction("train.momentum", self.momentum, upper_open=True)
        if not (_is_number(self.lr_decay) and 0 < self.lr_decay <= 1):
            raise SpecError(f"train.lr_decay must be in (0, 1], got {self.lr_decay!r}")
        _fraction("train.fit_threshold", self.fit_threshold)


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run. Its id is the hash of this whole config: the same config is the
    same run in any experiment."""

    data: DataSpec = field(default_factory=DataSpec)
    model: str = "mlp1x512"
    width: float = 1.0  # multiplier on hidden units / channels
    init_scale: float = 1.0  # multiplier on the initial weights (Mehta et al.)
    corruption: CorruptionSpec = field(default_factory=CorruptionSpec)
    regularizer: RegularizerSpec = field(default_factory=RegularizerSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of("model", self.model, MODELS)
        _positive("width", self.width, MAX_WIDTH)
        _positive("init_scale", self.init_scale, MAX_INIT_SCALE)
        _int_in("seed", self.seed, 0, MAX_SEED)
        _check_split_sizes(self.data)
        side = self.data.crop or (self.data.image_size if self.data.dataset == "synthetic" else 32)
        if side < MIN_SIDE.get(self.model, 1):
            raise SpecError(f"{self.model} takes images of at least {MIN_SIDE[self.model]} pixels a side, "
                            f"and these are {side}: raise data.crop or data.image_size")
        object.__setattr__(self, "data", _canonical_data(self.data))
        object.__setattr__(self, "regularizer", _canonical_regularizer(self.regularizer, self.model))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The config that makes the run what it is: everything but settings that change no row
        (the checkpoint cadence), so two grids that differ only in those share their runs."""
        d = self.to_dict()
        for section, names in NOT_IDENTITY.items():
            for name in names:
                d[section].pop(name, None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(
            data=DataSpec(**d["data"]),
            model=d["model"],
            width=d["width"],
            init_scale=d["init_scale"],
            corruption=CorruptionSpec(**d["corruption"]),
            regularizer=RegularizerSpec(**d["regularizer"]),
            train=TrainSpec(**d["train"]),
            seed=d["seed"],
        )

    @property
    def run_id(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def pack_key(self) -> tuple:
        """Runs with equal keys may train together in one pack: same data, same model shape."""
        t = self.train
        return (self.data, self.model, self.width, self.regularizer.batch_norm, t.batch_size, t.epochs)


def _check_split_sizes(data: DataSpec) -> None:
    """A subset larger than the dataset is refused when the run is built (the dataset is known
    then; a grid's data section is checked before its dataset axis)."""
    for name, have in zip(("train_size", "test_size"), SPLIT_SIZES.get(data.dataset, ())):
        want = getattr(data, name)
        if want is not None and want > have:
            raise SpecError(f"data.{name}={want} is more than the {have:,} images of {data.dataset}'s "
                            f"{name.split('_')[0]} split")


def _check_synthetic_size(data: DataSpec) -> None:
    """A synthetic set is generated in memory: its images and one template per class, bounded."""
    images = (data.train_size or SYNTHETIC_SIZES[0]) + (data.test_size or SYNTHETIC_SIZES[1])
    values = (images + data.num_classes) * 3 * data.image_size ** 2
    if values > MAX_SYNTHETIC_VALUES:
        raise SpecError(f"data: a synthetic set of {images:,} images and {data.num_classes:,} class templates of "
                        f"{data.image_size}x{data.image_size} pixels is {values:,} values, past the "
                        f"{MAX_SYNTHETIC_VALUES:,} rethink generates; lower data.train_size, test_size, "
                        "num_classes or image_size")


def _canonical_data(data: DataSpec) -> DataSpec:
    """Settings that change nothing are written as their defaults, so the run id does not depend
    on spelling: a crop of the whole image is no crop; image size and class count are the
    synthetic set's only (CIFAR's are fixed)."""
    if data.dataset != "synthetic" and (data.image_size, data.num_classes) != (32, 10):
        data = dataclasses.replace(data, image_size=32, num_classes=10)
    if data.crop is not None and data.crop == data.image_size:
        data = dataclasses.replace(data, crop=None)
    return data


def _canonical_regularizer(reg: RegularizerSpec, model: str) -> RegularizerSpec:
    """As `_canonical_data`: batch_norm equal to the model's default is left unset (None, as
    stores before this rule hold it), and the held-out fraction counts only with early stopping."""
    if reg.batch_norm is not None and reg.batch_norm == DEFAULT_BATCH_NORM.get(model):
        reg = dataclasses.replace(reg, batch_norm=None)
    if not reg.early_stopping and reg.holdout != RegularizerSpec.holdout:
        reg = dataclasses.replace(reg, holdout=RegularizerSpec.holdout)
    return reg


# ---- parsing command-line style values -------------------------------------------------------


def parse_corruption(text: str) -> CorruptionSpec:
    """'none', 'gaussian', 'labels:0.5', 'label_noise:0.2' -> CorruptionSpec."""
    kind, _, level = text.strip().partition(":")
    if kind in LABEL_KINDS and not level:
        raise SpecError(f"corruption '{kind}' needs a level, e.g. {kind}:0.5")
    if not level:
        return CorruptionSpec(kind=kind, level=1.0 if kind in IMAGE_KINDS else 0.0)
    return CorruptionSpec(kind=kind, level=_number(f"level of {kind}", level))


def parse_regularizer(text: str) -> RegularizerSpec:
    """'none' or 'weight_decay=5e-4,dropout=0.5,augment' -> RegularizerSpec."""
    text = text.strip()
    if text in ("", "none"):
        return RegularizerSpec()
    settings: dict[str, Any] = {}
    for item in text.split(","):
        key, eq, value = item.strip().partition("=")
        settings[key] = value if eq else True
    return regularizer_from_mapping(settings)


def regularizer_from_mapping(settings: dict[str, Any]) -> RegularizerSpec:
    """A grid entry's mapping (values may be strings from the command line) -> RegularizerSpec."""
    fields = {f.name: f for f in dataclasses.fields(RegularizerSpec)}
    kwargs: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in fields:
            raise SpecError(f"unknown regularizer '{key}'; valid: {', '.join(fields)}")
        kwargs[key] = _coerce(key, value, fields[key].default)
    return RegularizerSpec(**kwargs)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Turn a YAML or command-line value into the type of the field's default."""
    if isinstance(default, bool) or default is None:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).lower() in ("false", "0", "no", "off"):
            return False
        raise SpecError(f"{name} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not str(value).lstrip("-").isdigit():
            raise SpecError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        return _number(name, value)
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SpecError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise SpecError(f"{name} must be finite, got {value!r}")
    return number


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_in(name: str, value: Any, low: int, high: int) -> None:
    """An integer (not a bool, not a float) in [low, high], else one sentence naming the bound."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if value < low:
        floor = {0: "an integer >= 0", 1: "a positive integer"}.get(low, f"at least {low:,}")
        raise SpecError(f"{name} must be {floor}, got {value!r}")
    if value > high:
        raise SpecError(f"{name} must be at most {high:,}, got {_show(value)}")


def _positive(name: str, value: Any, high: float) -> None:
    """A finite number > 0 and at most `high`."""
    if not (_is_number(value) and value > 0 and (isinstance(value, int) or math.isfinite(value))):
        raise SpecError(f"{name} must be > 0, got {value!r}")
    if value > high:
        raise SpecError(f"{name} must be at most {high:g}, got {_show(value)}")


def _show(number: int | float) -> str:
    """A number for a message; an integer of hundreds of digits as its length."""
    if isinstance(number, float):
        return f"{number:g}"
    text = f"{number:,}"
    return text if len(text) <= 30 else f"an integer of {len(str(number))} digits"


def _one_of(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise SpecError(f"unknown {name} '{value}'; valid: {', '.join(valid)}")


def _fraction(name: str, value: Any, upper_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    if not ok or (upper_open and value == 1):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise SpecError(f"{name} must be in {bound}, got {value!r}")
