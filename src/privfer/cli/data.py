"""``privfer data``: dataset commands. ``privfer data inspect SPEC [--json] [--strict]`` summarises a dataset."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets", description="Dataset commands.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    ip = dsub.add_parser(
        "inspect", help="count rows, faces per split and class, image sizes, drops and duplicates",
        description="Summarise a dataset. Builds (or reuses) the preprocessing cache.")
    ip.add_argument("spec", metavar="SPEC", help="KIND:PATH[@SPLIT], e.g. fer2013:../shared/data/fer2013; "
                                                 "without @SPLIT every split is inspected")
    ip.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ip.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")
    ip.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_dataset, render_text

    report = inspect_dataset(args.spec, strict=args.strict, progress=sys.stderr.isatty())
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0
