"""The ``privfer`` command: one verb per module in this package; errors become one line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Transparent huge pages for PyTorch's CPU allocator: measured 1.5x on Opacus' per-sample gradient
# buffers on this kind of machine (see README, Performance). Must be set before torch allocates.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from ..errors import PrivferError

VERBS = ("data", "train", "evaluate", "calibrate", "report", "audit", "predict", "export", "bench")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="privfer", description="Privacy-conscious facial expression recognition.")
    parser.add_argument("--version", action="version", version=f"privfer {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        try:
            mod = importlib.import_module(f".{verb}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{verb}":
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrivferError as e:
        print(f"privfer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("privfer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
