"""``privfer predict SOURCE``: classify the expressions of the faces in images, videos, cameras or streams."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify facial expressions in an image, folder, video, camera or stream",
        description="Detect faces in SOURCE and classify their expressions. SOURCE is an image, a folder of images "
                    "(recursive), a video file, a camera index (0), an RTSP/HTTP URL, or sample:astronaut. "
                    "Writes JSON Lines to stdout unless --out is given; annotated output has every face blurred "
                    "unless --no-anonymize is given.")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--model", default=None,
                   help="run directory, .safetensors file or shipped model name (default: the shipped default)")
    p.add_argument("--detector", default="centerface", metavar="centerface|haar|yunet:FILE|ssd:FILE",
                   help="face detector (default: centerface)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="analyse every N-th video frame; an --annotate video holds only those (default 1)")
    p.add_argument("--detect-every", type=int, default=1, metavar="K",
                   help="videos: detect faces on every K-th analysed frame, follow them with optical flow in between "
                        "(faster; boxes, and so the anonymised areas, may lag fast motion; default 1: detect every frame)")
    p.add_argument("--batch-size", type=int, default=64, help="most faces per forward pass (default 64)")
    p.add_argument("--max-faces", type=int, default=None, help="keep at most this many faces per frame")
    p.add_argument("--min-face-size", type=int, default=20, help="ignore faces smaller than this, in pixels (default 20)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="onnxruntime",
                   help="run the classifier with onnxruntime (default: faster, steadier on a busy CPU) or torch")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help="jsonl: one object per image/frame; csv: one row per face (default jsonl)")
    p.add_argument("--out", default=None, metavar="FILE", help="write results here instead of stdout")
    p.add_argument("--annotate", default=None, metavar="PATH",
                   help="also write annotated output: an image (for an image), a folder (for a folder) or a video")
    anon = p.add_mutually_exclusive_group()
    anon.add_argument("--anonymize", choices=("blur", "pixelate"), default=None,
                      help="how faces are hidden in --annotate output (default blur)")
    anon.add_argument("--no-anonymize", action="store_true",
                      help="leave faces visible in --annotate output (must be asked for explicitly)")
    p.add_argument("--aggregate", type=float, default=None, metavar="SECONDS",
                   help="write only per-window counts (no boxes, no per-face rows) for windows of SECONDS")
    p.add_argument("--summary", action="store_true", help="print a short human-readable summary to stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import PrivferError
    from ..infer.analyzer import Analyzer
    from ..infer.outputs import AnnotationWriter, Summary, open_writer
    from ..infer.sources import open_source

    for name in ("every", "detect_every", "batch_size"):
        if getattr(args, name) < 1:
            raise PrivferError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.aggregate is not None and args.annotate is not None:
        raise PrivferError("--aggregate keeps only counts; --annotate would show per-face results: use one or the other")
    anonymize = None if args.no_anonymize else (args.anonymize or "blur")
    source = open_source(args.source)  # cheap checks first: a bad SOURCE fails before the model loads
    annotator = None
    summary = Summary()
    try:
        if args.annotate is not None:
            annotator = AnnotationWriter(args.annotate, source, anonymize, every=args.every)
        analyzer = Analyzer(model=args.model, detector=args.detector, backend=args.backend, every=args.every,
                            batch_size=args.batch_size, max_faces=args.max_faces, min_face_size=args.min_face_size,
                            device=args.device, detect_every=args.detect_every)
        writer = open_writer(args.out, args.format, analyzer.classes, aggregate=args.aggregate, source=source.name)
        with writer:
            if annotator is not None:
                with annotator:
                    for frame, result in analyzer.frames(source):
                        writer.write(result)
                        annotator.write(frame, result)
                        summary.add(result)
            else:
                for result in analyzer.stream(source):
                    writer.write(result)
                    summary.add(result)
    finally:
        source.close()
    skipped = len(source.skipped)
    if args.summary:
        outputs = [str(writer.path) if writer.path else "stdout"]
        if annotator is not None:
            hidden = {None: "faces visible", "blur": "faces blurred", "pixelate": "faces pixelated"}[anonymize]
            outputs.append(f"{args.annotate} ({hidden})")
        print(summary.text("image" if source.is_still else "frame", outputs, skipped), file=sys.stderr)
    elif skipped:
        print(f"privfer predict: skipped {skipped} unreadable input{'s' * (skipped != 1)}", file=sys.stderr)
    return 0
