"""``privfer calibrate MODEL --data SPEC --out DIR``: refit a model's temperature, class offsets and negative
threshold on labelled data (e.g. a sample from the camera it will watch) and write it with its new card."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="refit a model's temperature, class offsets and negative threshold on labelled data",
        description="Refit the calibration of MODEL on every image of a labelled dataset split: the softmax temperature "
                    "(probabilities and the negative score), the per-class offsets of the decided label, and the "
                    "negative-flag threshold. Writes the model and its new card to DIR (DIR may be the model's own run "
                    "directory: then only the card changes). The data is used without privacy, so images of the "
                    "model's DP-protected training data (by content hash) are left out.")
    p.add_argument("model", metavar="MODEL", help="run directory, .safetensors file (card beside it) or shipped model name")
    p.add_argument("--data", required=True, metavar="SPEC", help="KIND:PATH[@SPLIT] with labels, e.g. folder:my-camera@val")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write model.safetensors and model_card.json to")
    p.add_argument("--class-bias", choices=("off", "mixed", "balanced"), default=None,
                   help="objective of the class offsets (default: the card's, off without one)")
    p.add_argument("--negative-recall", type=float, default=None, metavar="R",
                   help="threshold meets this negative recall on the data (default: the card's target, else max F1)")
    p.add_argument("--min-recall", default=None, metavar="CLASS=R[,CLASS=R]",
                   help="raise these classes' offsets until each one's recall on the data is at least R (default: the "
                        "card's floors; 'none' for none)")
    p.add_argument("--batch-size", type=int, default=512, help="faces per forward pass (default 512)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.calibrate import recalibrate

    card = recalibrate(args.model, args.data, args.out, class_bias=args.class_bias,
                       negative_recall=args.negative_recall, batch_size=args.batch_size,
                       min_recall={} if (args.min_recall or "").lower() == "none" else args.min_recall,
                       log=lambda m: print(m, file=sys.stderr))
    offsets = card["class_bias_objective"] or "off"
    if card.get("class_bias_min_recall"):
        offsets += " with recall floors " + ", ".join(f"{c} {r:g}" for c, r in card["class_bias_min_recall"].items())
    print(f"privfer calibrate: {args.out}: temperature {card['temperature']:.4g}, class offsets {offsets}, negative "
          f"threshold {card['negative_threshold']:.4g} (fit on {card['calibration_data']['n']} faces of {card['calibrated_on']})",
          file=sys.stderr)
    return 0
