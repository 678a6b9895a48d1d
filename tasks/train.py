"""The training loop. Its unit of work is a *pack*: runs that share dataset and model shape,
trained on one device. Each epoch emits one metrics row per run through `on_epoch`, and at each
run's checkpoint cadence (`checkpoint_every`: epochs or seconds) a snapshot of its state, already
copied off the device, through `on_checkpoint`; the loop writes no files and serializes nothing.

Runs train side by side, one model each, epoch by epoch; where stacking is on (CUDA by default),
the stackable runs of a pack train and are measured each epoch as one stacked model
(tasks/stacked.py), and every run keeps its own model, optimizer state, probes and checkpoints.
Both loops share one augmentation, one loss and one optimizer (tasks/batches.py, tasks/optim.py)."""

from __future__ import annotations

import hashlib
import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from rethink.errors import RethinkError, SpecError
from rethink.states import RunState as RunStatus
from rethink.states import StopReason
from rethink.tasks import checkpoint
from rethink.tasks.batches import augment, smoothed_cross_entropy
from rethink.tasks.corruption import corrupt, noisy_labels
from rethink.tasks.data import Dataset, load_dataset, stratified_indices
from rethink.tasks.evaluate import Normalizer, Split, measure_split, split_metrics
from rethink.tasks.memory import retain_freed_memory
from rethink.tasks.models import build_model
from rethink.tasks.optim import Optimizer
from rethink.tasks.probes import PROBE_COLUMNS, PROBE_SIZE, measure_probes
from rethink.tasks.spec import RunSpec, checkpoint_cadence
from rethink.tasks.stacked import StackedEpoch, Stacker, StackOptions, resolve_stacking
from rethink.tasks.timing import Stopwatch

# The columns of one epoch row, in order (DESIGN.md's `epochs` view, plus the held-out split).
EPOCH_COLUMNS = (
    "run_id", "epoch", "step", "lr", "train_loss", "train_acc", "train_acc_corrupted",
    "train_acc_clean", "train_acc_true", "test_loss", "test_acc", "gap", "val_loss", "val_acc",
    "wall_s", "examples_per_s",
) + PROBE_COLUMNS
TIMING_COLUMNS = ("wall_s", "examples_per_s")  # the only columns that differ between reruns

OnEpoch = Callable[[str, dict], None]  # (run_id, row)
OnCheckpoint = Callable[[str, int, dict], None]  # (run_id, epoch, state on the host: checkpoint.dumps it)
SPLITS = ("train", "test", "val")


@dataclass
class RunOutcome:
    """How one run of a pack ended."""

    run_id: str
    status: RunStatus  # DONE | FAILED | PENDING (stopped by a cancel or a takeover: resumable)
    stop_reason: StopReason
    epochs_done: int
    epochs_to_fit: int | None = None
    steps_to_fit: int | None = None
    best_test_acc: float | None = None
    error: str | None = None


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_pack(
    runs: Sequence[RunSpec],
    data_dir: str | Path,
    *,
    on_epoch: OnEpoch,
    on_checkpoint: OnCheckpoint | None = None,
    resume: dict[str, bytes | dict] | None = None,
    device: torch.device | str | None = None,
    dataset: Dataset | None = None,
    stack: bool | StackOptions | None = None,
    dtype: torch.dtype = torch.float32,
    final_checkpoint: bool = True,
    stopwatch: Stopwatch | None = None,
    on_epoch_end: Callable[[], None] | None = None,
    on_end: Callable[[RunOutcome], None] | None = None,
    on_phase: Callable[[str, str], None] | None = None,
) -> list[RunOutcome]:
    """Train every run of the pack to its end; a run that fails or stops early drops out and the
    others go on. `resume` maps run ids to a checkpoint (bytes, or a state `checkpoint.loads`
    gave) to start from. `stack`: train the stackable runs as one stacked model
    (tasks/stacked.py); None = on CUDA or $RETHINK_STACK. `dtype`: of models and inputs (float64
    for the equivalence tests). `final_checkpoint`: also snapshot each run when it ends (`rethink
    train` keeps it; a store deletes a finished run's checkpoints, so its worker asks for none).
    `stopwatch`: where the seconds of training, measuring, probing and snapshots add up.
    `on_epoch_end()`: after each epoch of the whole pack (a writer batches its work there; if it
    raises, the pack stops). `on_end(outcome)`: as each run leaves the pack, done or failed.
    `on_phase(run_id, phase)`: "training" once its data and model are ready, "probing" before
    each measuring of its probes (which can take longer than the epoch: progress says so)."""
    if not runs:
        return []
    keys = {run.pack_key for run in runs}
    if len(keys) > 1:
        raise SpecError("a pack's runs must share dataset, model shape, batch size and epochs")
    device = torch.device(device) if device is not None else default_device()
    retain_freed_memory()
    dataset = dataset or load_dataset(runs[0].data, data_dir)
    resume = resume or {}
    watch = stopwatch or Stopwatch()
    on_device: dict[int, torch.Tensor] = {}  # tensors shared by runs (e.g. clean images) move once
    states: list[RunState] = []
    outcomes: dict[str, RunOutcome] = {}
    for spec in runs:
        try:
            state = RunState(spec, dataset, device, on_device, dtype)
            if spec.run_id in resume:
                state.load(resume[spec.run_id])
            states.append(state)
        except Exception as exc:  # one bad run must not sink the pack
            outcomes[spec.run_id] = _failed(spec.run_id, 0, exc)
    for outcome in list(outcomes.values()) if on_end else ():  # failed before training
        on_end(outcome)
    active = [s for s in states if not s.finished]
    for state in states:
        if state.finished:  # resumed from its final checkpoint: nothing left to train
            _ended(outcomes, state.outcome(), on_end)
    options = resolve_stacking(stack, device)
    stacker = Stacker(options, watch) if options is not None else None
    for state in active:
        state.checkpointed_at = time.monotonic()
        if on_phase:
            on_phase(state.run_id, "training")
    while active:
        stacked = stacker.train_epoch(active) if stacker else {}  # {run_id: StackedEpoch}, trained and measured
        for state in list(active):
            try:
                row = state.run_epoch(stacked.get(state.run_id), watch, on_phase)
                on_epoch(state.run_id, row)  # a callback may raise to stop this run alone
                if on_checkpoint and state.checkpoint_due(final_checkpoint):
                    with watch.part("snapshot"):
                        snapshot = state.snapshot()
                    on_checkpoint(state.run_id, state.epoch, snapshot)
            except Exception as exc:
                active.remove(state)
                _ended(outcomes, _failed(state.run_id, state.epoch, exc), on_end)
                continue
            if state.finished:
                active.remove(state)
                _ended(outcomes, state.outcome(), on_end)
        if on_epoch_end:
            on_epoch_end()
    return [outcomes[run.run_id] for run in runs]


def _ended(outcomes: dict[str, RunOutcome], outcome: RunOutcome, on_end: Callable[[RunOutcome], None] | None) -> None:
    outcomes[outcome.run_id] = outcome
    if on_end:
        on_end(outcome)


def _plain(value: object) -> object:
    """A checkpoint holds plain values only (weights_only loading refuses enum objects)."""
    return str.__str__(value) if isinstance(value, str) else value


def _failed(run_id: str, epoch: int, exc: BaseException) -> RunOutcome:
    """How a run ends on an exception: an exception that names its own `stop_reason` (a cancel,
    a takeover: the caller's exceptions) leaves the run resumable; any other fails it."""
    if isinstance(exc, RethinkError):  # a condition we named: its sentence says it all
        text = str(exc)
    else:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    reason = StopReason(getattr(exc, "stop_reason", StopReason.ERROR))
    status = RunStatus.FAILED if reason == StopReason.ERROR else RunStatus.PENDING
    return RunOutcome(run_id, status, reason, epoch, error=text)


class RunState:
    """Everything one run owns on the device: data views, model, optimizer, its RNG streams and
    its progress. Global torch RNG (dropout) is swapped in and out around each epoch so runs of
    one pack never share a stream."""

    def __init__(self, spec: RunSpec, dataset: Dataset, device: torch.device, on_device: dict[int, torch.Tensor],
                 dtype: torch.dtype = torch.float32):
        self.spec, self.device, self.run_id = spec, device, spec.run_id
        reg, seed = spec.regularizer, spec.seed
        data = corrupt(dataset, spec.corruption, seed)

        def put(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in on_device:
                on_device[id(t)] = t.to(device)
            return on_device[id(t)]

        images, labels = put(data.train.images), put(data.train.labels)
        true_labels, corrupted = put(data.true_labels), put(data.corrupted)
        n = len(labels)
        if reg.early_stopping:
            held = stratified_indices(data.true_labels, max(1, round(reg.holdout * n)), derive_seed(seed, "holdout"))
            keep = torch.ones(n, dtype=torch.bool)
            keep[held] = False
            held, kept = held.to(device), keep.nonzero().squeeze(1).to(device)
            self.val_images, self.val_labels = images[held], labels[held]
            images, labels, true_labels, corrupted = images[kept], labels[kept], true_labels[kept], corrupted[kept]
        else:
            self.val_images = self.val_labels = None
        self.images, self.labels, self.true_labels, self.corrupted = images, labels, true_labels, corrupted
        self.test_images, self.test_labels = put(data.test.images), put(data.test.labels)
        self.splits: dict[str, Split | None] = {
            "train": Split("train", images, labels, true_labels, corrupted, int(corrupted.sum())),
            "test": Split("test", self.test_images, self.test_labels),
            "val": None if self.val_images is None else Split("val", self.val_images, self.val_labels),
        }
        if spec.train.probe_every:  # a fixed seeded probe batch from the training set, its labels as trained
            pick = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(derive_seed(seed, "probe")))
            pick = pick[:PROBE_SIZE].to(device)
            self.probe_images, self.probe_labels = self.images[pick], self.labels[pick]
        self.num_classes = dataset.num_classes
        self.normalize = Normalizer(
            torch.tensor(dataset.mean, device=device), torch.tensor(dataset.std, device=device), spec.data.whiten, dtype
        )

        torch.manual_seed(derive_seed(seed, "init"))
        in_shape = tuple(self.images.shape[1:])
        self.model = build_model(
            spec.model, in_shape=in_shape, num_classes=self.num_classes, width=spec.width,
            init_scale=spec.init_scale, dropout=reg.dropout, batch_norm=reg.batch_norm,
        ).to(device=device, dtype=dtype)
        t = spec.train
        self.params = dict(self.model.named_parameters())
        self.optimizer = Optimizer(t.optimizer, self.params, t.lr, t.momentum, reg.weight_decay)
        self.checkpoint_epochs, self.checkpoint_seconds = checkpoint_cadence(t.checkpoint_every)
        self.checkpointed_at = time.monotonic()  # when the last snapshot was taken (or training began)
        self.generator = torch.Generator(device=device)  # data order, augmentation, label noise
        self.generator.manual_seed(derive_seed(seed, "data"))
        self.torch_rng = torch.get_rng_state()  # dropout's stream (CPU), owned by this run
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.epoch = self.step = 0
        self.epochs_to_fit: int | None = None
        self.steps_to_fit: int | None = None
        self.best_test_acc: float | None = None
        self.best_val_acc = -1.0
        self.epochs_since_best = 0
        self.stop_reason: StopReason | None = None

    @property
    def finished(self) -> bool:
        return self.stop_reason is not None or self.epoch >= self.spec.train.epochs

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        outer = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if self.cuda_rng is not None else None
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)
        try:
            yield
        finally:
            self.torch_rng = torch.get_rng_state()
            torch.set_rng_state(outer)
            if self.cuda_rng is not None:
                self.cuda_rng = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer_cuda, self.device)

    def epoch_lr(self) -> float:
        """The learning rate of the epoch about to be trained."""
        return self.spec.train.lr * self.spec.train.lr_decay ** self.epoch

    def run_epoch(self, stacked: StackedEpoch | None = None, watch: Stopwatch | None = None,
                  on_phase: Callable[[str, str], None] | None = None) -> dict:
        """Train one epoch, measure, decide whether to stop; return the epoch's row. `stacked`: a
        stacked pack (tasks/stacked.py) already trained this epoch and computed its logits."""
        watch = watch or Stopwatch()
        spec, t, reg = self.spec, self.spec.train, self.spec.regularizer
        lr = self.epoch_lr()
        self.optimizer.set_lr(lr)
        start = time.perf_counter() - (stacked.seconds if stacked else 0.0)
        train_s = stacked.train_seconds if stacked else None
        if stacked is None:
            with watch.part("train"):
                with self._own_rng():
                    self._train_one_epoch(t.batch_size, reg.augment, reg.label_smoothing)
                self._sync()
            train_s = time.perf_counter() - start
        self.epoch += 1
        row: dict = {"run_id": self.run_id, "epoch": self.epoch, "step": self.step, "lr": lr}
        with watch.part("measure"):
            for name in SPLITS:
                split = self.splits[name]
                if split is not None and stacked is not None and stacked.logits is not None:
                    row |= split_metrics(split, stacked.logits[name])  # the stacked forward's logits
                else:
                    row |= measure_split(self.model, split, self.normalize, name)
        row["gap"] = row["train_acc"] - row["test_acc"]
        if t.probe_every and self.epoch % t.probe_every == 0:
            if on_phase:
                on_phase(self.run_id, "probing")
            with watch.part("probe"):
                row |= measure_probes(self.model, self.normalize(self.probe_images), self.probe_labels)
        self._sync()
        row["wall_s"] = time.perf_counter() - start
        row["examples_per_s"] = len(self.labels) / train_s if train_s > 0 else None
        self._update_progress(row)
        return {column: row.get(column) for column in EPOCH_COLUMNS}

    def _train_one_epoch(self, batch_size: int, augmented: bool, label_smoothing: float) -> None:
        self.model.train()
        noise = self.spec.corruption.level if self.spec.corruption.kind == "label_noise" else 0.0
        order = torch.randperm(len(self.labels), generator=self.generator, device=self.device)
        params = list(self.params.values())
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x, y = self.images[idx], self.labels[idx]
            if noise:
                y = noisy_labels(y, noise, self.num_classes, self.generator)
            if augmented:
                x = augment(x, self.generator)
            loss = smoothed_cross_entropy(self.model(self.normalize(x)), y, label_smoothing)
            grads = torch.autograd.grad(loss, params)
            self.optimizer.step(dict(zip(self.params, grads)))
            self.step += 1

    def checkpoint_due(self, at_finish: bool) -> bool:
        """After an epoch: is a snapshot due by the run's cadence (or because it ended)?"""
        if self.finished:
            return at_finish
        if self.checkpoint_epochs is not None:
            return self.epoch % self.checkpoint_epochs == 0
        return time.monotonic() - self.checkpointed_at >= self.checkpoint_seconds

    def _update_progress(self, row: dict) -> None:
        if self.epochs_to_fit is None and row["train_acc"] >= self.spec.train.fit_threshold:
            self.epochs_to_fit, self.steps_to_fit = self.epoch, self.step
        if row["test_acc"] is not None and (self.best_test_acc is None or row["test_acc"] > self.best_test_acc):
            self.best_test_acc = row["test_acc"]
        if not math.isfinite(row["train_loss"]):
            self.stop_reason = StopReason.DIVERGED
        elif self.spec.regularizer.early_stopping and row["val_acc"] is not None:
            if row["val_acc"] > self.best_val_acc:
                self.best_val_acc, self.epochs_since_best = row["val_acc"], 0
            else:
                self.epochs_since_best += 1
                if self.epochs_since_best >= self.spec.regularizer.early_stopping:
                    self.stop_reason = StopReason.EARLY_STOPPED
        if self.stop_reason is None and self.epoch >= self.spec.train.epochs:
            self.stop_reason = StopReason.COMPLETED

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def outcome(self) -> RunOutcome:
        return RunOutcome(
            self.run_id, RunStatus.DONE, StopReason(self.stop_reason or StopReason.COMPLETED), self.epoch,
            self.epochs_to_fit, self.steps_to_fit, self.best_test_acc,
        )

    # -- checkpoints: everything needed to continue exactly where this run stopped --------------

    PROGRESS = ("epoch", "step", "epochs_to_fit", "steps_to_fit", "best_test_acc", "best_val_acc",
                "epochs_since_best", "stop_reason")

    def snapshot(self) -> dict:
        """The run's state copied to the host, safe to serialize on another thread while this
        run trains on: tensors, numbers and strings only (`checkpoint.loads` refuses the rest)."""
        self.checkpointed_at = time.monotonic()
        return {
            "run": self.spec.identity(),
            "model": {k: _host_copy(v) for k, v in self.model.state_dict().items()},
            "optimizer": _host_tree(self.optimizer.state_dict()),
            "rng": {"torch": self.torch_rng.clone(), "cuda": None if self.cuda_rng is None else self.cuda_rng.clone(),
                    "data": self.generator.get_state()},
            "progress": {name: _plain(getattr(self, name)) for name in self.PROGRESS},
        }

    def load(self, saved: bytes | dict) -> None:
        """Continue from a checkpoint (its bytes, or the state `checkpoint.loads` made of them)."""
        state = checkpoint.loads(saved) if isinstance(saved, (bytes, bytearray, memoryview)) else saved
        if state.get("run") != self.spec.identity():
            raise checkpoint.CheckpointError("checkpoint belongs to a different run config")
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise checkpoint.CheckpointError(f"checkpoint's optimizer state does not fit: {exc}") from None
        self.torch_rng = state["rng"]["torch"]
        if self.cuda_rng is not None and state["rng"]["cuda"] is not None:
            self.cuda_rng = state["rng"]["cuda"]
        self.generator.set_state(state["rng"]["data"])
        for name, value in state["progress"].items():
            setattr(self, name, value)


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy on the host that training can no longer change."""
    return t.detach().to("cpu", copy=True)


def _host_tree(tree):
    if isinstance(tree, torch.Tensor):
        return _host_copy(tree)
    if isinstance(tree, dict):
        return {k: _host_tree(v) for k, v in tree.items()}
    return tree
