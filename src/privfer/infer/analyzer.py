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
    probability; ``negative_score`` is the probability mass on negative classes and
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
    ``ssd:FILE``) or a Detector. ``backend``: ``torch``, or ``onnxruntime`` (an in-memory ONNX export,
    faster and steadier on a busy CPU). ``every``: analyse every N-th video frame. ``batch_size``:
    the most faces per forward pass. ``margin``: crop margin around the detected box.
    """

    def __init__(self, model: str | os.PathLike | LoadedModel | None = None, detector="centerface",
                 backend: str = "onnxruntime", every: int = 1, batch_size: int = 64, max_faces: int | None = None,
                 min_face_size: int = 20, device: str = "cpu", margin: float = MARGIN) -> None:
        if backend not in BACKENDS:
            raise PrivferError(f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
        if every < 1:
            raise PrivferError(f"every must be >= 1, got {every}")
        if batch_size < 1:
            raise PrivferError(f"batch_size must be >= 1, got {batch_size}")
        if device != "cpu" and backend == "torch":
            import torch

            if device.startswith("cuda") and not torch.cuda.is_available():
                raise PrivferError(f"device {device}: CUDA is not available to PyTorch here")
        loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        if backend == "onnxruntime":
            from .onnx import onnx_model

            loaded = onnx_model(loaded, device=device)
        self.model = loaded
        if isinstance(detector, str):
            from ..faces.detect import make_detector

            detector = make_detector(detector, min_face_size=min_face_size, max_faces=max_faces)
        self.detector = detector
        self.backend = backend
        self.every = int(every)
        self.batch_size = int(batch_size)
        self.margin = float(margin)
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
        img = to_uint8(np.asarray(image))
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise PrivferError(f"{source}: expected a gray, BGR or BGRA image, got shape {np.shape(image)}")
        faces = self.detector.detect(img)
        return FrameResult(source, int(frame), time_s, self._classify(img, faces))

    def _classify(self, img: np.ndarray, faces) -> list[FaceResult]:
        if not faces:
            return []
        gray = to_gray(img)
        s = self.model.input_size
        crops = np.stack([align_face(gray, f.box, f.landmarks, size=s, margin=self.margin) for f in faces])
        probs = self.model.probs(crops, batch_size=self.batch_size)
        neg = self.model.negative_score(probs)
        thr = self.model.threshold
        out = []
        for f, p, n in zip(faces, probs, neg):
            lm = None if f.landmarks is None else tuple((float(x), float(y)) for x, y in f.landmarks)
            out.append(FaceResult(
                box=tuple(int(v) for v in f.box), score=float(f.score), landmarks=lm,
                probs={c: float(v) for c, v in zip(self.classes, p)}, label=self.classes[int(np.argmax(p))],
                negative_score=float(n), negative_flag=bool(n >= thr),
            ))
        return out

    def frames(self, source: str | os.PathLike | Source | Iterable[Frame]) -> Iterator[tuple[Frame, FrameResult]]:
        """Yield ``(frame, result)`` for every analysed frame of ``source`` (a SOURCE string, an opened
        :class:`~privfer.infer.sources.Source`, or any iterable of frames)."""
        if isinstance(source, (str, os.PathLike)):
            source = open_source(source)
        it = source.frames(self.every) if isinstance(source, Source) else source
        for fr in it:
            yield fr, self.analyze(fr.image, source=fr.source, frame=fr.index, time_s=fr.time_s)

    def stream(self, source: str | os.PathLike | Source | Iterable[Frame]) -> Iterator[FrameResult]:
        """Results for every analysed frame of ``source`` (see :meth:`frames`), lazily."""
        for _, result in self.frames(source):
            yield result
