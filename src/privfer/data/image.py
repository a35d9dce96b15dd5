"""Decode image files into uint8 arrays, with clear errors for unreadable or truncated files."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import PrivferError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def _truncated(data: bytes, suffix: str) -> bool:
    if suffix in (".jpg", ".jpeg"):
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if suffix == ".png":
        return b"IEND" not in data[-16:]
    return False


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 grayscale (HxW) or BGR (HxWx3).

    16-bit images are scaled to 8 bit, alpha is dropped. Raises PrivferError naming the file when it
    is missing, empty, truncated or cannot be decoded.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise PrivferError(f"{p}: cannot read file ({e.strerror or e})") from None
    if not data:
        raise PrivferError(f"{p}: empty file")
    if _truncated(data, p.suffix.lower()):
        raise PrivferError(f"{p}: truncated image file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise PrivferError(f"{p}: not a readable image")
    return to_uint8(img)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Normalise any decoded image to uint8 gray (HxW) or BGR (HxWx3)."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


def to_gray(img: np.ndarray) -> np.ndarray:
    """uint8 grayscale view of a gray or BGR image."""
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
