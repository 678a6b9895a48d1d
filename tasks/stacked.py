"""Packed training: the runs of a pack train as ONE model with a leading run axis.

A randomization test is hundreds of small trainings, and one small network leaves a GPU idle
(launch-bound). Here the parameters of R runs are stacked into tensors of shape (R, ...), one
forward (`torch.func.vmap` over `functional_call`) and one backward serve all R, and one
hand-written optimizer step updates every run with its own lr, momentum and weight decay.

The training epoch and the measuring after it are stacked. Each run keeps its `RunState`
(tasks/train.py): before a stacked epoch its parameters and optimizer buffers are stacked, after
it each run's slice is copied back into its own model and optimizer, and the stacked parameters
give every run's logits on its train, test and held-out splits in one vmapped forward per batch;
the metrics from those logits, probes, checkpoints and resume are the per-run code unchanged.
The augmentation, the loss and the optimizer are the side-by-side loop's own (tasks/batches.py,
tasks/optim.py), called on tensors with a run axis. Everything random stays per run: data order,
augmentation and label-noise draws come from each run's own generator, in the same order as the
side-by-side loop draws them, so a run trained in a pack matches the run trained alone (to
rounding: float64 on the CPU agrees to ~1e-15, float32 to ~1e-7; tests/tasks/test_stacked.py).

What may be stacked (`stack_key`):
- no dropout: the side-by-side loop draws dropout masks from each run's own global-RNG stream
  (swapped in around its epoch); under vmap all runs would share one stream in another order, so
  a run's result would depend on its packmates and would not resume exactly;
- no BatchNorm: its running statistics are buffers updated in place during the forward, which
  `functional_call` under vmap would have to stack, update and copy back; and the BatchNorm
  models (inception_small, resnet18) are large enough that one run already keeps a GPU busier;
- one optimizer kind and one training-set size per stacked group (equal steps per epoch), and
  equal module settings (`_structure`: ioc_mlp keeps its init scale outside its parameters).
Runs of a pack that cannot stack train side by side as before; the others stack in groups.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call, stack_module_state, vmap

from rethink.tasks.batches import apply_augment, augment_draws, smoothed_cross_entropy
from rethink.tasks.corruption import noisy_labels
from rethink.tasks.data import SYNTHETIC_SIZES
from rethink.tasks.evaluate import EVAL_BATCH, as_metric_dtype
from rethink.tasks.models import DEFAULT_BATCH_NORM, build_model
from rethink.tasks.optim import Optimizer
from rethink.tasks.spec import RunSpec
from rethink.tasks.timing import Stopwatch

if TYPE_CHECKING:  # train.py imports this module
    from rethink.tasks.train import RunState

STACK_ENV = "RETHINK_STACK"  # "1" forces stacking (e.g. on the CPU), "0" turns it off
MAX_PACK = 64  # runs per pack at most from `suggested_pack_size`; launch-bound gains flatten out
MEMORY_FRACTION = 0.8  # of the device memory that `suggested_pack_size` plans to use
CIFAR_TRAIN = 50_000  # training images when a CIFAR DataSpec leaves train_size unset


@dataclass(frozen=True)
class StackOptions:
    """Engine switches for the stacked step, to be kept only where the GPU benchmark shows a gain
    (bench/gpu.py). None of them change the math beyond rounding except bf16."""

    bf16: bool = False  # bf16 autocast in forward and loss (off: small MLPs gain nothing)
    compile: bool = False  # torch.compile the stacked forward + loss
    channels_last: bool = False  # hand conv inputs over in channels-last memory format


@dataclass
class StackedEpoch:
    """What a stacked group did for one of its runs this epoch."""

    seconds: float  # the group's wall time: training, and the stacked forward of measuring
    train_seconds: float  # the training part alone (for examples_per_s)
    logits: dict[str, torch.Tensor | None] | None  # per split name; None: measure this run alone


def stack_key(run: RunSpec) -> tuple | None:
    """Runs of a pack with equal keys can stack together; None for a run that never stacks."""
    reg = run.regularizer
    batch_norm = DEFAULT_BATCH_NORM.get(run.model, False) if reg.batch_norm is None else reg.batch_norm
    if reg.dropout > 0 or batch_norm:
        return None
    return (run.train.optimizer, reg.holdout if reg.early_stopping else None)


def unstackable_reason(runs: Sequence[RunSpec]) -> str | None:
    """Why these runs cannot train as one stacked model, or None if they can."""
    if len(runs) < 2:
        return "a single run has nothing to stack with"
    if any(run.regularizer.dropout > 0 for run in runs):
        return "dropout draws from each run's own global RNG stream"
    keys = [stack_key(run) for run in runs]
    if any(key is None for key in keys):
        return "BatchNorm keeps running statistics that are updated in place"
    if len(set(keys)) > 1:
        return "runs differ in optimizer or held-out split (steps per epoch)"
    return None


def stackable(runs: Sequence[RunSpec]) -> bool:
    return unstackable_reason(runs) is None


def resolve_stacking(stack: bool | StackOptions | None, device: torch.device) -> StackOptions | None:
    """The options to stack with, or None for side by side. `stack=None` means: $RETHINK_STACK if
    set, else stack on CUDA only (on the CPU nothing is launch-bound; side by side is the
    reference the stacked path is tested against)."""
    if isinstance(stack, StackOptions):
        return stack
    if stack is None:
        env = os.environ.get(STACK_ENV, "").strip()
        stack = env not in ("0", "false", "no", "off") if env else device.type == "cuda"
    return StackOptions() if stack else None


def device_memory_bytes(device: torch.device | str) -> int | None:
    """Total memory of a CUDA device; None on the CPU (no packing planned there)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def suggested_pack_size(run: RunSpec, device_memory_bytes: int | None) -> int:
    """How many runs like `run` to pack on one device of that memory: 1 on the CPU (None) and for
    runs that cannot stack; else what fits in MEMORY_FRACTION of it, at most MAX_PACK.

    Per run: its parameters 5 times over (its own model and momentum, the stacked copy, gradient
    and momentum; 7 with Adam's second moment), twice the activations of one batch (kept for
    backward, and their gradients), its labels and order, and its own images when a corruption
    rewrites them. Shared once: the clean dataset on the device, one evaluation batch."""
    if device_memory_bytes is None or stack_key(run) is None:
        return 1
    spec = run.data
    side = spec.crop or (spec.image_size if spec.dataset == "synthetic" else 32)
    classes = spec.num_classes if spec.dataset == "synthetic" else (100 if spec.dataset == "cifar100" else 10)
    default_n = SYNTHETIC_SIZES if spec.dataset == "synthetic" else (CIFAR_TRAIN, 10_000)
    n_train, n_test = spec.train_size or default_n[0], spec.test_size or default_n[1]
    params, activations = _shape_counts(run, (3, side, side), classes)
    image_bytes = 3 * side * side
    copies = 7 if run.train.optimizer == "adam" else 5
    per_run = 4 * (copies * params + 2 * activations * run.train.batch_size) + 32 * n_train
    if run.corruption.kind in ("shuffled_pixels", "random_pixels", "gaussian"):
        per_run += (n_train + n_test) * image_bytes * (4 if run.corruption.kind == "gaussian" else 1)
    shared = (n_train + n_test) * image_bytes + 4 * 1000 * activations  # dataset, one eval batch
    budget = MEMORY_FRACTION * device_memory_bytes - shared
    return max(1, min(MAX_PACK, int(budget // per_run)))


def _shape_counts(run: RunSpec, in_shape: tuple[int, int, int], classes: int) -> tuple[int, int]:
    """(parameters, activation values per example), from a model built on the meta device."""
    with torch.device("meta"):
        model = build_model(run.model, in_shape=in_shape, num_classes=classes, width=run.width,
                            batch_norm=run.regularizer.batch_norm)
        total = [0]
        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(lambda _m, _i, out: total.__setitem__(0, total[0] + out.numel()))
                 for m in leaves]
        model(torch.empty(1, *in_shape))
    for hook in hooks:
        hook.remove()
    return sum(p.numel() for p in model.parameters()), total[0]


class Stacker:
    """Trains and measures the stackable runs of a pack one epoch at a time; `train_pack` asks it
    first and trains whatever it returns nothing for side by side. A stacked epoch that raises
    (say, out of memory) rewinds the runs' generators and turns stacking off for the rest of the
    pack; stacked measuring that raises leaves that epoch's measuring to each run."""

    def __init__(self, options: StackOptions, watch: Stopwatch | None = None) -> None:
        self.options = options
        self.watch = watch or Stopwatch()
        self.enabled = True
        self._forward_cache: dict[tuple, object] = {}

    def train_epoch(self, states: Sequence[RunState]) -> dict[str, StackedEpoch]:
        """Train one epoch of every stackable group of `states`, then measure it."""
        done: dict[str, StackedEpoch] = {}
        if not self.enabled:
            return done
        groups: dict[tuple, list[RunState]] = {}
        for state in states:
            key = stack_key(state.spec)
            if key is not None and not any(True for _ in state.model.buffers()):
                groups.setdefault(key + (len(state.labels), _structure(state.model)), []).append(state)
        for group in groups.values():
            if len(group) < 2:
                continue
            saved = [s.generator.get_state() for s in group]
            start = time.perf_counter()
            try:
                with self.watch.part("train"):
                    params = self._train_group(group)
            except Exception as exc:  # fall back: these runs train side by side from here on
                for state, generator_state in zip(group, saved):
                    state.generator.set_state(generator_state)
                warnings.warn(f"stacked training failed, training side by side instead: {exc!r}")
                self.enabled = False
                return done
            trained = time.perf_counter() - start
            try:
                with self.watch.part("measure"):
                    logits = self._measure_group(group, params)
            except Exception as exc:
                warnings.warn(f"stacked measuring failed, measuring run by run instead: {exc!r}")
                logits = [None] * len(group)
            seconds = time.perf_counter() - start
            done.update((s.run_id, StackedEpoch(seconds, trained, lg)) for s, lg in zip(group, logits))
        return done

    def _train_group(self, states: list[RunState]) -> dict[str, torch.Tensor]:
        """One epoch of the group; returns its stacked parameters (each run's also written back)."""
        first = states[0]
        device, opts = first.device, self.options
        n, batch_size, classes = len(first.labels), first.spec.train.batch_size, first.num_classes
        params, _ = stack_module_state([s.model for s in states])
        runs = [s.spec for s in states]
        optimizer = Optimizer(first.spec.train.optimizer, params, [s.epoch_lr() for s in states],
                              [r.train.momentum for r in runs], [r.regularizer.weight_decay for r in runs])
        optimizer.stack_from([s.optimizer for s in states])
        forward = self._forward(first.model)
        smoothing = _column([r.regularizer.label_smoothing for r in runs], params)
        noise = [r.corruption.level if r.corruption.kind == "label_noise" else 0.0 for r in runs]
        augmented = [r.regularizer.augment for r in runs]
        some = None if all(augmented) else torch.tensor([r for r, a in enumerate(augmented) if a], device=device)
        shared = all(s.images is first.images for s in states)
        labels = torch.stack([s.labels for s in states])  # (R, N)
        orders = torch.stack([torch.randperm(n, generator=s.generator, device=device) for s in states])
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if opts.bf16 else nullcontext()
        for i in range(0, n, batch_size):
            idx = orders[:, i : i + batch_size]  # (R, b)
            x = first.images[idx] if shared else _stack_rows([s.images[j] for s, j in zip(states, idx)])
            y = labels.gather(1, idx)
            draws = []
            for r, state in enumerate(states):  # the side-by-side draw order: noise, then augment
                if noise[r]:
                    y[r] = noisy_labels(y[r], noise[r], classes, state.generator)
                if augmented[r]:
                    draws.append(augment_draws(idx.shape[1], state.generator, device))
            if draws:
                x = _augment_rows(x, some, draws)
            x = self._inputs(first, x)
            with autocast:
                loss = forward(params, x, y, smoothing)
            grads = torch.autograd.grad(loss, list(params.values()))
            optimizer.step(dict(zip(params, grads)))
        _write_back(states, params, optimizer)
        steps = -(-n // batch_size)
        for state in states:
            state.step += steps
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return params

    def _inputs(self, first: RunState, x: torch.Tensor) -> torch.Tensor:
        """(R, b, ...) stored pixels -> (R, b, ...) model inputs, normalized as each run would."""
        runs = x.shape[0]
        x = first.normalize(x.flatten(0, 1))
        if self.options.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.view(runs, -1, *x.shape[1:])

    @torch.no_grad()
    def _measure_group(self, states: list[RunState], params: dict[str, torch.Tensor]) -> list[dict]:
        """Every run's logits on each split, one vmapped forward per EVAL_BATCH images; a split
        all runs share (the clean test set, say) is normalized once and broadcast, not copied."""
        first = states[0]
        one = self._one(first.model)
        out: list[dict] = [{} for _ in states]
        for name in ("train", "test", "val"):
            splits = [s.splits[name] for s in states]
            if splits[0] is None or len(splits[0].images) == 0:
                for logits in out:
                    logits[name] = None
                continue
            shared = all(sp.images is splits[0].images for sp in splits)
            chunks = []
            for i in range(0, len(splits[0].images), EVAL_BATCH):
                if shared:
                    x = first.normalize(splits[0].images[i : i + EVAL_BATCH])
                    chunks.append(vmap(one, in_dims=(0, None))(params, x))
                else:
                    x = self._inputs(first, _stack_rows([sp.images[i : i + EVAL_BATCH] for sp in splits]))
                    chunks.append(vmap(one)(params, x))
            logits = as_metric_dtype(torch.cat(chunks, dim=1))  # (R, n, K)
            for r, run_logits in enumerate(out):
                run_logits[name] = logits[r]
        return out

    def _one(self, model: torch.nn.Module):
        """One run's forward as a function of its parameters, on a bare copy of the model; made
        once per model structure (measuring asks every epoch)."""
        key = ("one",) + _structure(model)
        if key not in self._forward_cache:
            base = copy.deepcopy(model).to("meta")

            def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return functional_call(base, p, (x,))

            self._forward_cache[key] = one
        return self._forward_cache[key]

    def _forward(self, model: torch.nn.Module):
        """The stacked loss: each run's mean smoothed cross entropy, summed over runs (so each
        run's gradient is its own). One per model structure, compiled if asked."""
        key = _structure(model)
        if key not in self._forward_cache:
            one = self._one(model)

            def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     smoothing: torch.Tensor) -> torch.Tensor:
                return smoothed_cross_entropy(vmap(one)(params, x), y, smoothing).sum()

            self._forward_cache[key] = torch.compile(loss) if self.options.compile else loss
        return self._forward_cache[key]


def _structure(model: torch.nn.Module) -> tuple:
    """What must be equal for models to share one forward: parameter names, shapes and dtypes,
    and the modules' settings as repr shows them, since the stacked forward runs the first
    model's modules (ioc_mlp's PositiveLinear, say, keeps its init scale as a plain attribute)."""
    return repr(model), tuple((k, tuple(p.shape), p.dtype) for k, p in model.named_parameters())


def _column(values: Sequence[float], like: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-run hyperparameters as a (R,) tensor on the parameters' device and dtype."""
    p = next(iter(like.values()))
    return torch.tensor(values, dtype=p.dtype, device=p.device)


def _stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-run batches; float32 if kinds mix (gaussian images beside uint8 ones: the uint8
    values convert exactly, and normalization converts both the same way)."""
    if len({r.dtype for r in rows}) > 1:
        rows = [r.float() for r in rows]
    return torch.stack(rows)


def _augment_rows(x: torch.Tensor, rows: torch.Tensor | None, draws: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """`batches.apply_augment` at once for the runs that augment: those at `rows` of the run
    axis, or all of them (None); `draws` are theirs, in run order."""
    part = (x if rows is None else x.index_select(0, rows)).flatten(0, 1)  # (k * b, C, H, W)
    out = apply_augment(part, tuple(torch.cat(d) for d in zip(*draws)))
    out = out.view(len(draws), -1, *out.shape[1:])
    return out if rows is None else x.index_copy(0, rows, out)


@torch.no_grad()
def _write_back(states: Sequence[RunState], params: dict[str, torch.Tensor], optimizer: Optimizer) -> None:
    """Each run's slice back into its own model and optimizer."""
    for name, stacked in params.items():
        for r, state in enumerate(states):
            state.params[name].copy_(stacked[r])
    optimizer.unstack_into([s.optimizer for s in states])
