"""Turn a detected face into the model input: rotate by the eye line, square crop with margin, gray, resize."""
from __future__ import annotations

import math

import cv2
import numpy as np


def crop_box(box: tuple[float, float, float, float], margin: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Square box ``(x, y, side, side)`` around ``box`` (x, y, w, h), grown by ``margin`` (fraction of the side).

    The result may extend past the image; :func:`align_face` pads with edge pixels there.
    """
    x, y, w, h = box
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(w, h) * (1.0 + margin)
    side = max(side, 2.0)
    return int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)), int(round(side))


def align_face(
    img: np.ndarray,
    box: tuple[float, float, float, float] | None = None,
    landmarks: np.ndarray | None = None,
    size: int = 48,
    margin: float = 0.0,
) -> np.ndarray:
    """Return a ``size``x``size`` uint8 grayscale face crop.

    ``box`` is ``(x, y, w, h)``; None means the whole image is the face. ``landmarks`` is a (5, 2)
    array (left eye, right eye, nose, left and right mouth corner, in image coordinates); when given,
    the crop is rotated so that the eye line is horizontal.
    """
    # Imported here: privfer.data imports this module (for its cache), so a module-level import of
    # privfer.data would be circular whenever privfer.faces is imported first.
    from ..data.image import to_gray

    gray = to_gray(img)
    H, W = gray.shape
    if box is None:
        box = (0, 0, W, H)
        if H == W == size and landmarks is None:
            return np.ascontiguousarray(gray)
    x, y, s, _ = crop_box(box, margin, (H, W))
    angle = 0.0
    if landmarks is not None and len(landmarks) >= 2:
        (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
    cx, cy = x + s / 2.0, y + s / 2.0
    # One affine warp: rotate about the box centre, then map the square crop to size x size.
    M = cv2.getRotationMatrix2D((cx, cy), angle, size / s)
    M[0, 2] += size / 2.0 - cx
    M[1, 2] += size / 2.0 - cy
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.warpAffine(gray, M, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)
