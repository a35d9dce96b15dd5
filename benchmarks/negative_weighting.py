"""Is the sum of the negative classes' probabilities the best negative score a model's probabilities give?

privfer's negative score is ``LoadedModel.negative_score``: the sum of the calibrated probabilities of the negative
classes. A learnt weighting of the classes could rank faces better. This script fits one, a logistic regression of
negative-vs-rest on each face's class probabilities (``--inputs probs``) or their logarithms (``--inputs log``),
with ``linear_ceiling.py``'s L2 penalty, and measures its negative AUROC out of sample by two-fold cross-fitting on the labelled split
(fit on one half, scored on the other, and vice versa), over ``--repeats`` random halvings; beside it, the AUROC of
the sum on the same faces. Only a weighting that is not monotone in the sum can change the AUROC.

Usage: python benchmarks/negative_weighting.py MODEL SPEC [--inputs probs|log] [--repeats 5]
       (e.g. fer2013-dp8 fer2013:../shared/data/fer2013@val)
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from linear_ceiling import fit_logistic  # the benchmarks' L2-penalised logistic regression (L-BFGS)

from privfer.data.cache import load_faces
from privfer.errors import PrivferError
from privfer.eval import metrics as M
from privfer.models.io import load_model
from privfer.taxonomy import negative_mask


def crossfit_auroc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Negative AUROC of the logistic weighting, each half of a random halving scored by the fit on the other
    (``linear_ceiling.fit_logistic`` on two classes; the score is the negative class's logit minus the other's)."""
    halves = np.array_split(np.random.default_rng(seed).permutation(len(y)), 2)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    score = np.zeros(len(y))
    for k in range(2):
        test, fit = halves[k], halves[1 - k]
        w, b = fit_logistic(xt[fit], yt[fit], 2)
        logits = xt[test] @ w + b
        score[test] = (logits[:, 1] - logits[:, 0]).numpy()
    return M.auroc(y.astype(bool), score)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run directory or shipped model name")
    ap.add_argument("spec", help="labelled data, KIND:PATH[@SPLIT]")
    ap.add_argument("--inputs", choices=("probs", "log"), default="probs")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    lm = load_model(a.model)
    fs = load_faces(a.spec, size=lm.input_size)
    if tuple(fs.classes) != tuple(lm.classes):
        raise SystemExit(f"negative_weighting.py: {a.spec} has classes {', '.join(fs.classes)}, "
                         f"the model {', '.join(lm.classes)}")
    probs = lm.probs(fs.pixels)
    y = np.array(negative_mask(lm.classes))[fs.labels].astype(np.int64)
    x = probs if a.inputs == "probs" else np.log(np.clip(probs, 1e-9, 1.0))
    fitted = [crossfit_auroc(x, y, seed) for seed in range(a.repeats)]
    print(f"{a.model} on {a.spec} (n={len(y)}, {int(y.sum())} negative)")
    print(f"  sum of the negative classes' probabilities: negative AUROC {M.auroc(y.astype(bool), lm.negative_score(probs)):.4f}")
    print(f"  logistic weighting of the {a.inputs}, cross-fitted over {a.repeats} halvings: "
          f"{np.mean(fitted):.4f} ({min(fitted):.4f}-{max(fitted):.4f})")


if __name__ == "__main__":
    try:
        main()
    except PrivferError as e:
        raise SystemExit(f"negative_weighting.py: {e}")
