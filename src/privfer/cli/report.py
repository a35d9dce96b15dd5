"""``privfer report RUN... --out DIR``: a Markdown report with figures for training runs (or only the results table)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="report.md with tables, training curves and confusion matrices for runs",
        description="Evaluate runs on their validation (and, where available, test) splits and write report.md with "
                    "the accuracy/loss table, privacy guarantees, per-class recall, training curves and confusion matrices.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or shipped model names)")
    p.add_argument("--out", metavar="DIR", help="output folder for report.md and its PNGs")
    p.add_argument("--table-only", action="store_true",
                   help="print only the compact results table (Markdown) for the README; with --out also write DIR/results.md")
    p.add_argument("--batch-size", type=int, default=512, help="faces per forward pass (default 512)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import PrivferError
    from ..eval.report import make_report, results_table

    if args.table_only:
        table = results_table(args.runs, batch_size=args.batch_size)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "results.md").write_text(table + "\n")
        print(table)
        return 0
    if not args.out:
        raise PrivferError("--out DIR is required (or use --table-only)")
    print(make_report(args.runs, args.out, batch_size=args.batch_size))
    return 0
