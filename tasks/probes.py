"""Implicit-regularization probes on a fixed probe batch (DESIGN.md, "Implicit-regularization
probes"), measured every `probe_every` epochs by the training loop.

Every probe runs on a float64 copy of the model in eval mode (no dropout; BatchNorm uses its
running statistics), through `torch.func` on that copy: the trained model, its gradients, its
train/eval flag and torch's global CPU and CUDA RNG states are left exactly as they were. In eval
mode the probe points do not interact, so per-point quantities are well defined.

"Parameters" are `model.parameters()`, the tensors the optimizer trains (for `ioc_mlp` those are
the free parameters under its positive reparametrization). "Inputs" are the normalized images the
model sees. Float64 costs about twice float32 on CPU (see bench/probes.py); it is what lets the
functional dimension be read from the Gram matrix (see `functional_dim`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

PROBE_SIZE = 64  # probe points per run, drawn once (seeded) from its training set
PROBE_COLUMNS = ("act_sparsity", "act_sparsity_layers", "jacobian_norm", "grad_sqnorm", "functional_dim",
                 "functional_dim_tol", "param_norm")
PROBE_DTYPE = torch.float64  # the probes' copy of the model and its inputs
JACOBIAN_BYTES = 1 << 30  # bytes of parameter Jacobian per block, and per pass; memory only, not results
POINT_CHUNK = 8  # probe points per vectorized (vmap) pass; bounds activation memory, not results


def measure_probes(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Every probe on one batch: `inputs` (P, C, H, W) as the model sees them (normalized), `labels`
    (P,) the labels the run trains on. Returns the PROBE_COLUMNS as plain Python values."""
    with _untouched(inputs.device):
        probe = _Probe.of(model)
        x = inputs.to(PROBE_DTYPE)
        layers = probe.sparsity_layers(x)
        dim, tol = probe.functional_dim(x)
        return {
            "act_sparsity": _overall(layers),
            "act_sparsity_layers": None if layers is None else json.dumps([z / n for z, n in layers]),
            "jacobian_norm": probe.jacobian_norm(x),
            "grad_sqnorm": probe.grad_sqnorm(x, labels),
            "functional_dim": float(dim),
            "functional_dim_tol": tol,
            "param_norm": param_norm(model),
        }


# ---- one probe at a time (each on its own float64 eval copy) -----------------------------------


def act_sparsity(model: nn.Module, inputs: torch.Tensor) -> tuple[float, list[float]] | None:
    """Fraction of ReLU outputs exactly zero: over every unit of every nn.ReLU module on the batch,
    and per module in the order they run. Only nn.ReLU modules count (an ELU's output is never
    exactly zero), so a model with none (ioc_mlp) gives None."""
    with _untouched(inputs.device):
        layers = _Probe.of(model).sparsity_layers(inputs.to(PROBE_DTYPE))
    return None if layers is None else (_overall(layers), [z / n for z, n in layers])


def jacobian_norm(model: nn.Module, inputs: torch.Tensor) -> float:
    """Mean over points of the Frobenius norm of d logits / d input (K x C*H*W per point)."""
    with _untouched(inputs.device):
        return _Probe.of(model).jacobian_norm(inputs.to(PROBE_DTYPE))


def grad_sqnorm(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over points of ||d f_y(x) / d params||^2, f_y the logit of the point's label y."""
    with _untouched(inputs.device):
        return _Probe.of(model).grad_sqnorm(inputs.to(PROBE_DTYPE), labels)


def functional_dim(model: nn.Module, inputs: torch.Tensor) -> tuple[int, float]:
    """Batch functional dimension and the singular-value threshold used; see `_Probe.functional_dim`."""
    with _untouched(inputs.device):
        return _Probe.of(model).functional_dim(inputs.to(PROBE_DTYPE))


def param_norm(model: nn.Module) -> float:
    """L2 norm of all parameters together, accumulated in float64."""
    with torch.no_grad():
        return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))


# ---- the machinery -----------------------------------------------------------------------------


@contextmanager
def _untouched(device: torch.device) -> Iterator[None]:
    """Restore torch's global CPU (and this CUDA device's) RNG state afterwards, whatever runs."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def _overall(layers: list[tuple[int, int]] | None) -> float | None:
    if layers is None:
        return None
    return sum(z for z, _ in layers) / sum(n for _, n in layers)


@dataclass
class _Probe:
    """A float64 eval-mode copy of a model, seen as a function of (parameters, one input)."""

    module: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: nn.Module) -> _Probe:
        module = copy.deepcopy(model).to(PROBE_DTYPE).eval()
        for p in module.parameters():
            p.grad = None
            p.requires_grad_(False)
        return cls(module, dict(module.named_parameters()), dict(module.named_buffers()))

    def _logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (K,) of one point x (C, H, W)."""
        return functional_call(self.module, (params, self.buffers), (x.unsqueeze(0),)).squeeze(0)

    def sparsity_layers(self, x: torch.Tensor) -> list[tuple[int, int]] | None:
        """(outputs at zero, outputs) per nn.ReLU module, in the order the forward pass runs them."""
        seen: dict[int, tuple[int, int]] = {}

        def hook(module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
            seen[id(module)] = (int((out == 0).sum()), out.numel())

        handles = [m.register_forward_hook(hook) for m in self.module.modules() if isinstance(m, nn.ReLU)]
        try:
            with torch.no_grad():
                self.module(x)
        finally:
            for h in handles:
                h.remove()
        return list(seen.values()) or None  # dicts keep insertion (= call) order

    def jacobian_norm(self, x: torch.Tensor) -> float:
        def logits_of_input(xi: torch.Tensor) -> torch.Tensor:
            return self._logits(self.params, xi)

        norms = [vmap(jacrev(logits_of_input))(chunk).flatten(1).norm(dim=1) for chunk in x.split(POINT_CHUNK)]
        return float(torch.cat(norms).mean())

    def grad_sqnorm(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        num_classes = self._logits(self.params, x[0]).numel()
        pick = F.one_hot(labels.to(x.device).long(), num_classes).to(x.dtype)

        def label_logit(params: dict[str, torch.Tensor], xi: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
            return (self._logits(params, xi) * onehot).sum()

        chunk = _clamp(JACOBIAN_BYTES // (self._n_params() * x.element_size()), POINT_CHUNK)
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        per_point = vmap(grad(label_logit), in_dims=(None, 0, 0))
        for xs, ps in zip(x.split(chunk), pick.split(chunk)):
            grads = per_point(self.params, xs, ps)
            total += sum(g.pow(2).sum() for g in grads.values())
        return float(total)

    def functional_dim(self, x: torch.Tensor) -> tuple[int, float]:
        """Rank of J, the (P*K) x (#params) Jacobian of every logit of every point with respect to
        all parameters (Bona-Pellissier et al.'s batch functional dimension), read from the
        eigenvalues of the Gram matrix G = J J^T, (P*K)^2; returns (rank, tol).

        Rule: numpy's matrix_rank rule (S.max() * max(M, N) * eps) applied to G's eigenvalues with
        J's dimensions: an eigenvalue counts when above lambda_max * max(rows, cols) * eps(float64),
        i.e. a singular value of J counts when above
            tol = sigma_max * sqrt(max(rows, cols) * eps(float64)),
        and `tol` is what is returned. J's dimensions, not G's, because the rounding error of
        forming G grows with its inner dimension (cols = #params). Forming G squares J's condition
        number, so G resolves singular values only down to about sqrt(eps) * sigma_max (measured:
        2.5e-8 * sigma_max for an mlp1x512 on 28x28x3 with 500 dead units, where tol is
        1.6e-5 * sigma_max and the smallest kept singular value 1.2e-2 * sigma_max); numpy's rule
        on J itself would sit below that noise. In float32 the floor would be near 3e-4 * sigma_max,
        hence float64.

        Memory: J is never held whole. G is accumulated over groups of parameter columns, output
        layers first, at most JACOBIAN_BYTES of J at a time. Each point's forward graph is built
        once and kept (for resnet18 on 28x28 in float64, ~13 MB a point); each group backpropagates
        through it only as deep as the group's earliest parameter. Cost is dominated by forming G:
        rows^2 * cols multiply-adds."""
        K = self._logits(self.params, x[0]).numel()
        rows = len(x) * K
        gram = torch.zeros(rows, rows, dtype=x.dtype, device=x.device)
        try:
            for p in self.params.values():
                p.requires_grad_(True)
            with torch.enable_grad():  # one graph per point, kept: a group's backward reuses it
                outputs = [self.module(x[i : i + 1]).squeeze(0) for i in range(len(x))]
            self._accumulate_gram(gram, outputs, K)
            del outputs
        finally:
            for p in self.params.values():
                p.requires_grad_(False)
        eig = _eigenvalues(gram)
        top = float(eig.max())
        if not top > 0:
            return 0, 0.0
        cutoff = top * max(rows, self._n_params()) * torch.finfo(x.dtype).eps
        return int((eig > cutoff).sum()), math.sqrt(cutoff)

    def _accumulate_gram(self, gram: torch.Tensor, outputs: list[torch.Tensor], K: int) -> None:
        """gram += J J^T over column groups; rows i*K .. i*K+K-1 are point i's K logits."""
        rows, like = len(gram), dict(dtype=gram.dtype, device=gram.device)
        cotangents = torch.eye(K, **like)  # all K logits of a point in one batched backward pass
        for group in _column_groups(self.params, _clamp(JACOBIAN_BYTES // (rows * gram.element_size()))):
            names = list(dict.fromkeys(name for name, _, _ in group))
            block = torch.empty(rows, sum(hi - lo for _, lo, hi in group), **like)
            for i, out in enumerate(outputs):
                grads = torch.autograd.grad(
                    out, [self.params[n] for n in names], cotangents, retain_graph=True,
                    is_grads_batched=True, allow_unused=True, materialize_grads=True,
                )
                flat = {n: g.reshape(K, -1) for n, g in zip(names, grads)}
                col = 0
                for name, lo, hi in group:
                    block[i * K : (i + 1) * K, col : col + hi - lo] = flat[name][:, lo:hi]
                    col += hi - lo
            _add_gram(gram, block)
            del block

    def _n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())


def _eigenvalues(gram: torch.Tensor) -> np.ndarray | torch.Tensor:
    """Eigenvalues of a symmetric matrix. On CPU through numpy: torch's CPU eigvalsh took 9 s
    instead of 0.1 s for 640 x 640 on a 2-core machine with another process busy (threads
    spinning); numpy's took 0.2 s."""
    if gram.device.type == "cpu":
        return np.linalg.eigvalsh(gram.numpy())
    return torch.linalg.eigvalsh(gram)


def _clamp(n: int, most: int | None = None) -> int:
    return max(1, n if most is None else min(n, most))


def _add_gram(gram: torch.Tensor, block: torch.Tensor, pieces: int = 4) -> None:
    """gram += block @ block.T, computing only the tiles on and above the diagonal (~5/8 the work)."""
    spans = [(s.start, s.stop) for s in _spans(len(block), pieces)]
    for i, (a0, a1) in enumerate(spans):
        for b0, b1 in spans[i:]:
            tile = block[a0:a1] @ block[b0:b1].T
            gram[a0:a1, b0:b1] += tile
            if b0 != a0:
                gram[b0:b1, a0:a1] += tile.T


def _spans(n: int, pieces: int) -> list[slice]:
    step = -(-n // pieces)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _column_groups(params: dict[str, torch.Tensor], width: int) -> list[list[tuple[str, int, int]]]:
    """Split the flattened parameters, last registered (nearest the output) first, into groups of
    at most `width` columns: each a list of (name, start, stop) slices of flattened tensors."""
    groups: list[list[tuple[str, int, int]]] = [[]]
    room = width
    for name, p in reversed(params.items()):
        start = 0
        while start < p.numel():
            if room == 0:
                groups.append([])
                room = width
            stop = min(p.numel(), start + room)
            groups[-1].append((name, start, stop))
            room -= stop - start
            start = stop
    return [g for g in groups if g]
