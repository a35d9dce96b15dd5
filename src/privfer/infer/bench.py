"""Measure inference speed: face detection, batched classification, and end to end on a generated video.

``run_infer_bench`` (``privfer bench infer``) reports detection time on a 640x480 frame, classifier
throughput at batch 1 and 64, and frames per second of the whole ``predict`` path (decode, detect,
align, classify, JSON Lines) on a short 640x480 video of moving real faces (the scikit-image
astronaut) written to a temporary folder and deleted afterwards. Goals: >= 30 fps end to end with the
default detector, >= 2000 faces/s batched.
"""
from __future__ import annotations

import io
import json as jsonlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ..errors import PrivferError

FRAME_SIZE = (640, 480)
#: The astronaut's head and shoulders in ``skimage.data.astronaut()`` (x, y, w, h); the face is at (182, 58, 88, 120).
ASTRONAUT_HEAD = (130, 10, 190, 230)


def face_frames(n: int, size: tuple[int, int] = FRAME_SIZE, scales: tuple[float, ...] = (1.0, 0.6),
                seed: int = 0) -> Iterator[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """``n`` BGR frames with the astronaut's head pasted at each of ``scales``, moving across a textured
    background; yields ``(frame, rects)`` with the pasted rectangles ``(x, y, w, h)``."""
    from .sources import SAMPLES

    W, H = size
    x, y, w, h = ASTRONAUT_HEAD
    head = SAMPLES["astronaut"]()[y:y + h, x:x + w]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([(xx * 255 // W), (yy * 255 // H), np.full_like(xx, 90)], axis=2).astype(np.uint8)
    base = cv2.add(base, rng.integers(0, 40, base.shape, dtype=np.uint8))
    patches = [cv2.resize(head, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) for s in scales]
    for i in range(n):
        frame = base.copy()
        rects = []
        for k, p in enumerate(patches):
            ph, pw = p.shape[:2]
            span = max(1, W // len(patches) - pw)
            px = k * (W // len(patches)) + (i * 7 + k * 13) % span
            py = min(H - ph, 20 + k * 40 + (i * 3) % 20)
            frame[py:py + ph, px:px + pw] = p
            rects.append((px, py, pw, ph))
        yield frame, rects


def write_face_video(path: str | Path, n: int = 10, fps: float = 10.0, size: tuple[int, int] = FRAME_SIZE) -> Path:
    """Write :func:`face_frames` as a video (MJPG for .avi, mp4v otherwise)."""
    path = Path(path)
    codec = "MJPG" if path.suffix.lower() == ".avi" else "mp4v"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    if not vw.isOpened():
        raise PrivferError(f"{path}: cannot write a test video with codec {codec}")
    try:
        for frame, _ in face_frames(n, size):
            vw.write(frame)
    finally:
        vw.release()
    return path


def _time_ms(fn: Callable[[], object], budget_s: float = 2.0, min_runs: int = 3) -> float:
    """Median milliseconds per call of ``fn`` over about ``budget_s`` seconds (after one warm-up call)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def _bench_model(name: str | None = None):
    """The model ``name`` (shipped name or file), else the shipped default model if there is one, else a
    freshly built (untrained) fusion model."""
    from ..models.io import DEFAULT_SHIPPED, LoadedModel, load_model, shipped_models

    if name is not None:
        return load_model(name), name
    if DEFAULT_SHIPPED in shipped_models():
        return load_model(None), f"{DEFAULT_SHIPPED} (shipped default)"
    from ..models.registry import DEFAULT_MODEL, build_model
    from ..taxonomy import CLASSES

    card = {"model": DEFAULT_MODEL, "model_kwargs": {}, "classes": list(CLASSES), "input_size": 48,
            "temperature": 1.0, "negative_threshold": 0.5}
    return (LoadedModel(build_model(DEFAULT_MODEL, len(CLASSES)).eval(), card, name="untrained"),
            f"{DEFAULT_MODEL} (freshly built, untrained: {DEFAULT_SHIPPED} is not shipped yet)")


def _end_to_end(analyzer, video: Path) -> tuple[float, int, int]:
    """(frames per second, frames, faces) of analysing ``video`` and serialising JSON Lines."""
    from .outputs import frame_record

    sink = io.StringIO()
    n = found = 0
    t = time.perf_counter()
    for result in analyzer.stream(str(video)):
        sink.write(jsonlib.dumps(frame_record(result)) + "\n")
        n += 1
        found += len(result.faces)
    return n / (time.perf_counter() - t), n, found


#: The faster settings also reported: detect on a 320x240 copy (faces >= 48 px) every 3rd frame, track between.
FAST = {"min_face_size": 48, "detect_every": 3}


def run_infer_bench(json: bool = False, frames: int = 90, detector: str = "centerface",
                    backend: str = "onnxruntime", model: str | None = None) -> dict:
    """Run the inference benchmark and return a flat dict (``privfer bench infer`` prints it); ``json``
    also prints it here as JSON.

    ``end_to_end_fps`` uses ``predict``'s defaults; ``end_to_end_fps_fast`` adds :data:`FAST`.
    """
    from ..models.registry import count_flops
    from .analyzer import Analyzer

    model, model_desc = _bench_model(model)
    analyzer = Analyzer(model=model, detector=detector, backend=backend)
    fast = Analyzer(model=analyzer.model, detector=detector, backend=backend, **FAST)  # same model session
    frame, _ = next(face_frames(1))
    det = analyzer.detector
    detect_ms = _time_ms(lambda: det.detect(frame))
    fast_detect_ms = _time_ms(lambda: fast.detector.detect(frame))
    n_faces = len(det.detect(frame))

    s = analyzer.model.input_size
    faces = np.random.default_rng(0).integers(0, 256, (64, s, s), dtype=np.uint8)
    ms1 = _time_ms(lambda: analyzer.model.logits(faces[:1]))
    ms64 = _time_ms(lambda: analyzer.model.logits(faces, batch_size=64))

    with tempfile.TemporaryDirectory(prefix="privfer-bench-") as tmp:
        video = write_face_video(Path(tmp) / "faces.avi", n=frames, fps=30.0)
        fps, n, found = _end_to_end(analyzer, video)
        fps_fast, n_fast, found_fast = _end_to_end(fast, video)

    out = {
        "model": model_desc,
        "backend": backend,
        "detector": repr(det),
        "model_mflops_per_face": round(count_flops(model.net, s) / 1e6, 1),
        "faces_in_bench_frame": n_faces,
        "detect_ms_640x480": round(detect_ms, 2),
        "classify_faces_per_s_batch1": round(1000.0 / ms1, 1),
        "classify_faces_per_s_batch64": round(64 * 1000.0 / ms64, 1),
        "end_to_end_fps": round(fps, 2),
        "end_to_end_frames": n,
        "end_to_end_faces": found,
        "fast_settings": ", ".join(f"{k}={v}" for k, v in FAST.items()),
        "detect_ms_640x480_fast": round(fast_detect_ms, 2),
        "end_to_end_fps_fast": round(fps_fast, 2),
        "end_to_end_faces_fast": found_fast,
        "goals": "end_to_end_fps >= 30, classify_faces_per_s_batch64 >= 2000",
    }
    if json:
        print(jsonlib.dumps(out, indent=2))
    return out
