"""Time each implicit-regularization probe, per call, on PROBE_SIZE points of 3x28x28 input with 10
classes (random inputs and labels: the cost does not depend on the values).

    python bench/probes.py [--models mlp1x512,alexnet_small,resnet18] [--device cpu] [--repeats 3]
                           [--probes functional_dim,...] [--dtype float64]

Prints a Markdown table: model x probe -> ms per call (median of --repeats calls after one
warm-up call; a probe whose warm-up call takes over --slow seconds is timed by that call alone).
`measure_probes` is all of them together, as the training loop calls it."""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp1x512,alexnet_small,resnet18")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probes", default="", help="comma-separated subset of the columns (default: all)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="probes' precision")
    parser.add_argument("--slow", type=float, default=5.0, help="seconds above which one call is enough")
    args = parser.parse_args()
    import torch

    from rethink.tasks import probes
    from rethink.tasks.models import build_model

    probes.PROBE_DTYPE = getattr(torch, args.dtype)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(probes.PROBE_SIZE, 3, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (probes.PROBE_SIZE,), generator=gen).to(device)
    calls = {
        "act_sparsity": lambda m: probes.act_sparsity(m, x),
        "jacobian_norm": lambda m: probes.jacobian_norm(m, x),
        "grad_sqnorm": lambda m: probes.grad_sqnorm(m, x, y),
        "functional_dim": lambda m: probes.functional_dim(m, x),
        "param_norm": probes.param_norm,
        "measure_probes": lambda m: probes.measure_probes(m, x, y),
    }

    if args.probes:
        calls = {name: calls[name] for name in args.probes.split(",")}

    def timed(fn, model) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{probes.PROBE_SIZE} points, dtype {probes.PROBE_DTYPE}, JACOBIAN_BYTES {probes.JACOBIAN_BYTES:,}")
    print("| model | params | " + " | ".join(calls) + " |")
    print("|---|---:|" + "---:|" * len(calls))
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, in_shape=(3, 28, 28), num_classes=10).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        cells = []
        for probe, fn in calls.items():
            first = timed(fn, model)
            again = first <= args.slow
            ms = 1000 * (statistics.median(timed(fn, model) for _ in range(args.repeats)) if again else first)
            cells.append(f"{ms:,.0f}" if ms >= 10 else f"{ms:.2f}")
            print(f"  {name} {probe}: {cells[-1]} ms", file=sys.stderr, flush=True)
        print(f"| {name} | {n_params:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
