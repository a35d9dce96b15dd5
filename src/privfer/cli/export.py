"""``privfer export MODEL --onnx FILE``: write a model as ONNX (dynamic batch axis) for other runtimes."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX",
                       description="Write MODEL (run directory, .safetensors file or shipped name) as an ONNX graph: "
                                   "input 'pixels' float32 [N, 1, S, S] in [0, 1], output 'logits' [N, classes]; "
                                   "the model card is stored in the graph metadata (privfer_card).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..infer.onnx import export_onnx
    from ..models.io import load_model

    model = load_model(args.model)
    path = export_onnx(model, args.onnx)
    print(f"privfer export: wrote {path} ({len(model.classes)} classes, input {model.input_size}x{model.input_size})",
          file=sys.stderr)
    return 0
