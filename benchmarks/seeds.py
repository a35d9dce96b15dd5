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

Usage: python benchmarks/seeds.py NAME [NAME ...] [--seeds 0 1 2] [--runs-root runs] [--threads N] [--dry-run]
       (e.g. fer2013-dp8 fer2013-dp1 ferplus-dp8; 1-2 minutes of training per run with the features cached)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np

from privfer.errors import PrivferError
from privfer.train.config import TrainConfig

KEYS = ("with offsets", "without", "macro-F1", "negative AUROC", "disgust", "fear", "contempt")


def finished_runs(root: Path) -> dict[str, Path]:
    """Every finished run (a model card beside its ``config.json``) under ``root`` (``root/NAME`` or
    ``root/DIR/NAME``), keyed by its settings apart from ``out``."""
    runs = {}
    for d in sorted([*root.glob("*/config.json"), *root.glob("*/*/config.json")]):
        if (d.parent / "model_card.json").is_file():
            try:
                runs.setdefault(settings(json.loads(d.read_text())), d.parent)
            except (OSError, ValueError):
                continue
    return runs


def settings(config: dict) -> str:
    """A run's settings apart from where it was written, as a comparable key. A setting that the run's
    ``config.json`` lacks (it predates the setting) counts as its default, which is what that run trained with."""
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(TrainConfig)}
    return json.dumps({k: v for k, v in {**defaults, **config}.items() if k != "out"}, sort_keys=True)


def privfer(*args: str, stdout=subprocess.PIPE) -> str:
    """Run a privfer command as a user would; its output, or exit with its last line of error."""
    done = subprocess.run(["privfer", *args], stdout=stdout, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"privfer {' '.join(args)}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return done.stdout


def row(run: Path) -> dict:
    """The table's metrics for one run, from ``privfer evaluate`` on its card's validation split."""
    card = json.loads((run / "model_card.json").read_text())
    spec = card["val_data"]["spec"]
    e = json.loads(privfer("evaluate", str(run), "--data", spec, "--json"))
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
    ap.add_argument("--threads", type=int, help="train with this many CPU threads (privfer train --threads; a setting "
                                                "of the run, so runs trained with other threads do not count)")
    a = ap.parse_args()
    plan, done = [], finished_runs(a.runs_root)
    for name in a.names:
        for seed in a.seeds:
            out = a.runs_root / "seeds" / f"{name}-s{seed}"
            try:
                extra = {} if a.threads is None else {"threads": a.threads}
                cfg = TrainConfig.from_file(Path("configs") / f"{name}.yaml", seed=seed, out=str(out), **extra)
            except PrivferError as e:
                sys.exit(str(e))
            plan.append((name, seed, cfg, done.get(settings(cfg.to_dict()))))
    for name, seed, cfg, run in plan:
        print(f"{name} seed {seed}: {run or 'train -> ' + cfg.out}", flush=True)
    if a.dry_run:
        return
    results: dict[str, list] = {}
    for name, seed, cfg, run in plan:
        if run is None:
            args = ("train", "--config", f"configs/{name}.yaml", "--seed", str(seed), "--out", cfg.out,
                    *(() if a.threads is None else ("--threads", str(a.threads))))
            print("$ privfer", " ".join(args), flush=True)
            privfer(*args, stdout=subprocess.DEVNULL)
            run = Path(cfg.out)
            card = json.loads((run / "model_card.json").read_text())
            print(f"  trained in {card['training_time_s']:.0f} s (the card's training_time_s)", flush=True)
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
