"""The optimizers, written once for both loops: SGD (momentum, L2 weight decay) and Adam (L2
weight decay), in torch.optim's math, over a dict of tensors whose hyperparameters are tensors
broadcast against them. One run alone holds () hyperparameters; a stacked pack (tasks/stacked.py)
holds (R, 1, ..., 1) ones over parameters with a leading run axis, so each run keeps its own lr,
momentum and weight decay while one step updates them all.

SGD:  d = g + wd*p;  buf = m*buf + d (buf = d on the first step);  p -= lr*buf (m=0: lr*d).
Adam: g += wd*p;  m1 = lerp(m1, g, 1-b1);  m2 = b2*m2 + (1-b2)*g*g;
      p -= lr/(1-b1^t) * m1 / (sqrt(m2)/sqrt(1-b2^t) + eps).
A buffer starts at zeros, which gives torch's first step exactly (tests/tasks/test_optim.py
checks both against torch.optim). The state is tensors only, so checkpoints hold no objects."""

from __future__ import annotations

from collections.abc import Sequence

import torch

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8  # torch.optim.Adam's defaults
BUFFERS = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq")}


class Optimizer:
    """One optimizer over `params` (name -> tensor, updated in place). `lr`, `momentum` (beta1
    for Adam) and `weight_decay` are floats (one run) or (R,) sequences (a stack of R runs)."""

    def __init__(self, kind: str, params: dict[str, torch.Tensor], lr: float | Sequence[float],
                 momentum: float | Sequence[float], weight_decay: float | Sequence[float]) -> None:
        self.kind, self.params = kind, params
        first = next(iter(params.values()))
        self.stacked = not isinstance(lr, (int, float))
        self.runs = len(lr) if self.stacked else None
        like = dict(dtype=first.dtype, device=first.device)
        self.momentum = torch.tensor(momentum, **like)
        self.beta1 = torch.tensor(momentum, dtype=torch.float64, device=first.device)  # Adam's bias correction
        self.weight_decay = torch.tensor(weight_decay, **like)
        self.decay = bool((self.weight_decay != 0).any())  # torch adds wd*p only where wd != 0
        self.buffers = {key: {name: torch.zeros_like(p) for name, p in params.items()} for key in BUFFERS[kind]}
        shape = (self.runs,) if self.stacked else ()
        self.steps = torch.zeros(shape, dtype=torch.float64, device=first.device)  # Adam's t, per run
        self.set_lr(lr)

    def set_lr(self, lr: float | Sequence[float]) -> None:
        """The learning rate(s) of the coming steps; float64 as torch computes Adam's step size."""
        self.lr = torch.tensor(lr, dtype=torch.float64, device=self.steps.device)

    def _view(self, value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return value.view((-1,) + (1,) * (p.dim() - 1)) if self.stacked else value

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor]) -> None:
        dtype = next(iter(self.params.values())).dtype
        if self.kind == "adam":
            self.steps += 1
            step_size = (self.lr / (1 - self.beta1 ** self.steps)).to(dtype)
            bias2_sqrt = (1 - ADAM_BETA2 ** self.steps).sqrt().to(dtype)
        else:
            lr = self.lr.to(dtype)
        for name, p in self.params.items():
            g = grads[name]
            d = g + self._view(self.weight_decay, p) * p if self.decay else g
            if self.kind == "adam":
                m1, m2 = self.buffers["exp_avg"][name], self.buffers["exp_avg_sq"][name]
                m1.lerp_(d, self._view(1 - self.momentum, p))
                m2.mul_(ADAM_BETA2).addcmul_(d, d, value=1 - ADAM_BETA2)
                denom = (m2.sqrt() / self._view(bias2_sqrt, p)).add_(ADAM_EPS)
                p.sub_(self._view(step_size, p) * m1 / denom)
            else:
                buf = self.buffers["momentum_buffer"][name]
                buf.mul_(self._view(self.momentum, p)).add_(d)
                p.sub_(self._view(lr, p) * buf)

    # -- one run's state, for checkpoints and for stacking ----------------------------------------

    def state_dict(self) -> dict:
        return {"kind": self.kind, "steps": self.steps.clone(),
                "buffers": {key: {n: b.clone() for n, b in bufs.items()} for key, bufs in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind or state["buffers"].keys() != self.buffers.keys():
            raise ValueError(f"optimizer state is for {state.get('kind')!r}, not {self.kind!r}")
        self.steps.copy_(state["steps"])
        for key, bufs in self.buffers.items():
            for name, buf in bufs.items():
                buf.copy_(state["buffers"][key][name])

    @torch.no_grad()
    def stack_from(self, optimizers: Sequence[Optimizer]) -> None:
        """Take over each run's own state (this optimizer's params are stacked, run r at [r])."""
        for r, own in enumerate(optimizers):
            self.steps[r] = own.steps
            for key, bufs in self.buffers.items():
                for name, buf in bufs.items():
                    buf[r].copy_(own.buffers[key][name])

    @torch.no_grad()
    def unstack_into(self, optimizers: Sequence[Optimizer]) -> None:
        """Each run's slice of the state back into its own optimizer."""
        for r, own in enumerate(optimizers):
            own.steps.copy_(self.steps[r])
            for key, bufs in self.buffers.items():
                for name, buf in bufs.items():
                    own.buffers[key][name].copy_(buf[r])
