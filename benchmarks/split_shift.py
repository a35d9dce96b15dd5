"""How much of a loss attack's AUC on FER2013 comes from the split, not from membership.

The FER2013 audits compare training images (members) with PublicTest images (non-members). If the two
splits differ in difficulty, a model's loss separates them even for images it never saw. This script
takes a run trained on part of FER2013 train (``privfer train ... --limit N``) and measures the loss
attack's AUC three ways, 3,000 images per side:

* members (its training images) vs PublicTest: what ``privfer audit`` measures;
* unseen train images vs PublicTest: both non-members, so the AUC is the split difference alone;
* members vs unseen train images: membership alone, same split.

Usage: python benchmarks/split_shift.py RUN [--data ../shared/data/fer2013] [--n 3000]
"""
from __future__ import annotations

import argparse

import numpy as np

from privfer.data.cache import load_faces
from privfer.eval.audit import SAMPLE_SEED, simple_scores, training_hashes
from privfer.eval.metrics import auroc, auroc_ci
from privfer.models.io import load_model


def sample(fs, keep: np.ndarray, n: int, seed: int):
    idx = np.flatnonzero(keep)
    return fs.subset(np.sort(np.random.default_rng(seed).choice(idx, min(n, len(idx)), replace=False)))


def auc(pos: np.ndarray, neg: np.ndarray) -> str:
    """AUC (with its 95% DeLong interval) of the loss attack's score (minus the loss) for telling the first
    set (positive) from the second."""
    y, s = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)], np.r_[pos, neg]
    lo, hi = auroc_ci(y, s)
    return f"{auroc(y, s):.3f} (95% CI {lo:.3f}-{hi:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", default="../shared/data/fer2013")
    ap.add_argument("--n", type=int, default=3000)
    a = ap.parse_args()
    model = load_model(a.run)
    seen = training_hashes(model.card, source=a.run)
    seen = seen["private"] | seen["public"]
    train, val = load_faces(f"fer2013:{a.data}@train"), load_faces(f"fer2013:{a.data}@val")
    in_train = np.isin(train.hashes, list(seen))
    members = sample(train, in_train, a.n, SAMPLE_SEED)
    unseen = sample(train, ~in_train, a.n, SAMPLE_SEED + 1)
    public_test = sample(val, ~np.isin(val.hashes, list(seen)), a.n, SAMPLE_SEED + 2)
    score = {k: simple_scores(model, fs, "loss") for k, fs in
            (("members", members), ("unseen", unseen), ("val", public_test))}
    print(f"run {a.run}: {int(in_train.sum())} of {len(train)} train images seen; {a.n} per side; loss attack AUC")
    print(f"  members vs PublicTest (what privfer audit measures): {auc(score['members'], score['val'])}")
    print(f"  unseen train vs PublicTest (split difference only): {auc(score['unseen'], score['val'])}")
    print(f"  members vs unseen train (membership only):          {auc(score['members'], score['unseen'])}")


if __name__ == "__main__":
    main()
