"""``privfer evaluate MODEL --data SPEC``: metrics of a model on one dataset split, as a summary or one JSON object."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..data.spec import SPLITS
    from ..eval.evaluate import DEFAULT_SPLIT, TTA_MODES

    p = sub.add_parser(
        "evaluate", help="accuracy, loss, macro-F1, per-class, negative-vs-rest and calibration metrics on a dataset split",
        description="Evaluate a model on every image of a dataset split, un-augmented and deterministic. Samples of "
                    "classes the model lacks are dropped (and counted); predictions are restricted to the shared classes.")
    p.add_argument("model", metavar="MODEL", help="run directory, .safetensors file (card beside it) or shipped model name")
    p.add_argument("--data", required=True, metavar="SPEC", help="KIND:PATH[@SPLIT], e.g. fer2013:../shared/data/fer2013@val")
    p.add_argument("--split", choices=SPLITS, help=f"split to evaluate (overrides @SPLIT; default {DEFAULT_SPLIT})")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--out", metavar="DIR", help="also write evaluation.json, confusion CSVs, confusion.png and reliability.png here")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation (flip: average with the mirror)")
    p.add_argument("--drop-overlap", action="store_true",
                   help="leave out images that are the model's own training data (content hash; needs that data)")
    p.add_argument("--batch-size", type=int, default=512, help="faces per forward pass (default 512)")
    p.set_defaults(func=run)


def format_summary(r: dict) -> str:
    """A readable multi-line summary of an evaluation result."""
    neg, cal = r["negative"], r["calibration"]

    def num(x, fmt=".3f"):
        return "n/a" if x is None else format(x, fmt)

    dropped = ", ".join(f"{c} {n}" for c, n in r["dropped"].items() if n)
    offsets = any(r.get("class_bias") or [])  # the card has non-zero class offsets
    lines = [
        f"model     {r['model']}" + (f"  (tta: {r['tta']})" if r["tta"] != "none" else ""),
        f"data      {r['data']}  n={r['n']}" + (f"  dropped (class not in model): {dropped}" if dropped else "")
        + (f"  left out as training data: {r['training_overlap_dropped']}" if r.get("training_overlap_dropped") else ""),
        f"accuracy  {r['accuracy']:.2%}  (majority baseline {r['majority_baseline']:.2%}: {r['majority_class']})",
        *([f"          {r['accuracy_without_class_bias']:.2%} without the card's class offsets "
           f"({', '.join(f'{c} {b:+.2f}' for c, b in zip(r['classes'], r['class_bias']))})"] if offsets else []),
        f"balanced accuracy {r['balanced_accuracy']:.2%}   macro-F1 {r['macro_f1']:.3f}",
        f"loss      {r['loss']:.4f} per example at temperature {r['temperature']:.3g}"
        + (" with the class offsets" if offsets else "")
        + f" ({r['loss_uncalibrated']:.4f} at temperature 1{', no offsets' if offsets else ''})",
        f"negative vs rest ({neg['support']} negative): AUROC {num(neg['auroc'])}  AP {num(neg['average_precision'])}"
        f"  at threshold {neg['threshold']:.3g}: precision {neg['precision']:.3f} recall {neg['recall']:.3f} F1 {neg['f1']:.3f}",
        f"calibration: ECE {num(cal['ece'])} ({num(cal['ece_uncalibrated'])} at temperature 1{', no offsets' if offsets else ''})"
        f"  Brier {cal['brier']:.4f}  negative-score ECE {num(cal['negative_ece'])}"
        + ("  (in sample: the card's calibration was fit on this data)" if cal["fit_on_this_data"] else ""),
        "",
        f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}",
    ]
    lines += [f"{c:<10} {v['precision']:>9.3f} {v['recall']:>7.3f} {v['f1']:>6.3f} {v['support']:>8d}"
              for c, v in r["per_class"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluate import evaluate, write_outputs

    result = evaluate(args.model, args.data, split=args.split, tta=args.tta, batch_size=args.batch_size,
                      drop_overlap=args.drop_overlap)
    if args.out:
        paths = write_outputs(result, args.out)
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr if args.json else sys.stdout)
    print(json.dumps(result) if args.json else format_summary(result))
    return 0
