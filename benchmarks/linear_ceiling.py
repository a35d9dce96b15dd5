"""How well a linear head can do on fixed features without DP: the ceiling of the DP linear models.

Fits a multinomial logistic regression (L2 weight decay, L-BFGS, no privacy, no augmentation) on the
features of the deduplicated FER2013 train split, exactly as the linear model's head sees them, and prints
its train and validation accuracy for each front-end named: a scattering variant (``full``, ``fast``: the
``scatter-linear`` head's per-image GroupNorm and, with ``--pool K``, its K x K averaging), ``face`` (the
``face-linear`` model's CenterFace features), ``facemesh`` (the ``facemesh-linear`` model's CenterFace and
Face Mesh features), ``onet`` (MTCNN ONet's features alone), ``face-onet`` or ``facemesh-onet`` (the
``face-onet-linear`` and ``facemesh-onet-linear`` models' features), ``face-attn``, ``facemesh-attn`` or ``facemesh-attn-onet``
(the ``face-attn-linear``, ``facemesh-attn-linear`` and ``facemesh-attn-onet-linear`` models': the attention mesh's
regions appended), ``res`` (HSE FaceRes' features alone), ``facemesh-attn-res`` or ``facemesh-attn-onet-res`` (the
``facemesh-attn-res-linear`` and ``facemesh-attn-onet-res-linear`` models': FaceRes' appended). With
``--mirror-average`` the two face front-ends give the features the shipped DP models
see: averaged over the face and its mirror image (``mirror_average``) and centred on the training mean
(``center``). The train features come from (and go to) privfer's feature cache.

Usage: python benchmarks/linear_ceiling.py [FRONTEND ...] [--pool K] [--mirror-average]
       (default: full fast face facemesh, no pooling; about 2-3 minutes each, about 1 minute with --pool 2)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from privfer.data.cache import load_faces
from privfer.models.attnmesh import FaceAttentionLinear, FaceMeshAttentionLinear, FaceMeshAttentionONetLinear
from privfer.models.facefeat import FaceFeatureLinear
from privfer.models.facemesh import FaceMeshLinear
from privfer.models.faceres import FaceMeshAttentionONetResLinear, FaceMeshAttentionResLinear, FaceResFeatures
from privfer.models.onet import FaceMeshONetLinear, FaceONetLinear, ONetFeatures
from privfer.models.scatter import ScatterLinear
from privfer.train.features import cached, compute


class ONetLinear(FaceFeatureLinear):
    """A linear head on ONet's features alone (only for this probe)."""

    frontend_class = ONetFeatures


class FaceResLinear(FaceFeatureLinear):
    """A linear head on FaceRes' features alone (only for this probe)."""

    frontend_class = FaceResFeatures


FACE_MODELS = {"face": FaceFeatureLinear, "facemesh": FaceMeshLinear, "onet": ONetLinear, "face-onet": FaceONetLinear,
               "facemesh-onet": FaceMeshONetLinear, "face-attn": FaceAttentionLinear, "facemesh-attn": FaceMeshAttentionLinear,
               "facemesh-attn-onet": FaceMeshAttentionONetLinear, "res": FaceResLinear,
               "facemesh-attn-res": FaceMeshAttentionResLinear, "facemesh-attn-onet-res": FaceMeshAttentionONetResLinear}
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


def main(variants: list[str], pool: int = 1, mirror_average: bool = False) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    train, val = load_faces(TRAIN).unique(), load_faces(VAL)
    print(f"train {len(train)} distinct images, validation {len(val)}; weight decay {WEIGHT_DECAY}, "
          f"{ITERATIONS} L-BFGS iterations, pool {pool}, mirror-averaged and centred {mirror_average}")
    for variant in variants:
        t = time.perf_counter()
        k = len(train.classes)
        face = FACE_MODELS.get(variant)
        net = (face(k, mirror_average=mirror_average) if face else ScatterLinear(k, scattering=variant, pool=pool)).eval()
        # the model's front-end, and its head up to the linear layer (GroupNorm, pooling, flatten)
        fe, prep = net.frontend, net.head[:-1]
        with torch.no_grad():
            xtr = prep(torch.from_numpy(np.array(cached(fe, train.pixels, train.hashes))).float())
            xva = prep(torch.from_numpy(compute(fe, val.pixels)).float())
        if mirror_average and face:  # centred on the training features' mean, as model_kwargs center does
            mean = xtr.mean(0)
            xtr, xva = xtr - mean, xva - mean
        ytr, yva = torch.from_numpy(train.labels), torch.from_numpy(val.labels)
        w, b = fit_logistic(xtr, ytr, len(train.classes))
        acc_tr = float(((xtr @ w + b).argmax(1) == ytr).float().mean())
        acc_va = float(((xva @ w + b).argmax(1) == yva).float().mean())
        print(f"{variant:8s} {xtr.shape[1]:5d} features  train {acc_tr:.1%}  validation {acc_va:.1%}  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", default=["full", "fast", "face", "facemesh"],
                    help="front-ends: scattering variants (full, fast), face (CenterFace features), "
                         "facemesh (CenterFace and Face Mesh features), onet (ONet's), face-onet, facemesh-onet, "
                         "face-attn, facemesh-attn, facemesh-attn-onet, res, facemesh-attn-res or facemesh-attn-onet-res")
    ap.add_argument("--pool", type=int, default=1, help="average the maps over K x K cells, as scatter-linear's pool")
    ap.add_argument("--mirror-average", action="store_true",
                    help="face and facemesh: mirror-averaged features centred on their mean, as the shipped DP models")
    a = ap.parse_args()
    main(a.variants, a.pool, a.mirror_average)
