"""The Python inference API: find faces in images or frames and classify their expressions.

``Analyzer`` builds its model and face detector once; per frame it detects, aligns every face with
:func:`~privfer.faces.align.align_face`, and classifies all faces of the frame in one batch through
the model's calibrated probabilities. The per-frame path does no file I/O.

    >>> from privfer import Analyzer
    >>> result = Analyzer().analyze(image)           # one image (array or path)
    >>> for r in Analyzer(every=5).stream("talk.mp4"):  # a video, folder, camera or URL
    ...     print(r.time_s, [f.label for f in r.faces])
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import cv2
import numpy as np

from ..data.image import read_image, to_gray, to_uint8
from ..errors import PrivferError
from ..faces.align import align_face
from ..models.io import LoadedModel, load_model
from .sources import Frame, Source, open_source

#: Crop margin (fraction of the detected box's longer side) that makes crops look like FER2013's.
#: Measured with CenterFace: on 80 FER2013 test faces (upscaled to 192 px, padded) the detected box
#: spans a median 0.958 of the crop (1 / 0.958 - 1 = 0.044), and the inter-ocular distance is 0.358
#: of the crop side; the astronaut's box (88x120) with margin 0.04 gives 0.352.
MARGIN = 0.04
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class FaceResult:
    """One classified face. ``box`` is ``(x, y, w, h)`` in image pixels; ``landmarks`` five ``(x, y)``
    points (eyes, nose, mouth corners) or None; ``probs`` maps each model class to its calibrated
    probability; ``label`` is the decided class (with the card's class offsets, which favour rare classes, so
    not always the most probable one); ``negative_score`` is the probability mass on negative classes and
    ``negative_flag`` whether it reaches the model card's threshold."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None
    probs: dict[str, float]
    label: str
    negative_score: float
    negative_flag: bool


@dataclass(frozen=True)
class FrameResult:
    """The faces found in one image or video frame (``frame`` is the index in its video, 0 for images;
    ``time_s`` seconds from the start, None for still images)."""

    source: str
    frame: int
    time_s: float | None
    faces: list[FaceResult] = field(default_factory=list)


class Analyzer:
    """Detect faces and classify their expressions.

    ``model``: a model reference (run directory, ``.safetensors`` file, shipped name; None = the
    shipped default) or a :class:`~privfer.models.io.LoadedModel`. ``detector``: a spec for
    :func:`~privfer.faces.detect.make_detector` (``centerface``, ``haar``, ``yunet:FILE``,
    ``ssd:FILE``), built with ``min_face_size`` and ``max_faces``, or a Detector used as is.
    ``backend``: ``onnxruntime`` (default: an in-memory ONNX export, far faster and steadier than
    PyTorch at small batches on a busy CPU) or ``torch``. ``every``: analyse every N-th video frame.
    ``batch_size``: the most faces per forward pass. ``margin``: crop margin around the detected box.
    ``detect_every``: in videos and streams, run the detector on every N-th analysed frame only and
    follow its faces in between with optical flow (see :class:`FaceTracker`); 1 (default) detects on
    every frame.
    """

    def __init__(self, model: str | os.PathLike | LoadedModel | None = None, detector="centerface",
                 backend: str = "onnxruntime", every: int = 1, batch_size: int = 64, max_faces: int | None = None,
                 min_face_size: int = 20, device: str = "cpu", margin: float = MARGIN, detect_every: int = 1) -> None:
        if backend not in BACKENDS:
            raise PrivferError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
        if every < 1:
            raise PrivferError(f"every must be >= 1, got {every}")
        if batch_size < 1:
            raise PrivferError(f"batch_size must be >= 1, got {batch_size}")
        if detect_every < 1:
            raise PrivferError(f"detect_every must be >= 1, got {detect_every}")
        if device != "cpu" and backend == "torch":
            import torch

            if device.startswith("cuda") and not torch.cuda.is_available():
                raise PrivferError(f"device {device}: CUDA is not available to PyTorch here")
        loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        if backend == "onnxruntime":
            from .onnx import OnnxModel, onnx_model

            if not isinstance(loaded, OnnxModel):  # an OnnxModel is reused as is
                loaded = onnx_model(loaded, device=device)
        try:  # one warm-up face: a model that cannot run here fails now, not on the first frame
            s = loaded.input_size
            loaded.logits(np.zeros((1, s, s), np.uint8))
        except RuntimeError as e:
            msg = " ".join(str(e).split())[:200]
            raise PrivferError(f"{loaded.name or 'model'}: cannot run with backend {backend} on {device} ({msg})") from None
        self.model = loaded
        if isinstance(detector, str):
            from ..faces.detect import make_detector

            detector = make_detector(detector, min_face_size=min_face_size, max_faces=max_faces)
        self.detector = detector
        self.backend = backend
        self.every = int(every)
        self.batch_size = int(batch_size)
        self.margin = float(margin)
        self.detect_every = int(detect_every)
        self.classes = self.model.classes

    def __repr__(self) -> str:
        return (f"Analyzer(model={self.model.name!r}, detector={self.detector!r}, backend={self.backend!r}, "
                f"every={self.every}, batch_size={self.batch_size})")

    def analyze(self, image: np.ndarray | str | os.PathLike, *, source: str = "image", frame: int = 0,
                time_s: float | None = None) -> FrameResult:
        """Faces in one image: an array (gray, BGR, BGRA; 8 or 16 bit) or an image file path."""
        if isinstance(image, (str, os.PathLike)):
            source = str(image) if source == "image" else source
            image = read_image(image)
        img = self._check(image, source)
        return FrameResult(source, int(frame), time_s, self._classify(img, self.detector.detect(img)))

    @staticmethod
    def _check(image, source: str) -> np.ndarray:
        img = to_uint8(np.asarray(image))
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise PrivferError(f"{source}: expected a gray, BGR or BGRA image, got shape {np.shape(image)}")
        return img

    def _classify(self, img: np.ndarray, faces) -> list[FaceResult]:
        if not faces:
            return []
        gray = to_gray(img)
        s = self.model.input_size
        crops = np.stack([align_face(gray, f.box, f.landmarks, size=s, margin=self.margin) for f in faces])
        probs, labels = self.model.predict(crops, batch_size=self.batch_size)
        neg = self.model.negative_score(probs)
        thr = self.model.threshold
        out = []
        for f, p, k, n in zip(faces, probs, labels, neg):
            lm = None if f.landmarks is None else tuple((float(x), float(y)) for x, y in f.landmarks)
            out.append(FaceResult(
                box=tuple(int(v) for v in f.box), score=float(f.score), landmarks=lm,
                probs={c: float(v) for c, v in zip(self.classes, p)}, label=self.classes[int(k)],
                negative_score=float(n), negative_flag=bool(n >= thr),
            ))
        return out

    def frames(self, source: str | os.PathLike | Source | Iterable[Frame]) -> Iterator[tuple[Frame, FrameResult]]:
        """Yield ``(frame, result)`` for every analysed frame of ``source`` (a SOURCE string, an opened
        :class:`~privfer.infer.sources.Source`, or any iterable of frames)."""
        if isinstance(source, (str, os.PathLike)):
            source = open_source(source)
        it = source.frames(self.every) if isinstance(source, Source) else source
        tracker = FaceTracker(self.detector, self.detect_every) if self.detect_every > 1 else None
        for fr in it:
            img = self._check(fr.image, fr.source)
            if tracker is not None and fr.time_s is not None:  # still images are always detected
                faces = tracker.faces(img, key=fr.source)
            else:
                faces = self.detector.detect(img)
            yield fr, FrameResult(fr.source, fr.index, fr.time_s, self._classify(img, faces))

    def stream(self, source: str | os.PathLike | Source | Iterable[Frame]) -> Iterator[FrameResult]:
        """Results for every analysed frame of ``source`` (see :meth:`frames`), lazily."""
        for _, result in self.frames(source):
            yield result


class FaceTracker:
    """Detect on every ``detect_every``-th frame; in between, move the last faces with optical flow.

    Each face's landmarks (or, without landmarks, a 3x3 grid inside its box) are followed with
    pyramidal Lucas-Kanade flow from the previous frame; the box moves by the median displacement
    of the points followed. A face whose points are all lost is dropped until the next detection.
    A new ``key`` (another video) starts with a detection. Anonymised output hides these boxes, so
    keep ``detect_every`` small where faces move fast.
    """

    _LK = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))

    def __init__(self, detector, detect_every: int) -> None:
        self.detector = detector
        self.detect_every = int(detect_every)
        self._n = 0
        self._key: object = None
        self._gray: np.ndarray | None = None
        self._faces: list = []

    def faces(self, img: np.ndarray, key: object = None) -> list:
        """The faces in ``img`` (uint8 gray or BGR), detected or tracked."""
        gray = to_gray(img)
        if key != self._key or self._n % self.detect_every == 0 or self._gray is None:
            faces = self.detector.detect(img)
            self._n = 0
        else:
            faces = self._track(self._gray, gray, self._faces)
        self._key, self._gray, self._faces = key, gray, faces
        self._n += 1
        return faces

    def _track(self, prev: np.ndarray, gray: np.ndarray, faces: list) -> list:
        from ..faces.detect import Face

        if not faces or prev.shape != gray.shape:
            return []
        pts, owner = [], []
        for i, f in enumerate(faces):
            if f.landmarks is not None:
                p = np.asarray(f.landmarks, np.float32)
            else:
                x, y, w, h = f.box
                gx, gy = np.meshgrid(x + w * np.array([0.25, 0.5, 0.75]), y + h * np.array([0.25, 0.5, 0.75]))
                p = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
            pts.append(p)
            owner += [i] * len(p)
        p0 = np.concatenate(pts).reshape(-1, 1, 2)
        p1, status, _ = cv2.calcOpticalFlowPyrLK(prev, gray, p0, None, **self._LK)
        ok = status.reshape(-1).astype(bool)
        d = (p1 - p0).reshape(-1, 2)
        owner = np.asarray(owner)
        H, W = gray.shape
        out = []
        for i, f in enumerate(faces):
            sel = ok & (owner == i)
            if not sel.any():
                continue
            dx, dy = np.median(d[sel], axis=0)
            x, y, w, h = f.box
            x0, y0 = int(np.clip(round(x + dx), 0, W - 1)), int(np.clip(round(y + dy), 0, H - 1))
            box = (x0, y0, int(min(w, W - x0)), int(min(h, H - y0)))
            lm = None
            if f.landmarks is not None:
                lm = np.asarray(f.landmarks, np.float32) + np.float32([dx, dy])
                lm.setflags(write=False)
            out.append(Face(box, f.score, lm))
        return out
