"""Out-of-sample effect of the class offsets (``class_bias``) that training fits on the validation split.

Training fits per-class logit offsets on the validation split (see ``privfer.eval.calibrate.fit_class_bias``),
so validation numbers measured after them are optimistic. This script estimates them honestly by
two-fold cross-fitting on the validation split: offsets fit on one half (with the same objective as the
model card's, ``mixed`` if it has none, or ``--objective``) are measured on the other half, and vice versa. It prints accuracy,
balanced accuracy and per-class recall without offsets, with the card's offsets (fit on all of it), and
cross-fitted.

Usage: python benchmarks/class_bias_crossfit.py MODEL SPEC [--objective mixed|balanced]   (e.g. runs/fer2013-dp8 fer2013:../shared/data/fer2013@val)
"""
from __future__ import annotations

import argparse

import numpy as np

from privfer.data.cache import load_faces
from privfer.eval import metrics as M
from privfer.eval.calibrate import BIAS_OBJECTIVES, fit_class_bias
from privfer.models.io import load_model


def scores(pred: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """Accuracy, balanced accuracy and per-class recall (privfer's metrics)."""
    cm = M.confusion_matrix(y, pred, k)
    return M.accuracy(cm), M.balanced_accuracy(cm), M.per_class(cm)["recall"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("spec")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random halving")
    ap.add_argument("--objective", choices=sorted(BIAS_OBJECTIVES),
                    help="objective of the cross-fitted offsets (default: the card's, else mixed)")
    a = ap.parse_args()
    lm = load_model(a.model)
    fs = load_faces(a.spec, size=lm.input_size)
    y, k = fs.labels, len(lm.classes)
    z = lm.logits(fs.pixels) / lm.temperature
    objective = a.objective or lm.card.get("class_bias_objective") or "mixed"
    halves = np.array_split(np.random.default_rng(a.seed).permutation(len(y)), 2)
    crossfit = np.empty(len(y), np.int64)
    for fit_on, measure_on in ((0, 1), (1, 0)):
        b = fit_class_bias(z[halves[fit_on]], y[halves[fit_on]], objective)
        crossfit[halves[measure_on]] = (z[halves[measure_on]] + b).argmax(1)
    rows = [("no offsets", z.argmax(1)), ("card's offsets (fit on all)", (z + lm.class_bias).argmax(1)),
            (f"cross-fitted ({objective})", crossfit)]
    print(f"{a.model} on {a.spec} (n={len(y)}); recall per class: {', '.join(lm.classes)}")
    for name, pred in rows:
        acc, bal, rec = scores(pred, y, k)
        print(f"{name:<30} accuracy {acc:.1%}  balanced {bal:.1%}  recall " + " ".join(f"{r:.2f}" for r in rec))


if __name__ == "__main__":
    main()
