"""Profile one DP-SGD step of the default model with torch.profiler (where does DP time go?).

    python benchmarks/profile_dp_step.py [--threads 1] [--batch-size 128]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import profile

from privfer.models.registry import build_model
from privfer.train.data import to_input
from privfer.train.dp import DPStepper
from privfer.train.objective import Objective


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="fusion")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    b = a.batch_size
    x = torch.randint(0, 256, (b, 48, 48), dtype=torch.uint8)
    obj = Objective(torch.randint(0, 7, (b,)))
    net = build_model(a.model, 7)
    stepper = DPStepper(net, torch.optim.SGD(net.parameters(), 0.1), 1.0, 1.0, b, physical_batch_size=b)
    idx = torch.arange(b)
    for _ in range(2):  # warm-up
        stepper.step(obj, idx, lambda rows: to_input(x[rows]))
    with profile() as prof:
        for _ in range(3):
            stepper.step(obj, idx, lambda rows: to_input(x[rows]))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
