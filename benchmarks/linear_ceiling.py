"""How well a linear head can do on the scattering features without DP: the ceiling of the DP linear models.

Fits a multinomial logistic regression (L2 weight decay, L-BFGS, no privacy, no augmentation) on the
features of the deduplicated FER2013 train split, after the same per-image GroupNorm as the
``scatter-linear`` head, and prints its accuracy on the validation split, for each scattering variant
named. The train features come from (and go to) privfer's feature cache.

Usage: python benchmarks/linear_ceiling.py [VARIANT ...]   (default: full fast; about 2-3 minutes each)
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from privfer.data.cache import load_faces
from privfer.models.scatter import ScatterLinear
from privfer.train.features import cached, compute

TRAIN, VAL = "fer2013:../shared/data/fer2013@train", "fer2013:../shared/data/fer2013@val"
WEIGHT_DECAY, ITERATIONS = 1e-3, 60


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-regularised multinomial logistic regression (full-batch L-BFGS)."""
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=ITERATIONS, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ w + b, y) + WEIGHT_DECAY * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main(variants: list[str]) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    train, val = load_faces(TRAIN).unique(), load_faces(VAL)
    print(f"train {len(train)} distinct images, validation {len(val)}; weight decay {WEIGHT_DECAY}, "
          f"{ITERATIONS} L-BFGS iterations")
    for variant in variants:
        t = time.perf_counter()
        net = ScatterLinear(len(train.classes), scattering=variant)
        fe, norm = net.frontend, net.head[0]  # the model's front-end and its head's non-affine GroupNorm
        with torch.no_grad():
            xtr = norm(torch.from_numpy(np.array(cached(fe, train.pixels, train.hashes))).float()).flatten(1)
            xva = norm(torch.from_numpy(compute(fe, val.pixels)).float()).flatten(1)
        ytr, yva = torch.from_numpy(train.labels), torch.from_numpy(val.labels)
        w, b = fit_logistic(xtr, ytr, len(train.classes))
        acc_tr = float(((xtr @ w + b).argmax(1) == ytr).float().mean())
        acc_va = float(((xva @ w + b).argmax(1) == yva).float().mean())
        print(f"{variant:5s} train {acc_tr:.1%}  validation {acc_va:.1%}  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["full", "fast"])
