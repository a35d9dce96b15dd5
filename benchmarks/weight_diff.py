"""How far retrained runs reproduce the shipped models: the largest absolute difference of any weight.

For each name, compares ``RUNS_ROOT/NAME/model.safetensors`` (what ``privfer train --config configs/NAME.yaml``
or ``make runs`` wrote) with the shipped ``src/privfer/weights/NAME.safetensors``, tensor by tensor, and prints
the largest absolute difference, the largest absolute shipped weight for scale, and the model card's
``selected`` line of each (the best validation accuracy that chose the checkpoint). Weights stored as int8 are
compared as the float32 tensors they load as (``privfer.models.io.widen``). Different tensor names or shapes are
reported as such, not compared.

Usage: python benchmarks/weight_diff.py NAME [NAME ...] [--runs-root runs]
       (e.g. fer2013-dp8 fer2013-public10-dp8 ferplus-dp8; reads only, seconds)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from privfer.models.io import WEIGHTS_DIR, widen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    status = 0
    for name in args.names:
        run, shipped = args.runs_root / name / "model.safetensors", WEIGHTS_DIR / f"{name}.safetensors"
        missing = [str(p) for p in (run, shipped) if not p.is_file()]
        if missing:
            print(f"{name}: missing {', '.join(missing)}", file=sys.stderr)
            status = 1
            continue
        a, b = widen(load_file(run)), widen(load_file(shipped))
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
            print(f"{name}: tensor names or shapes differ; not comparable")
            status = 1
            continue
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        scale = max(float(b[k].float().abs().max()) for k in b)
        cards = [json.loads(c.read_text()).get("selected") for c in (run.parent / "model_card.json", shipped.with_suffix(".json"))]
        print(f"{name}: max |run - shipped| {diff:.2g} (max |shipped| {scale:.3g}); "
              f"selected: run {cards[0]!r}, shipped {cards[1]!r}")
    return status


if __name__ == "__main__":
    sys.exit(main())
