"""Is the sum of the negative classes' probabilities the best negative score a model's probabilities give?

privfer's negative score is ``LoadedModel.negative_score``: the sum of the calibrated probabilities of the negative
classes. A learnt weighting of the classes could rank faces better. This script fits one, a logistic regression of
negative-vs-rest on each face's class probabilities (``--inputs probs``) or their logarithms (``--inputs log``),
with an L2 penalty, and measures its negative AUROC out of sample by two-fold cross-fitting on the labelled split
(fit on one half, scored on the other, and vice versa), over ``--repeats`` random halvings; beside it, the AUROC of
the sum on the same faces. Only a weighting that is not monotone in the sum can change the AUROC.

Usage: python benchmarks/negative_weighting.py MODEL SPEC [--inputs probs|log] [--repeats 5] [--l2 1.0]
       (e.g. fer2013-dp8 fer2013:../shared/data/fer2013@val)
"""
from __future__ import annotations

import argparse

import numpy as np

from privfer.data.cache import load_faces
from privfer.errors import PrivferError
from privfer.eval import metrics as M
from privfer.models.io import load_model
from privfer.taxonomy import negative_mask


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> np.ndarray:
    """Weights [D + 1] (the last one the intercept, not penalised) of an L2-penalised logistic regression, by
    Newton's method."""
    xb = np.c_[x, np.ones(len(x))]
    w = np.zeros(xb.shape[1])
    penalty = l2 * np.r_[np.ones(x.shape[1]), 0.0]
    for _ in range(iters):
        p = 1 / (1 + np.exp(-xb @ w))
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty)
        w -= np.linalg.solve(hess, grad)
    return w


def crossfit_auroc(x: np.ndarray, y: np.ndarray, l2: float, seed: int) -> float:
    """Negative AUROC of the logistic weighting, each half of a random halving scored by the fit on the other."""
    halves = np.array_split(np.random.default_rng(seed).permutation(len(y)), 2)
    score = np.zeros(len(y))
    for k in range(2):
        test, fit = halves[k], halves[1 - k]
        score[test] = np.c_[x[test], np.ones(len(test))] @ fit_logistic(x[fit], y[fit], l2)
    return M.auroc(y.astype(bool), score)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run directory or shipped model name")
    ap.add_argument("spec", help="labelled data, KIND:PATH[@SPLIT]")
    ap.add_argument("--inputs", choices=("probs", "log"), default="probs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--l2", type=float, default=1.0)
    a = ap.parse_args()
    lm = load_model(a.model)
    fs = load_faces(a.spec, size=lm.input_size)
    if tuple(fs.classes) != tuple(lm.classes):
        raise SystemExit(f"negative_weighting.py: {a.spec} has classes {', '.join(fs.classes)}, "
                         f"the model {', '.join(lm.classes)}")
    probs = lm.probs(fs.pixels)
    y = np.array(negative_mask(lm.classes))[fs.labels].astype(float)
    x = probs if a.inputs == "probs" else np.log(np.clip(probs, 1e-9, 1.0))
    fitted = [crossfit_auroc(x, y, a.l2, seed) for seed in range(a.repeats)]
    print(f"{a.model} on {a.spec} (n={len(y)}, {int(y.sum())} negative)")
    print(f"  sum of the negative classes' probabilities: negative AUROC {M.auroc(y.astype(bool), lm.negative_score(probs)):.4f}")
    print(f"  logistic weighting of the {a.inputs}, cross-fitted over {a.repeats} halvings: "
          f"{np.mean(fitted):.4f} ({min(fitted):.4f}-{max(fitted):.4f})")


if __name__ == "__main__":
    try:
        main()
    except PrivferError as e:
        raise SystemExit(f"negative_weighting.py: {e}")
