"""Accuracy of an ensemble: the mean of several models' calibrated class probabilities, on one labelled split.

privfer ships single models; this script measures what averaging them would add (e.g. the scattering
reference and an end-to-end network, which see different features). Each model's probabilities are its
card's calibrated ones (``LoadedModel.calibrated``), optionally averaged with the mirror image
(``--tta flip``), and every prediction is the most probable class (class offsets, if a card has them, are
not applied). The models must share their classes. Prints accuracy, macro-F1, balanced accuracy and
negative-vs-rest AUROC for every model alone and for the ensemble.

Usage: python benchmarks/ensemble.py SPEC MODEL MODEL [...] [--tta flip]
       (e.g. fer2013:../shared/data/fer2013@val fer2013-nonprivate runs/fer2013-nonprivate-fusion)
"""
from __future__ import annotations

import argparse

import numpy as np

from privfer.data.cache import load_faces
from privfer.errors import PrivferError
from privfer.eval import metrics as M
from privfer.models.io import LoadedModel, load_model
from privfer.taxonomy import negative_mask


def scores(probs: np.ndarray, y: np.ndarray, lm: LoadedModel) -> str:
    """One line of privfer's metrics for class probabilities [N, K] over ``lm``'s classes."""
    cm = M.confusion_matrix(y, probs.argmax(1), probs.shape[1])
    auroc = M.auroc(np.array(negative_mask(lm.classes))[y], lm.negative_score(probs))
    return (f"accuracy {M.accuracy(cm):.1%}  macro-F1 {M.macro_f1(cm):.3f}  "
            f"balanced {M.balanced_accuracy(cm):.1%}  negative AUROC {auroc:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="labelled data, KIND:PATH[@SPLIT]")
    ap.add_argument("models", nargs="+", help="run directories or shipped model names")
    ap.add_argument("--tta", choices=("none", "flip"), default="none")
    a = ap.parse_args()
    if len(a.models) < 2:
        raise SystemExit("ensemble.py: give at least two models")
    models = [load_model(m) for m in a.models]
    classes = models[0].classes
    for name, lm in zip(a.models, models):
        if lm.classes != classes:
            raise SystemExit(f"ensemble.py: {name} has classes {', '.join(lm.classes)}, not {', '.join(classes)}")
    fs = load_faces(a.spec, size=models[0].input_size)
    if tuple(fs.classes) != tuple(classes):
        raise SystemExit(f"ensemble.py: {a.spec} has classes {', '.join(fs.classes)}, the models {', '.join(classes)}")
    y = fs.labels
    print(f"{a.spec} (n={len(y)}), tta {a.tta}")
    probs = []
    for name, lm in zip(a.models, models):
        pixels = fs.pixels if lm.input_size == models[0].input_size else load_faces(a.spec, size=lm.input_size).pixels
        probs.append(lm.probs(pixels, tta=a.tta == "flip"))
        print(f"{name:<40} {scores(probs[-1], y, lm)}")
    print(f"{'mean of the ' + str(len(probs)) + ' models':<40} {scores(np.mean(probs, 0), y, models[0])}")


if __name__ == "__main__":
    try:
        main()
    except PrivferError as e:
        raise SystemExit(f"ensemble.py: {e}")
