"""Out-of-sample effect of the class offsets (``class_bias``) that training fits on the validation split.

Training fits per-class logit offsets on the validation split (see ``privfer.eval.calibrate.fit_class_bias``),
so validation numbers measured after them are optimistic. This script estimates them honestly by
two-fold cross-fitting on the validation split: offsets fit on one half (with the same objective as the
model card's, ``mixed`` if it has none, or ``--objective``; ``off`` starts from no offsets, so that only the
recall floors move any) are measured on the other half, and vice versa. It prints accuracy,
balanced accuracy and per-class recall without offsets, with the card's offsets (fit on all of it), and
cross-fitted. It then does the same for the probabilities: the temperature is refit on each half and the
top-label ECE, the negative score's ECE and the Brier score are measured on the other half, beside the raw
model's (temperature 1, no offsets) and the card's probabilities fit on all of it (what ``privfer evaluate``
reports on the calibration split).

With recall floors (the card's ``class_bias_min_recall``, or ``--min-recall CLASS=R[,...]``; ``none`` for none), the
cross-fitted offsets meet them on the half they are fit on, and the other half shows how far they hold out of sample.

Usage: python benchmarks/class_bias_crossfit.py MODEL SPEC [--objective off|mixed|balanced] [--min-recall disgust=0.35,fear=0.35]
       (e.g. runs/fer2013-dp8 fer2013:../shared/data/fer2013@val)
"""
from __future__ import annotations

import argparse

import numpy as np

from privfer.data.cache import load_faces
from privfer.eval import metrics as M
from privfer.eval.calibrate import BIAS_OBJECTIVES, fit_class_bias, fit_temperature, parse_min_recall, raise_to_recall
from privfer.models.io import load_model, softmax
from privfer.taxonomy import negative_mask


def scores(pred: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """Accuracy, balanced accuracy and per-class recall (privfer's metrics)."""
    cm = M.confusion_matrix(y, pred, k)
    return M.accuracy(cm), M.balanced_accuracy(cm), M.per_class(cm)["recall"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("spec")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random halving")
    ap.add_argument("--objective", choices=["off", *sorted(BIAS_OBJECTIVES)],
                    help="objective of the cross-fitted offsets (default: the card's, else mixed; off: none, only the "
                         "recall floors raise offsets from 0)")
    ap.add_argument("--min-recall", metavar="CLASS=R[,CLASS=R]",
                    help="recall floors of the cross-fitted offsets (default: the card's; none for none)")
    a = ap.parse_args()
    lm = load_model(a.model)
    fs = load_faces(a.spec, size=lm.input_size)
    y, k = fs.labels, len(lm.classes)
    raw = lm.logits(fs.pixels)
    z = raw / lm.temperature
    objective = a.objective or lm.card.get("class_bias_objective") or "mixed"
    floors = lm.card.get("class_bias_min_recall") if a.min_recall is None else \
        ({} if a.min_recall.lower() == "none" else parse_min_recall(a.min_recall))
    floors = {lm.classes.index(c): r for c, r in (floors or {}).items()}
    halves = np.array_split(np.random.default_rng(a.seed).permutation(len(y)), 2)
    crossfit = np.empty(len(y), np.int64)
    for fit_on, measure_on in ((0, 1), (1, 0)):
        f, m = halves[fit_on], halves[measure_on]
        b = np.zeros(k) if objective == "off" else fit_class_bias(z[f], y[f], objective)
        if floors:
            b = raise_to_recall(z[f], y[f], b, floors)
        crossfit[m] = (z[m] + b).argmax(1)
    floors_named = "".join(f", {lm.classes[c]} >= {r:g}" for c, r in floors.items())
    rows = [("no offsets", z.argmax(1)), ("card's offsets (fit on all)", (z + lm.class_bias).argmax(1)),
            (f"cross-fitted ({objective}{floors_named})", crossfit)]
    print(f"{a.model} on {a.spec} (n={len(y)}); recall per class: {', '.join(lm.classes)}")
    for name, pred in rows:
        acc, bal, rec = scores(pred, y, k)
        print(f"{name:<30} accuracy {acc:.1%}  balanced {bal:.1%}  recall " + " ".join(f"{r:.2f}" for r in rec))

    refit = np.empty((len(y), k))
    for fit_on, measure_on in ((0, 1), (1, 0)):
        f, m = halves[fit_on], halves[measure_on]
        refit[m] = softmax(raw[m], fit_temperature(raw[f], y[f]))
    is_neg = np.array(negative_mask(lm.classes))[y]
    print(f"calibrated probabilities (card's calibration version {lm.calibration_version}; {M.CALIBRATION_BINS} bins):")
    for name, probs in (("temperature 1, no offsets", softmax(raw)), ("card's (fit on all)", lm.calibrated(raw)[0]),
                        ("cross-fitted temperature", refit)):
        print(f"{name:<30} ECE {M.top_label_ece(probs, y):.3f}  negative-score ECE "
              f"{M.calibration_error(lm.negative_score(probs), is_neg):.3f}  Brier {M.brier_score(probs, y):.4f}")


if __name__ == "__main__":
    main()
