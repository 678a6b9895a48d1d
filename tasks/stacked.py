"""Packed training: the runs of a pack train as ONE model with a leading run axis.

A randomization test is hundreds of small trainings, and one small network leaves a GPU idle
(launch-bound). Here the parameters of R runs are stacked into tensors of shape (R, ...), one
forward (`torch.func.vmap` over `functional_call`) and one backward serve all R, and one
hand-written optimizer step updates every run with its own lr, momentum and weight decay.

Only the training epoch is stacked. Each run keeps its `RunState` (tasks/train.py): before a
stacked epoch its parameters and optimizer buffers are stacked, after it each run's slice is
copied back into its own model and `optimizer.state`, so measurement, probes, checkpoints and
resume keep using the per-run code unchanged. Everything random stays per run: data order,
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

from rethink.tasks.batches import AUGMENT_PAD
from rethink.tasks.corruption import noisy_labels
from rethink.tasks.data import SYNTHETIC_SIZES
from rethink.tasks.models import DEFAULT_BATCH_NORM, build_model
from rethink.tasks.spec import RunSpec

if TYPE_CHECKING:  # train.py imports this module
    from rethink.tasks.train import RunState

STACK_ENV = "RETHINK_STACK"  # "1" forces stacking (e.g. on the CPU), "0" turns it off
MAX_PACK = 64  # runs per pack at most from `suggested_pack_size`; launch-bound gains flatten out
MEMORY_FRACTION = 0.8  # of the device memory that `suggested_pack_size` plans to use
ADAM_BETA2, ADAM_EPS = 0.999, 1e-8  # torch.optim.Adam defaults, as tasks/train.py builds it
CIFAR_TRAIN = 50_000  # training images when a CIFAR DataSpec leaves train_size unset


@dataclass(frozen=True)
class StackOptions:
    """Engine switches for the stacked step, to be kept only where the GPU benchmark shows a gain
    (bench/gpu.py). None of them change the math beyond rounding except bf16."""

    bf16: bool = False  # bf16 autocast in forward and loss (off: small MLPs gain nothing)
    compile: bool = False  # torch.compile the stacked forward + loss
    channels_last: bool = False  # hand conv inputs over in channels-last memory format


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
    """Trains the stackable runs of a pack one epoch at a time; `train_pack` asks it first and
    trains whatever it returns no time for side by side. A stacked epoch that raises (say, out of
    memory) rewinds the runs' generators and turns stacking off for the rest of the pack."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.enabled = True
        self._forward_cache: dict[tuple, object] = {}

    def train_epoch(self, states: Sequence[RunState]) -> dict[str, float]:
        """Train one epoch of every stackable group of `states`; {run_id: seconds} of those done."""
        trained: dict[str, float] = {}
        if not self.enabled:
            return trained
        groups: dict[tuple, list[RunState]] = {}
        for state in states:
            key = stack_key(state.spec)
            if key is not None and not any(True for _ in state.model.buffers()):
                groups.setdefault(key + (len(state.labels), _structure(state.model)), []).append(state)
        for group in groups.values():
            if len(group) < 2:
                continue
            saved = [s.generator.get_state() for s in group]
            try:
                seconds = self._train_group(group)
            except Exception as exc:  # fall back: these runs train side by side from here on
                for state, generator_state in zip(group, saved):
                    state.generator.set_state(generator_state)
                warnings.warn(f"stacked training failed, training side by side instead: {exc!r}")
                self.enabled = False
                return trained
            trained.update((s.run_id, seconds) for s in group)
        return trained

    def _train_group(self, states: list[RunState]) -> float:
        start = time.perf_counter()
        first = states[0]
        device, opts = first.device, self.options
        n, batch_size, classes = len(first.labels), first.spec.train.batch_size, first.num_classes
        params, _ = stack_module_state([s.model for s in states])
        optimizer = _StackedOptimizer(states, params)
        forward = self._forward(first.model)
        runs = [s.spec for s in states]
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
                    draws.append(_augment_draws(idx.shape[1], state.generator, device))
            if draws:
                x = _augment_rows(x, some, draws)
            x = first.normalize(x.flatten(0, 1))
            if opts.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            x = x.view(len(states), -1, *x.shape[1:])
            with autocast:
                loss = forward(params, x, y, smoothing)
            grads = torch.autograd.grad(loss, list(params.values()))
            optimizer.step(dict(zip(params, grads)))
        optimizer.write_back()
        steps = -(-n // batch_size)
        for state in states:
            state.step += steps
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def _forward(self, model: torch.nn.Module):
        """The stacked loss: mean cross entropy per run, summed over runs (so each run's gradient
        is its own), label smoothing per run. One per model structure, compiled if asked."""
        key = _structure(model)
        if key not in self._forward_cache:
            base = copy.deepcopy(model).to("meta")

            def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
                return functional_call(base, p, (x,))

            def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     smoothing: torch.Tensor) -> torch.Tensor:
                logp = torch.log_softmax(vmap(one)(params, x), dim=-1)  # (R, b, K)
                nll = -logp.gather(-1, y[..., None]).squeeze(-1)
                smooth = -logp.mean(-1)  # F.cross_entropy's label_smoothing term
                eps = smoothing.view(-1, 1).to(logp.dtype)
                return ((1 - eps) * nll + eps * smooth).mean(1).sum()

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


def _augment_draws(n: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The draws of `batches.augment` for one run's batch, in its order (dy, dx, flip), so the
    stacked path consumes each run's generator exactly as the side-by-side path does."""
    span = 2 * AUGMENT_PAD + 1
    dy = torch.randint(0, span, (n,), generator=generator, device=device)
    dx = torch.randint(0, span, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return dy, dx, flip


def _augment_rows(x: torch.Tensor, rows: torch.Tensor | None, draws: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """`batches.augment` (zero-pad, crop, flip) applied at once to the runs that augment: those
    at `rows` of the run axis, or all of them (None)."""
    part = (x if rows is None else x.index_select(0, rows)).flatten(0, 1)  # (k * b, C, H, W)
    dy, dx, flip = (torch.cat(d) for d in zip(*draws))
    n, channels, h, w = part.shape
    pad, dev = AUGMENT_PAD, part.device
    padded = torch.nn.functional.pad(part, (pad, pad, pad, pad))
    rows_i = dy[:, None] + torch.arange(h, device=dev)[None, :]
    cols_i = dx[:, None] + torch.arange(w, device=dev)[None, :]
    cols_i = torch.where(flip[:, None], cols_i.flip(1), cols_i)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    channel = torch.arange(channels, device=dev)[None, :, None, None]
    out = padded[batch, channel, rows_i[:, None, :, None], cols_i[:, None, None, :]]
    out = out.view(len(draws), -1, *out.shape[1:])
    return out if rows is None else x.index_copy(0, rows, out)


class _StackedOptimizer:
    """torch.optim.SGD (momentum, L2 weight decay) or Adam (L2 weight decay) over stacked
    parameters, each run with its own lr, momentum / beta1 and weight decay, in torch's math:
    SGD:  d = g + wd*p;  buf = m*buf + d (buf = d on the first step);  p -= lr*buf (m=0: lr*d).
    Adam: g += wd*p; m1 = lerp(m1, g, 1-b1); m2 = b2*m2 + (1-b2)*g*g;
          p -= lr/(1-b1^t) * m1 / (sqrt(m2)/sqrt(1-b2^t) + eps).
    A run without state yet starts from zeros, which gives torch's first step exactly."""

    def __init__(self, states: Sequence[RunState], params: dict[str, torch.Tensor]) -> None:
        self.states, self.params = states, params
        self.adam = states[0].spec.train.optimizer == "adam"
        per_run = [dict(s.model.named_parameters()) for s in states]
        self.sources = [[own[name] for own in per_run] for name in params]
        runs = [s.spec for s in states]
        lrs, betas, decays = [s.epoch_lr() for s in states], [r.train.momentum for r in runs], \
            [r.regularizer.weight_decay for r in runs]
        self.lr, self.beta, self.wd = (_column(v, params) for v in (lrs, betas, decays))
        self.decay = any(decays)  # torch adds wd*p only where wd != 0; 0*p adds nothing either
        for state, lr in zip(states, lrs):
            for group in state.optimizer.param_groups:
                group["lr"] = lr
        names = ("exp_avg", "exp_avg_sq") if self.adam else ("momentum_buffer",)
        self.buffers = {key: {name: self._stack_state(sources, key) for name, sources in zip(params, self.sources)}
                        for key in names}
        slots = [s.optimizer.state.get(p, {}) for s, p in zip(states, self.sources[0])]  # .get: no new entries
        self.t = [float(slot["step"]) if "step" in slot else 0.0 for slot in slots]
        # Adam's step counts and bias corrections stay on the device in float64 (torch computes
        # them as Python floats): no host round trip per step
        device = next(iter(params.values())).device
        self.t_dev = torch.tensor(self.t, dtype=torch.float64, device=device)
        self.lr64, self.beta64 = (torch.tensor(v, dtype=torch.float64, device=device) for v in (lrs, betas))

    def _stack_state(self, sources: list[torch.Tensor], key: str) -> torch.Tensor:
        rows = [s.optimizer.state.get(p, {}).get(key) for s, p in zip(self.states, sources)]
        return torch.stack([torch.zeros_like(p) if row is None else row for p, row in zip(sources, rows)])

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor]) -> None:
        if self.adam:
            self.t = [t + 1 for t in self.t]
            self.t_dev += 1
            dtype = self.lr.dtype
            step_size = (self.lr64 / (1 - self.beta64 ** self.t_dev)).to(dtype)
            bc2_sqrt = (1 - ADAM_BETA2 ** self.t_dev).sqrt().to(dtype)
        for name, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            d = grads[name] + self.wd.view(shape) * p if self.decay else grads[name]
            if self.adam:
                m1, m2 = self.buffers["exp_avg"][name], self.buffers["exp_avg_sq"][name]
                m1.lerp_(d, (1 - self.beta).view(shape))
                m2.mul_(ADAM_BETA2).addcmul_(d, d, value=1 - ADAM_BETA2)
                denom = (m2.sqrt() / bc2_sqrt.view(shape)).add_(ADAM_EPS)
                p.sub_(step_size.view(shape) * m1 / denom)
            else:
                buf = self.buffers["momentum_buffer"][name]
                buf.mul_(self.beta.view(shape)).add_(d)
                p.sub_(self.lr.view(shape) * buf)

    @torch.no_grad()
    def write_back(self) -> None:
        """Each run's slice back into its own model and optimizer state, as torch would hold it."""
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        for name, sources in zip(self.params, self.sources):
            for r, (state, p) in enumerate(zip(self.states, sources)):
                p.copy_(self.params[name][r])
                if self.adam:
                    state.optimizer.state[p] = {"step": torch.tensor(self.t[r], dtype=scalar),
                                                "exp_avg": self.buffers["exp_avg"][name][r].clone(),
                                                "exp_avg_sq": self.buffers["exp_avg_sq"][name][r].clone()}
                elif state.spec.train.momentum != 0:  # torch keeps no state without momentum
                    state.optimizer.state[p] = {"momentum_buffer": self.buffers["momentum_buffer"][name][r].clone()}
