"""Implicit-regularization probes on a fixed probe batch (placeholder until the probes land)."""

from __future__ import annotations

import torch

PROBE_SIZE = 64  # probe points per run, drawn once (seeded) from its training set
PROBE_COLUMNS = ("act_sparsity", "act_sparsity_layers", "jacobian_norm", "grad_sqnorm", "functional_dim",
                 "functional_dim_tol", "param_norm")


def measure_probes(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict:
    raise NotImplementedError
