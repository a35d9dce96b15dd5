"""Compare Opacus per-sample-gradient modes (hooks vs expanded weights) on the default model: DP images/s.

    python benchmarks/dp_modes.py [--threads 1] [--batch-size 128] [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
import torch.nn.functional as F
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer

from privfer.models.registry import build_model

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model", default="fusion")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x, y = torch.rand(a.batch_size, 1, 48, 48), torch.randint(0, 7, (a.batch_size,))
    out = {"model": a.model, "threads": a.threads, "batch_size": a.batch_size}
    for mode in ("hooks", "ew"):
        torch.manual_seed(0)
        net = build_model(a.model, 7)
        m = wrap_model(net, mode, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(torch.optim.SGD(net.parameters(), 0.1), noise_multiplier=1.0, max_grad_norm=1.0,
                          expected_batch_size=a.batch_size)

        def step() -> None:
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()

        step()
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        out[f"{mode}_images_per_s"] = round(a.steps * a.batch_size / (time.perf_counter() - t), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
