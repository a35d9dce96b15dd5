"""How much the results table's numbers move with the training seed: each config trained with several seeds.

A DP run's accuracy depends on its seed (the noise, the Poisson batches, the initialisation) by about as much
as many recipe changes gain, so one run per config says less than it seems. For each config named, this
script trains it once per seed (``privfer train --config configs/NAME.yaml --seed S --out runs/seeds/NAME-sS``),
evaluates every run on its card's validation split (``privfer evaluate RUN --data SPEC --json``, the standard split
as in the table) and prints, per config, each seed's row and their mean and range: accuracy with the card's class
offsets and recall floors, without offsets, macro-F1, negative AUROC and disgust / fear / contempt recall.

A run is trained only if no run directory under ``--runs-root`` already holds a finished run (a model card) of the
same settings: its ``config.json`` equal, apart from ``out``, to what the command would train (so the results
table's own runs count as their seed, and a run is never trained twice). ``--dry-run`` lists what would be
trained. The commands run through the ``privfer`` on the PATH, as a user would run them.

Usage: python benchmarks/seeds.py NAME [NAME ...] [--seeds 0 1 2] [--runs-root runs] [--dry-run]
       (e.g. fer2013-dp8 fer2013-dp1 ferplus-dp8; about 1-7 minutes per run with the features cached)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from privfer.errors import PrivferError
from privfer.train.config import TrainConfig

KEYS = ("with offsets", "without", "macro-F1", "negative AUROC", "disgust", "fear", "contempt")


def existing_run(cfg: TrainConfig, root: Path) -> Path | None:
    """A finished run under ``root`` (``root/NAME`` or ``root/DIR/NAME``) trained with ``cfg``'s settings, whatever
    its ``out``."""
    want = {k: v for k, v in cfg.to_dict().items() if k != "out"}
    for d in sorted(root.glob("**/config.json")):
        if len(d.relative_to(root).parts) > 3 or not (d.parent / "model_card.json").is_file():
            continue
        try:
            got = json.loads(d.read_text())
        except (OSError, ValueError):
            continue
        if {k: v for k, v in got.items() if k != "out"} == want:
            return d.parent
    return None


def row(run: Path) -> dict:
    """The table's metrics for one run, from ``privfer evaluate`` on its card's validation split."""
    card = json.loads((run / "model_card.json").read_text())
    spec = card["val_data"]["spec"]
    out = subprocess.run(["privfer", "evaluate", str(run), "--data", spec, "--json"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"privfer evaluate {run}: {out.stderr.strip().splitlines()[-1]}")
    e = json.loads(out.stdout)
    recall = {c: e["per_class"][c]["recall"] if c in e["per_class"] else float("nan") for c in KEYS[4:]}
    return {"with offsets": e["accuracy"], "without": e["accuracy_without_class_bias"], "macro-F1": e["macro_f1"],
            "negative AUROC": e["negative"]["auroc"], **recall}


def fmt(key: str, v: float) -> str:
    if np.isnan(v):
        return "n/a"
    return f"{v:.1%}" if key in ("with offsets", "without") else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help="config names (configs/NAME.yaml)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs-root", type=Path, default=Path("runs"), help="where finished runs are looked for")
    ap.add_argument("--dry-run", action="store_true", help="list the runs that would be trained, train nothing")
    a = ap.parse_args()
    plan = []
    for name in a.names:
        for seed in a.seeds:
            out = a.runs_root / "seeds" / f"{name}-s{seed}"
            try:
                cfg = TrainConfig.from_file(Path("configs") / f"{name}.yaml", seed=seed, out=str(out))
            except PrivferError as e:
                sys.exit(str(e))
            plan.append((name, seed, cfg, existing_run(cfg, a.runs_root)))
    for name, seed, cfg, run in plan:
        print(f"{name} seed {seed}: {run or 'train -> ' + cfg.out}", flush=True)
    if a.dry_run:
        return
    results: dict[str, list] = {}
    for name, seed, cfg, run in plan:
        if run is None:
            cmd = ["privfer", "train", "--config", f"configs/{name}.yaml", "--seed", str(seed), "--out", cfg.out]
            print("$", " ".join(cmd), flush=True)
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode:
                sys.exit(f"{' '.join(cmd)}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
            run = Path(cfg.out)
        results.setdefault(name, []).append((seed, run, row(run)))
    print("\n| config | seed | run | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 3) + "|")
    for name, rows in results.items():
        for seed, run, r in rows:
            print(f"| {name} | {seed} | `{run}` | " + " | ".join(fmt(k, r[k]) for k in KEYS) + " |")
        m = {k: np.array([r[k] for _, _, r in rows]) for k in KEYS}
        print(f"| {name} | mean (range) | | " + " | ".join(
            "n/a" if np.isnan(m[k]).all() else f"{fmt(k, m[k].mean())} ({fmt(k, m[k].min())}-{fmt(k, m[k].max())})"
            for k in KEYS) + " |", flush=True)


if __name__ == "__main__":
    main()
