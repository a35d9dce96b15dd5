"""``privfer bench train``: images/s of non-private and DP-SGD training of the default model on this machine."""
from __future__ import annotations

import resource
import time

import numpy as np
import torch

from ..models.registry import DEFAULT_MODEL, build_model
from .augment import Augment
from .data import to_input
from .dp import DPStepper
from .objective import Objective


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_train_bench(model: str = DEFAULT_MODEL, batch_size: int = 256, steps: int = 10, warmup: int = 2,
                    classes: int = 7, seed: int = 0, aug_mult: int = 1, model_kwargs: dict | None = None) -> dict:
    """Time ``steps`` training steps (after ``warmup``) on random uint8 faces held in memory.

    Peak memory is the process' max RSS after each phase (non-private runs first, so the DP figure
    is the max of both).
    """
    torch.manual_seed(seed)
    n = batch_size * 4
    x = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8))
    obj = Objective(torch.randint(0, classes, (n,)))
    aug = Augment()
    rows_all = torch.arange(n)

    def batches():
        i = 0
        while True:
            yield rows_all[(i % 4) * batch_size:((i % 4) + 1) * batch_size]
            i += 1

    net = build_model(model, classes, **(model_kwargs or {}))
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    gen = batches()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        rows = next(gen)
        loss = obj(net(aug(to_input(x[rows]))), rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    nonprivate = steps * batch_size / (time.perf_counter() - t0)
    np_peak = _peak_mb()

    net = build_model(model, classes, **(model_kwargs or {}))
    stepper = DPStepper(net, torch.optim.SGD(net.parameters(), 0.5, momentum=0.9), 1.0, 1.0, batch_size,
                        physical_batch_size=batch_size * aug_mult, aug_mult=aug_mult)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        stepper.step(obj, next(gen), lambda rows: aug(to_input(x[rows]).repeat_interleave(aug_mult, 0)))
    dp = steps * batch_size / (time.perf_counter() - t0)
    return {"model": model, "batch_size": batch_size, "threads": torch.get_num_threads(), "aug_mult": aug_mult,
            "nonprivate_images_per_s": round(nonprivate, 1), "dp_images_per_s": round(dp, 1),
            "ratio": round(dp / nonprivate, 3), "nonprivate_peak_mb": round(np_peak, 1), "dp_peak_mb": round(_peak_mb(), 1)}
