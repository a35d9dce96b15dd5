"""Open what ``privfer predict`` analyses and yield its frames lazily: images, folders, videos, cameras, streams.

A SOURCE is an image file, a folder of images (recursive, sorted by path), a video file, a camera
index (``0``), an RTSP/HTTP(S) URL, or a builtin sample (``sample:astronaut``, offline). Frames come
one at a time with their source name, frame index and time, so memory stays constant in video length.
Unreadable images in a folder are skipped with a one-line warning and counted; a video, camera or
stream that cannot be opened or ends early raises :class:`~privfer.errors.PrivferError`.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..data.image import IMAGE_SUFFIXES, read_image, to_uint8
from ..errors import PrivferError

# FFmpeg's own log lines ("moov atom not found", ...) would break the one-line error contract.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".gif", ".ts"}
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
#: Seconds to wait for a stream to open or deliver a frame.
STREAM_TIMEOUT_S = 15


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR


SAMPLES = {"astronaut": _astronaut}


@dataclass(frozen=True)
class Frame:
    """One decoded frame: uint8 gray (HxW) or BGR (HxWx3), where it came from, and when.

    ``index`` is the frame's position in its video or stream (0 for still images); ``time_s`` is
    seconds from the start (None for still images).
    """

    source: str
    index: int
    time_s: float | None
    image: np.ndarray


class Source:
    """An opened SOURCE. Iterate :meth:`frames`; ``skipped`` lists inputs that could not be read.

    ``kind`` is ``image``, ``folder``, ``video``, ``camera``, ``stream`` or ``sample``; ``fps`` is the
    frame rate for videos and streams (None when unknown or for still images).
    """

    kind: str = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.skipped: list[str] = []
        self.fps: float | None = None

    @property
    def is_still(self) -> bool:
        """True for still images (one frame per file), False for videos, cameras and streams."""
        return self.kind in ("image", "folder", "sample")

    def frames(self, every: int = 1) -> Iterator[Frame]:
        """Yield frames lazily; for videos and streams only every ``every``-th frame is decoded."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file (also done when :meth:`frames` is exhausted)."""


class _Stills(Source):
    """Still images: one file, a folder (skipping unreadable files), or an in-memory sample."""

    def __init__(self, name: str, kind: str, paths: list[Path] | None = None, image: np.ndarray | None = None):
        super().__init__(name)
        self.kind = kind
        self._paths = paths or []
        self._image = image

    def frames(self, every: int = 1) -> Iterator[Frame]:
        if self._image is not None:
            yield Frame(self.name, 0, None, self._image)
            return
        for p in self._paths:
            try:
                img = read_image(p)
            except PrivferError as e:
                if self.kind != "folder":
                    raise
                self.skipped.append(str(p))
                print(f"privfer: warning: skipped {e}", file=sys.stderr)
                continue
            yield Frame(str(p), 0, None, img)


@contextmanager
def _quiet_opencv():
    """Silence OpenCV's own WARN lines while opening a capture (its failure becomes one PrivferError)."""
    log = cv2.utils.logging
    prev = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(prev)


class _Capture(Source):
    """A video file, camera or network stream read through ``cv2.VideoCapture``."""

    def __init__(self, name: str, kind: str, target: str | int):
        super().__init__(name)
        self.kind = kind
        with _quiet_opencv():
            if kind == "stream":
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_S * 1000,
                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_S * 1000]
                cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
            else:
                cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            what = {"video": "not a readable video (unsupported format, or truncated)",
                    "camera": "cannot open camera (no such device, or it is busy)",
                    "stream": "cannot open stream (unreachable, unsupported or timed out)"}[kind]
            raise PrivferError(f"{name}: {what}")
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT) if kind == "video" else 0
        self.frame_count = int(count) if count and count > 0 else None

    def frames(self, every: int = 1) -> Iterator[Frame]:
        if every < 1:
            raise PrivferError(f"--every must be >= 1, got {every}")
        cap = self._cap
        if cap is None:
            raise PrivferError(f"{self.name}: source already consumed")
        start = time.monotonic()
        i = -1
        try:
            while True:
                if not cap.grab():  # grab without decoding; decode only the frames analysed
                    break
                i += 1
                if i % every:
                    continue
                ok, img = cap.retrieve()
                if not ok or img is None:
                    raise PrivferError(f"{self.name}: frame {i} cannot be decoded (corrupt or truncated video)")
                if self.kind == "video" and self.fps:
                    t = i / self.fps
                else:
                    t = time.monotonic() - start
                yield Frame(self.name, i, t, to_uint8(img))
        finally:
            self.close()
        n = i + 1
        if self.kind == "video":
            if n == 0:
                raise PrivferError(f"{self.name}: no frames can be read (unsupported codec, or truncated video)")
            # Container frame counts can be estimates; only a clear shortfall means truncation.
            if self.frame_count and n < self.frame_count - max(2, 0.02 * self.frame_count):
                raise PrivferError(f"{self.name}: truncated video (read {n} of {self.frame_count} frames)")
        elif n == 0:
            raise PrivferError(f"{self.name}: no frames received from the {self.kind}")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_source(spec: str | os.PathLike) -> Source:
    """Open a SOURCE (see module docstring); raises PrivferError with one line when it is unusable."""
    s = str(spec)
    if s.startswith("sample:"):
        key = s.split(":", 1)[1]
        if key not in SAMPLES:
            raise PrivferError(f"unknown sample {s!r}; known: {', '.join('sample:' + k for k in SAMPLES)}")
        return _Stills(s, "sample", image=SAMPLES[key]())
    if s.isdigit():
        return _Capture(f"camera {s}", "camera", int(s))
    if s.lower().startswith(URL_SCHEMES):
        return _Capture(s, "stream", s)
    p = Path(s)
    if p.is_dir():
        paths = sorted((f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
                       key=lambda f: f.as_posix())
        if not paths:
            raise PrivferError(f"{p}: folder has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return _Stills(s, "folder", paths=paths)
    if not p.exists():
        raise PrivferError(f"{s}: no such file, folder, camera index, URL or sample")
    if not p.is_file():
        raise PrivferError(f"{s}: not a regular file")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return _Stills(s, "image", paths=[p])
    if p.suffix.lower() in VIDEO_SUFFIXES:
        return _Capture(s, "video", s)
    raise PrivferError(f"{s}: unsupported file type {p.suffix or '(no suffix)'!r}; images: "
                       f"{', '.join(sorted(IMAGE_SUFFIXES))}; videos: {', '.join(sorted(VIDEO_SUFFIXES))}")
