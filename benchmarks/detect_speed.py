"""Time the built-in face detectors on a 640x480 frame and print JSON (median ms per frame).

    .venv/bin/python benchmarks/detect_speed.py [--runs 30] [--backends]

The frame is skimage's astronaut photo (one face, ~90 px wide) letterboxed to 640x480. Each case
builds its detector once, warms it up, then times ``detect()`` alone, interleaving the cases round
by round so a change in machine load hits them all alike. ``--backends`` also times CenterFace's
network alone through onnxruntime and through cv2.dnn (the backend choice).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np
from skimage import data

from privfer.faces.detect import centerface_model_file, make_detector

CASES = {
    "centerface": ("centerface", {}),  # default min_face_size=20: the network sees 640x480
    "centerface_min_face_48": ("centerface", {"min_face_size": 48}),  # sees 320x240
    "centerface_1_thread": ("centerface", {"threads": 1}),
    "centerface_min_face_48_1_thread": ("centerface", {"min_face_size": 48, "threads": 1}),
    "haar": ("haar", {}),
    "haar_min_face_48": ("haar", {"min_face_size": 48}),
}


def frame() -> np.ndarray:
    img = np.zeros((480, 640, 3), np.uint8)
    img[:, 80:560] = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (480, 480), interpolation=cv2.INTER_AREA)
    return img


def backend_calls() -> dict:
    """CenterFace's network alone at 640x480 and 320x256: onnxruntime (2 threads) vs cv2.dnn."""
    det = make_detector("centerface", threads=2)
    net = cv2.dnn.readNetFromONNX(str(centerface_model_file()))
    calls = {}
    for w, h in ((640, 480), (320, 256)):
        blob = np.random.default_rng(0).uniform(0, 255, (1, 3, h, w)).astype(np.float32)
        calls[f"onnxruntime_{w}x{h}"] = lambda b=blob: det._session.run(None, {det._input: b})
        calls[f"cv2dnn_{w}x{h}_cv2_threads_{cv2.getNumThreads()}"] = lambda b=blob: (net.setInput(b), net.forward())
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--backends", action="store_true", help="also time CenterFace's network on onnxruntime vs cv2.dnn")
    args = ap.parse_args()

    img = frame()
    calls = {}
    faces = {}
    for name, (spec, opts) in CASES.items():
        det = make_detector(spec, **opts)
        faces[name] = len(det.detect(img))
        calls[name] = lambda d=det: d.detect(img)
    if args.backends:
        calls.update(backend_calls())
    for f in calls.values():
        f()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in calls}
    load_before = os.getloadavg()[0]
    for _ in range(args.runs):
        for name, f in calls.items():
            t = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t) * 1000)
    print(json.dumps({
        "frame": "640x480 BGR",
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "median_ms": {k: round(float(np.median(v)), 1) for k, v in times.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 1) for k, v in times.items()},
        "faces_found": faces,
    }, indent=2))


if __name__ == "__main__":
    main()
