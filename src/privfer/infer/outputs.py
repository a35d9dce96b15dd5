"""Write inference results: JSON Lines, CSV, per-window aggregates, and anonymised annotated images/videos.

Every output file is written to a temporary file beside it and renamed into place only when the run
succeeds, so an error never leaves a half-written file. Nothing else is written: no crops, frames or
caches. Aggregate mode keeps only per-window counts (no boxes, no per-face rows). Annotated images
and videos have every detected face blurred (or pixelated) unless anonymisation is explicitly off.
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..errors import PrivferError
from .analyzer import FrameResult
from .sources import Frame, Source

FORMATS = ("jsonl", "csv")
ANONYMIZE = ("blur", "pixelate")
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
STILL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# ---------------------------------------------------------------- atomic files

class AtomicFile:
    """A temporary path beside ``path`` (same suffix, hidden name) that becomes ``path`` on :meth:`commit`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:  # like mkstemp, but the file gets the usual permissions (0666 less the umask)
                tmp = self.path.parent / f".{self.path.stem}.{secrets.token_hex(4)}.tmp{self.path.suffix}"
                try:
                    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                    break
                except FileExistsError:
                    continue
        except OSError as e:
            raise PrivferError(f"{self.path}: cannot write here ({e.strerror or e})") from None
        self.tmp = tmp

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success, delete it on error."""
    f = AtomicFile(path)
    try:
        yield f.tmp
        f.commit()
    finally:
        f.discard()


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure to ``path`` atomically, in the format its suffix names (PNG without one)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


class _TextSink:
    """A text destination: stdout (``out`` None or ``-``), or a file that appears only on :meth:`commit`."""

    def __init__(self, out: str | os.PathLike | None) -> None:
        self.path = None if out is None or str(out) == "-" else Path(out)
        self._file: AtomicFile | None = None
        if self.path is None:
            self.fh = sys.stdout
            return
        if self.path.is_dir():
            raise PrivferError(f"{self.path}: is a folder, expected an output file name")
        self._file = AtomicFile(self.path)
        self.fh = open(self._file.tmp, "w", newline="", encoding="utf-8")

    def commit(self) -> None:
        self.fh.flush()
        if self._file is not None:
            self.fh.close()
            self._file.commit()
            self._file = None

    def abort(self) -> None:
        if self._file is not None:
            self.fh.close()
            self._file.discard()
            self._file = None


# ---------------------------------------------------------------- records

def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(float(x), nd)


def frame_record(result: FrameResult) -> dict:
    """The JSON Lines object for one analysed image or frame."""
    return {
        "source": result.source, "frame": result.frame, "time_s": _r(result.time_s, 4),
        "faces": [{
            "box": list(f.box), "score": _r(f.score, 4),
            "landmarks": None if f.landmarks is None else [[_r(x, 2), _r(y, 2)] for x, y in f.landmarks],
            "probs": {c: _r(p, 6) for c, p in f.probs.items()}, "label": f.label,
            "negative": {"score": _r(f.negative_score, 6), "flag": f.negative_flag},
        } for f in result.faces],
    }


def csv_columns(classes: tuple[str, ...]) -> list[str]:
    """CSV header: one row per face, the JSON Lines fields flattened."""
    lm = [f"{n}_{a}" for n in LANDMARK_NAMES for a in "xy"]
    return (["source", "frame", "time_s", "face", "x", "y", "w", "h", "score", *lm,
             *[f"p_{c}" for c in classes], "label", "negative_score", "negative_flag"])


def face_rows(result: FrameResult) -> list[list]:
    """CSV rows (see :func:`csv_columns`) for the faces of one frame; none when it has no face."""
    t = "" if result.time_s is None else _r(result.time_s, 4)
    rows = []
    for i, f in enumerate(result.faces):
        lm = [""] * 10 if f.landmarks is None else [_r(v, 2) for pt in f.landmarks for v in pt]
        rows.append([result.source, result.frame, t, i, *f.box, _r(f.score, 4), *lm,
                     *[_r(p, 6) for p in f.probs.values()], f.label, _r(f.negative_score, 6), int(f.negative_flag)])
    return rows


class ResultWriter:
    """Base for result writers: ``write(result)`` per frame; used as a context manager, the file is
    committed when the block succeeds and discarded when it raises."""

    def __init__(self, out: str | os.PathLike | None) -> None:
        self._sink = _TextSink(out)
        self.path = self._sink.path

    def write(self, result: FrameResult) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Write anything still buffered (aggregate windows)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
            self._sink.commit()
        else:
            self._sink.abort()


class JsonlWriter(ResultWriter):
    """One JSON object per analysed image or frame (see :func:`frame_record`)."""

    def write(self, result: FrameResult) -> None:
        self._sink.fh.write(json.dumps(frame_record(result), separators=(",", ":")) + "\n")
        if self.path is None:
            self._sink.fh.flush()


class CsvWriter(ResultWriter):
    """One CSV row per face (see :func:`csv_columns`)."""

    def __init__(self, out, classes: tuple[str, ...]) -> None:
        super().__init__(out)
        self._csv = csv.writer(self._sink.fh, lineterminator="\n")
        self._csv.writerow(csv_columns(classes))

    def write(self, result: FrameResult) -> None:
        self._csv.writerows(face_rows(result))
        if self.path is None:
            self._sink.fh.flush()


@dataclass
class _Window:
    start: float | None
    frames: int = 0
    faces: int = 0
    negative: int = 0
    counts: Counter = field(default_factory=Counter)


class AggregateWriter(ResultWriter):
    """Only per-window counts: frames analysed, faces, negative faces and share, faces per class.

    Windows are ``seconds`` long, by frame time; still images (no time) form one window for the
    whole run. ``source`` names the SOURCE as given (never the individual file names of a folder).
    Nothing singles out a person: no boxes, scores, landmarks or per-face rows.
    """

    def __init__(self, out, classes: tuple[str, ...], seconds: float, source: str, fmt: str = "jsonl") -> None:
        if not seconds > 0:
            raise PrivferError(f"--aggregate must be a positive number of seconds, got {seconds}")
        super().__init__(out)
        self.classes, self.seconds, self.source, self.fmt = tuple(classes), float(seconds), source, fmt
        self._win: _Window | None = None
        self._key: object = None
        if fmt == "csv":
            self._csv = csv.writer(self._sink.fh, lineterminator="\n")
            self._csv.writerow(["source", "window_start_s", "window_end_s", "frames", "faces", "negative_faces",
                                "negative_share", *[f"n_{c}" for c in self.classes]])

    def write(self, result: FrameResult) -> None:
        key = None if result.time_s is None else int(result.time_s // self.seconds)
        if self._win is not None and key != self._key:
            self._emit()
        if self._win is None:
            self._key = key
            self._win = _Window(None if key is None else key * self.seconds)
        w = self._win
        w.frames += 1
        w.faces += len(result.faces)
        w.negative += sum(f.negative_flag for f in result.faces)
        w.counts.update(f.label for f in result.faces)

    def finish(self) -> None:
        if self._win is not None:
            self._emit()

    def _emit(self) -> None:
        w, self._win = self._win, None
        end = None if w.start is None else _r(w.start + self.seconds, 4)
        share = _r(w.negative / w.faces, 4) if w.faces else None
        counts = {c: w.counts.get(c, 0) for c in self.classes}
        if self.fmt == "csv":
            self._csv.writerow([self.source, "" if w.start is None else _r(w.start, 4), "" if end is None else end,
                                w.frames, w.faces, w.negative, "" if share is None else share, *counts.values()])
        else:
            self._sink.fh.write(json.dumps({
                "source": self.source, "window_start_s": _r(w.start, 4), "window_end_s": end, "frames": w.frames,
                "faces": w.faces, "negative_faces": w.negative, "negative_share": share, "counts": counts,
            }, separators=(",", ":")) + "\n")
        if self.path is None:
            self._sink.fh.flush()


def open_writer(out: str | os.PathLike | None, fmt: str, classes: tuple[str, ...],
                aggregate: float | None = None, source: str = "") -> ResultWriter:
    """The writer for ``--format``/``--aggregate``; ``out`` None writes to stdout."""
    if fmt not in FORMATS:
        raise PrivferError(f"unknown output format {fmt!r}; choose {' or '.join(FORMATS)}")
    if aggregate is not None:
        return AggregateWriter(out, classes, aggregate, source, fmt)
    return CsvWriter(out, classes) if fmt == "csv" else JsonlWriter(out)


# ---------------------------------------------------------------- anonymisation and drawing

def anonymize_faces(img: np.ndarray, boxes, mode: str = "blur") -> np.ndarray:
    """Blur or pixelate every ``(x, y, w, h)`` box of ``img`` in place (and return it).

    Only pixels inside a box change, and only pixels inside it are used. ``blur`` shrinks the face to
    at most 16 px, Gaussian-blurs it there (sigma 1/6 of that side) and scales it back, so the blur
    is as strong for big faces as for small ones and costs the same; ``pixelate`` leaves about six
    blocks across the face.
    """
    if mode not in ANONYMIZE:
        raise PrivferError(f"unknown anonymisation {mode!r}; choose {' or '.join(ANONYMIZE)}")
    H, W = img.shape[:2]
    for x, y, w, h in boxes:
        x0, y0, x1, y1 = max(0, int(x)), max(0, int(y)), min(W, int(x + w)), min(H, int(y + h))
        if x1 <= x0 or y1 <= y0:
            continue
        roi = img[y0:y1, x0:x1]
        rh, rw = roi.shape[:2]
        if mode == "blur":
            s = min(1.0, 16.0 / max(rh, rw))
            small = cv2.resize(roi, (max(1, round(rw * s)), max(1, round(rh * s))), interpolation=cv2.INTER_AREA)
            small = cv2.GaussianBlur(small, (0, 0), max(small.shape[:2]) / 6.0, borderType=cv2.BORDER_REPLICATE)
            roi[:] = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_LINEAR).reshape(roi.shape)
        else:
            block = max(1.0, max(rh, rw) / 6.0)
            small = cv2.resize(roi, (max(1, round(rw / block)), max(1, round(rh / block))), interpolation=cv2.INTER_AREA)
            roi[:] = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_NEAREST).reshape(roi.shape)
    return img


def draw_results(img: np.ndarray, result: FrameResult) -> np.ndarray:
    """Draw each face's box outline (on its edge pixels), label and negative flag beside it, in place."""
    H, W = img.shape[:2]
    scale = max(0.4, min(H, W) / 900.0)
    thick = max(1, round(scale * 1.5))
    for f in result.faces:
        x, y, w, h = f.box
        color = (40, 40, 230) if f.negative_flag else (60, 200, 60)
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), color, 1)
        text = f"{f.label} {f.probs[f.label]:.2f}" + (" NEG" if f.negative_flag else "")
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        tx = min(max(0, x), max(0, W - tw - 4))
        # The label sits wholly outside the box: above it, else below it, else inside its top edge.
        if y - base - th - 4 >= 0:
            ty = y - base - 1
        elif y + h + th + base + 4 <= H:
            ty = y + h + th + 3
        else:
            ty = y + th + 3
        cv2.rectangle(img, (tx, ty - th - 3), (tx + tw + 4, ty + base), (0, 0, 0), -1)
        cv2.putText(img, text, (tx + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    return img


def render(frame: Frame, result: FrameResult, anonymize: str | None = "blur") -> np.ndarray:
    """A BGR copy of the frame with faces anonymised (``anonymize`` None leaves them) and results drawn."""
    img = frame.image
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img.copy()
    if anonymize is not None:
        anonymize_faces(img, [f.box for f in result.faces], anonymize)
    return draw_results(img, result)


class AnnotationWriter:
    """Writes annotated (by default anonymised) output for ``--annotate PATH``.

    A single image or sample -> an image file; a folder -> a folder of images mirroring the input's
    relative paths; a video, camera or stream -> a video file (analysed frames only, at the source
    rate divided by ``every``). Used as a context manager; each file appears only when complete.
    """

    def __init__(self, path: str | os.PathLike, source: Source, anonymize: str | None = "blur", every: int = 1):
        if anonymize is not None and anonymize not in ANONYMIZE:
            raise PrivferError(f"unknown anonymisation {anonymize!r}; choose {' or '.join(ANONYMIZE)}")
        self.path, self.source, self.anonymize = Path(path), source, anonymize
        self.written = 0
        suffix = self.path.suffix.lower()
        if source.kind == "folder":
            if self.path.exists() and not self.path.is_dir():
                raise PrivferError(f"{self.path}: --annotate for a folder of images must be a folder")
        elif source.is_still:
            if suffix not in STILL_SUFFIXES:
                raise PrivferError(f"{self.path}: --annotate for an image needs an image file name "
                                   f"({', '.join(sorted(STILL_SUFFIXES))})")
        elif suffix not in VIDEO_CODECS:
            raise PrivferError(f"{self.path}: --annotate for a video needs a video file name "
                               f"({', '.join(sorted(VIDEO_CODECS))})")
        self.fps = (source.fps or 25.0) / max(1, every)
        self._video = None
        self._file: AtomicFile | None = None

    def __enter__(self):
        return self

    def write(self, frame: Frame, result: FrameResult) -> None:
        img = render(frame, result, self.anonymize)
        if self.source.is_still:
            target = self.path
            if self.source.kind == "folder":
                target = self.path / Path(frame.source).relative_to(self.source.name)
            ok, data = cv2.imencode(target.suffix or ".png", img)
            if not ok:
                raise PrivferError(f"{target}: cannot encode the annotated image")
            with atomic_path(target) as tmp:
                tmp.write_bytes(data.tobytes())
        else:
            if self._video is None:
                self._open_video(img.shape[1], img.shape[0])
            if (img.shape[1], img.shape[0]) != self._size:
                img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
            self._video.write(img)
        self.written += 1

    def _open_video(self, w: int, h: int) -> None:
        self._file = AtomicFile(self.path)
        codec = VIDEO_CODECS[self.path.suffix.lower()]
        self._video = cv2.VideoWriter(str(self._file.tmp), cv2.VideoWriter_fourcc(*codec), self.fps, (w, h))
        self._size = (w, h)
        if not self._video.isOpened():
            self._video = None
            raise PrivferError(f"{self.path}: cannot write video (codec {codec} not available)")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
        if self._file is not None:
            if exc_type is None:
                self._file.commit()
            self._file.discard()
            self._file = None


# ---------------------------------------------------------------- summary

@dataclass
class Summary:
    """Counts for ``--summary``: inputs analysed, faces, labels, negative flags."""

    frames: int = 0
    empty: int = 0
    faces: int = 0
    negative: int = 0
    labels: Counter = field(default_factory=Counter)

    def add(self, result: FrameResult) -> None:
        self.frames += 1
        self.empty += not result.faces
        self.faces += len(result.faces)
        self.negative += sum(f.negative_flag for f in result.faces)
        self.labels.update(f.label for f in result.faces)

    def text(self, what: str, outputs: list[str], skipped: int) -> str:
        unit = "image" if what == "image" else "frame"
        labels = ", ".join(f"{c} {n}" for c, n in self.labels.most_common()) or "none"
        lines = [
            f"privfer predict: {self.frames} {unit}{'s' * (self.frames != 1)} analysed "
            f"({self.empty} without a face), {self.faces} face{'s' * (self.faces != 1)}",
            f"  labels: {labels}",
            f"  negative flags: {self.negative} of {self.faces} faces",
            f"  outputs: {', '.join(outputs) if outputs else 'stdout'}",
        ]
        lines.append(f"  skipped: {skipped} unreadable input{'s' * (skipped != 1)}")
        return "\n".join(lines)
