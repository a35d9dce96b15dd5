"""``privfer bench train|infer``: measured speeds on this machine (benchmarks, never timed tests)."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure training or inference speed on this machine")
    bsub = p.add_subparsers(dest="what", required=True)
    t = bsub.add_parser("train", help="non-private vs DP-SGD training images/s of the default model")
    t.add_argument("--model", default="fusion")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--aug-mult", type=int, default=1)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_train)
    i = bsub.add_parser("infer", help="detection, classification and end-to-end inference speed")
    i.add_argument("--model", help="shipped model name or model file (default: the shipped default)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_infer)


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")


def _train(args) -> int:
    from ..train.bench import run_train_bench

    _print(run_train_bench(args.model, args.batch_size, args.steps, aug_mult=args.aug_mult), args.json)
    return 0


def _infer(args) -> int:
    from ..infer.bench import run_infer_bench

    _print(run_infer_bench(model=args.model), args.json)
    return 0
