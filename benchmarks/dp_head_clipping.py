"""DP-SGD step time of a head on fixed features: Opacus' per-example gradients (``clipping: flat``) against
ghost clipping (``clipping: ghost``), on random features, one process.

    python benchmarks/dp_head_clipping.py [--model facemesh-linear] [--hidden 128] [--batch 1024] [--steps 10]

The head is the one the model trains under DP (``net.head`` of ``build_model(MODEL, classes, center=True,
hidden=H)``; H = 0 is the linear head), fed random front-end maps of the model's shape. Each
mode runs ``--warmup`` steps, then ``--steps`` timed ones; the two modes' weights after the same steps are
compared as a check (they release the same clipped sum and the same noise).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from privfer.models.facefeat import GRID
from privfer.models.registry import MODELS, build_model
from privfer.train.dp import DPStepper
from privfer.train.objective import Objective


def head(model: str, hidden: int, classes: int) -> nn.Module:
    """The DP-trained part of ``model`` (its fixed front-end stays out of DP-SGD)."""
    torch.manual_seed(0)
    return build_model(model, classes, center=True, hidden=hidden).head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="facemesh-linear", choices=["face-linear", "facemesh-linear"])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1024, help="examples per step (one physical chunk)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.batch * 4
    channels = MODELS[args.model].frontend_class.out_channels
    x = torch.randn(n, channels, GRID, GRID, generator=g)
    obj = Objective(torch.randint(0, args.classes, (n,), generator=g))
    out, weights = {}, {}
    for mode in ("flat", "ghost"):
        net = head(args.model, args.hidden, args.classes)
        stepper = DPStepper(net, torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.9), noise_multiplier=1.0,
                            max_grad_norm=0.1, expected_batch_size=args.batch, physical_batch_size=args.batch,
                            ghost=mode == "ghost")
        torch.manual_seed(1)
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                t0 = time.perf_counter()
            rows = torch.arange(i % 4 * args.batch, (i % 4 + 1) * args.batch)
            stepper.step(obj, rows, lambda r: x[r])
        dt = (time.perf_counter() - t0) / args.steps
        out[mode] = {"s_per_step": round(dt, 4), "examples_per_s": round(args.batch / dt, 1)}
        weights[mode] = [p.detach().clone() for p in net.parameters()]
    diff = max(float((a - b).abs().max()) for a, b in zip(weights["flat"], weights["ghost"]))
    print(json.dumps({"model": args.model, "features": channels * GRID * GRID, "hidden": args.hidden, "batch": args.batch, "threads": args.threads,
                      **out, "speedup": round(out["flat"]["s_per_step"] / out["ghost"]["s_per_step"], 2),
                      "max_weight_difference": diff}, indent=1))


if __name__ == "__main__":
    main()
