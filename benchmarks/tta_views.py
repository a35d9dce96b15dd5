"""Test-time augmentation beyond the mirror image: is a model more accurate averaged over shifted or zoomed faces?

For each view named, every face of the split is shifted by whole pixels or zoomed about its centre (OpenCV,
border pixels repeated), classified by the model (whose own mirror averaging, if any, still applies), and the
accuracy of that view alone is printed, then that of the average of the calibrated probabilities over all the
views given and of the average of their logits. Decisions use the card's class offsets, as ``privfer evaluate``.
Views: ``id`` (the face as it is), ``r1`` / ``r2`` / ``l2`` / ``d2`` / ``u2`` (1 or 2 pixels right, left, down,
up), ``z108`` / ``z093`` (zoomed by 1.08 or 0.93).

Usage: python benchmarks/tta_views.py MODEL SPEC [--views id,r2,z108] [--threads N]
       (each view runs the model once over the split: about 6 minutes for fer2013-nonprivate on FER2013's 3,589
       validation faces on one thread)
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from privfer.data.cache import load_faces
from privfer.models.io import load_model

VIEWS = {"id": (0, 0, 1.0), "r1": (1, 0, 1.0), "r2": (2, 0, 1.0), "l2": (-2, 0, 1.0), "d2": (0, 2, 1.0),
         "u2": (0, -2, 1.0), "z108": (0, 0, 1.08), "z093": (0, 0, 0.93)}


def view(pixels: np.ndarray, dx: int, dy: int, zoom: float) -> np.ndarray:
    """The uint8 faces [N, S, S] shifted by (dx, dy) pixels and zoomed by ``zoom`` about their centre."""
    if (dx, dy, zoom) == (0, 0, 1.0):
        return pixels
    s = pixels.shape[1]
    m = cv2.getRotationMatrix2D((s / 2 - 0.5, s / 2 - 0.5), 0, zoom)
    m[0, 2] += dx
    m[1, 2] += dy
    return np.stack([cv2.warpAffine(p, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for p in pixels])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("spec", help="dataset spec, e.g. fer2013:../shared/data/fer2013@val")
    ap.add_argument("--views", default="id,r2", help=f"comma-separated, of {', '.join(VIEWS)}")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    names = args.views.split(",")
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        ap.error(f"unknown views {', '.join(unknown)}; known: {', '.join(VIEWS)}")
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    fs = load_faces(args.spec, size=lm.input_size)
    missing = sorted(set(fs.classes) - set(lm.classes))
    if missing:
        ap.error(f"the data's classes {', '.join(missing)} are not the model's")
    y = np.array([lm.classes.index(fs.classes[i]) for i in fs.labels])
    logits, probs = [], []
    for n in names:
        t = time.time()
        z = lm.logits(view(fs.pixels, *VIEWS[n]))
        p, labels = lm.calibrated(z)
        logits.append(z)
        probs.append(p)
        print(f"{n:5s} accuracy {(labels == y).mean():.4f}  ({time.time() - t:.0f} s)", flush=True)
    # the decision rule of LoadedModel.calibrated: offsets on top of the probabilities, unless (calibration version
    # 1) the probabilities hold them already
    bias = lm.class_bias if lm.calibration_version >= 2 else 0.0
    mean_p = np.mean(probs, axis=0)
    print(f"mean of the views' probabilities: accuracy {((np.log(mean_p + 1e-12) + bias).argmax(1) == y).mean():.4f}")
    print(f"mean of the views' logits: accuracy {(lm.calibrated(np.mean(logits, axis=0))[1] == y).mean():.4f}")


if __name__ == "__main__":
    main()
