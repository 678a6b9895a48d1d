"""The optimizers, written once for both loops: SGD (momentum, L2 weight decay) and Adam (L2
weight decay), in torch.optim's math, over a dict of tensors. One run alone steps with Python
floats in torch.optim's own in-place ops; a stacked pack (tasks/stacked.py) holds (R, 1, ..., 1)
coefficient tensors over parameters with a leading run axis, so each run keeps its own lr,
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
    for Adam) and `weight_decay` are floats (one run) or (R,) sequences (a stack of R runs).
    One run steps with Python-float coefficients, in torch.optim's own in-place ops; a stack
    broadcasts (R, 1, ...) coefficient tensors through the same ops."""

    def __init__(self, kind: str, params: dict[str, torch.Tensor], lr: float | Sequence[float],
                 momentum: float | Sequence[float], weight_decay: float | Sequence[float]) -> None:
        self.kind, self.params = kind, params
        first = next(iter(params.values()))
        self.stacked = not isinstance(lr, (int, float))
        self.momentum, self.weight_decay = momentum, weight_decay
        self.decay = any(weight_decay) if self.stacked else weight_decay != 0  # torch adds wd*p only where wd != 0
        if self.stacked:
            like = dict(dtype=first.dtype, device=first.device)
            self._beta1 = torch.tensor(momentum, dtype=torch.float64, device=first.device)  # Adam's bias correction
            self._coef = {name: {"m": _per_run(momentum, p, like), "1-m": _per_run([1 - m for m in momentum], p, like),
                                 "wd": _per_run(weight_decay, p, like)} for name, p in params.items()}
        self.buffers = {key: {name: torch.zeros_like(p) for name, p in params.items()} for key in BUFFERS[kind]}
        self.steps = torch.zeros((len(lr),) if self.stacked else (), dtype=torch.float64, device=first.device)
        self.set_lr(lr)

    def set_lr(self, lr: float | Sequence[float]) -> None:
        """The learning rate(s) of the coming steps (float64, as torch computes Adam's step size)."""
        self.lr = torch.tensor(lr, dtype=torch.float64, device=self.steps.device) if self.stacked else float(lr)
        self._neg_lr: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor]) -> None:
        if self.stacked:
            self._step_stacked(grads)
            return
        lr, m, wd = self.lr, self.momentum, self.weight_decay
        if self.kind == "adam":
            self.steps += 1
            t = float(self.steps)
            step_size, bias2_sqrt = lr / (1 - m**t), (1 - ADAM_BETA2**t) ** 0.5
        for name, p in self.params.items():
            d = grads[name].add(p, alpha=wd) if self.decay else grads[name]
            if self.kind == "adam":
                m1, m2 = self.buffers["exp_avg"][name], self.buffers["exp_avg_sq"][name]
                m1.lerp_(d, 1 - m)
                m2.mul_(ADAM_BETA2).addcmul_(d, d, value=1 - ADAM_BETA2)
                p.addcdiv_(m1, (m2.sqrt() / bias2_sqrt).add_(ADAM_EPS), value=-step_size)
            else:
                buf = self.buffers["momentum_buffer"][name]
                buf.mul_(m).add_(d)
                p.add_(buf, alpha=-lr)

    def _step_stacked(self, grads: dict[str, torch.Tensor]) -> None:
        dtype = next(iter(self.params.values())).dtype
        if self.kind == "adam":
            self.steps += 1
            step_size = (-self.lr / (1 - self._beta1**self.steps)).to(dtype)
            bias2_sqrt = (1 - ADAM_BETA2**self.steps).sqrt().to(dtype)
        elif not self._neg_lr:
            self._neg_lr = {n: (-self.lr).to(dtype).view(_run_axis(p)) for n, p in self.params.items()}
        for name, p in self.params.items():
            coef = self._coef[name]
            d = torch.addcmul(grads[name], p, coef["wd"]) if self.decay else grads[name]
            if self.kind == "adam":
                m1, m2 = self.buffers["exp_avg"][name], self.buffers["exp_avg_sq"][name]
                m1.lerp_(d, coef["1-m"])
                m2.mul_(ADAM_BETA2).addcmul_(d, d, value=1 - ADAM_BETA2)
                denom = (m2.sqrt() / bias2_sqrt.view(_run_axis(p))).add_(ADAM_EPS)
                p.addcmul_(m1 / denom, step_size.view(_run_axis(p)))
            else:
                buf = self.buffers["momentum_buffer"][name]
                buf.mul_(coef["m"]).add_(d)
                p.addcmul_(buf, self._neg_lr[name])

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


def _run_axis(p: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (p.dim() - 1)


def _per_run(values: Sequence[float], p: torch.Tensor, like: dict) -> torch.Tensor:
    """(R,) coefficients shaped to broadcast against a stacked parameter (R, ...)."""
    return torch.tensor(list(values), **like).view(_run_axis(p))
