"""The one optimizer both loops use, against torch.optim's own SGD and Adam: the same steps from
the same gradients, for one run alone and for runs stacked on a leading axis."""

from __future__ import annotations

import pytest
import torch

from rethink.tasks.optim import Optimizer


def reference_steps(kind: str, lr: float, momentum: float, wd: float, start: torch.Tensor,
                    grads: list[torch.Tensor]) -> torch.Tensor:
    p = torch.nn.Parameter(start.clone())
    if kind == "sgd":
        opt = torch.optim.SGD([p], lr=lr, momentum=momentum, weight_decay=wd)
    else:
        opt = torch.optim.Adam([p], lr=lr, betas=(momentum, 0.999), weight_decay=wd)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("momentum,wd", [(0.9, 0.0), (0.0, 5e-4), (0.5, 1e-2)])
def test_one_run_steps_as_torch_optim_does(kind, momentum, wd):
    g = torch.Generator().manual_seed(0)
    start = torch.randn(7, 5, dtype=torch.float64, generator=g)
    grads = [torch.randn(7, 5, dtype=torch.float64, generator=g) for _ in range(6)]
    params = {"w": start.clone()}
    opt = Optimizer(kind, params, 0.05, momentum, wd)
    for grad in grads:
        opt.step({"w": grad})
    torch.testing.assert_close(params["w"], reference_steps(kind, 0.05, momentum, wd, start, grads),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_stacked_runs_each_step_with_their_own_settings(kind):
    settings = [(0.05, 0.9, 0.0), (0.01, 0.5, 1e-3), (0.2, 0.0, 5e-4)]
    g = torch.Generator().manual_seed(1)
    start = torch.randn(3, 4, 2, dtype=torch.float64, generator=g)
    grads = [torch.randn(3, 4, 2, dtype=torch.float64, generator=g) for _ in range(5)]
    params = {"w": start.clone()}
    opt = Optimizer(kind, params, *map(list, zip(*settings)))
    for grad in grads:
        opt.step({"w": grad})
    for r, (lr, m, wd) in enumerate(settings):
        expected = reference_steps(kind, lr, m, wd, start[r], [grad[r] for grad in grads])
        torch.testing.assert_close(params["w"][r], expected, rtol=1e-12, atol=1e-14)


def test_stacking_and_unstacking_continue_each_runs_state():
    """Two steps alone, two stacked, one alone again == four steps alone."""
    g = torch.Generator().manual_seed(2)
    starts = [torch.randn(3, dtype=torch.float64, generator=g) for _ in range(2)]
    grads = [torch.randn(2, 3, dtype=torch.float64, generator=g) for _ in range(5)]
    own = [{"w": s.clone()} for s in starts]
    opts = [Optimizer("adam", p, 0.1, 0.9, 0.0) for p in own]
    for grad in grads[:2]:
        for r, opt in enumerate(opts):
            opt.step({"w": grad[r]})
    stacked = {"w": torch.stack([p["w"] for p in own])}
    both = Optimizer("adam", stacked, [0.1, 0.1], [0.9, 0.9], [0.0, 0.0])
    both.stack_from(opts)
    for grad in grads[2:4]:
        both.step({"w": grad})
    both.unstack_into(opts)
    for r in range(2):
        own[r]["w"].copy_(stacked["w"][r])
        opts[r].step({"w": grads[4][r]})
        expected = reference_steps("adam", 0.1, 0.9, 0.0, starts[r], [grad[r] for grad in grads])
        torch.testing.assert_close(own[r]["w"], expected, rtol=1e-12, atol=1e-14)


def test_state_is_tensors_and_refuses_another_kind():
    opt = Optimizer("sgd", {"w": torch.zeros(2)}, 0.1, 0.9, 0.0)
    state = opt.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state["buffers"]["momentum_buffer"].values())
    with pytest.raises(ValueError, match="sgd"):
        Optimizer("adam", {"w": torch.zeros(2)}, 0.1, 0.9, 0.0).load_state_dict(state)
