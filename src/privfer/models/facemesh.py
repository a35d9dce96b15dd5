"""MediaPipe Face Mesh's trunk as a second fixed front-end, and a linear head on it and CenterFace together.

The Face Mesh landmark network (Kartynnik et al. 2019, "Real-time Facial Surface Geometry from Monocular
Video on Mobile GPUs"; Apache-2.0) was trained by Google to place 468 points on a face: lips, eyelids,
brows. Its late layers encode the face geometry that expressions move, and they complement
CenterFace's (:mod:`privfer.models.facefeat`), which were trained to find faces. Neither saw an expression
dataset that privfer reads, so under DP both are free features (Tramer & Boneh 2021). Without DP, a linear
head on the two together separates FER2013's expressions better than on either alone
(``python benchmarks/linear_ceiling.py face facemesh``).

:class:`FaceMeshNet` runs the network's layers up to two of its tensors (:data:`TAPS`) with torch: the
weights and the layer list come from ``privfer/weights/facemesh.safetensors``, converted once from
``face_landmark.tflite`` of the mediapipe 0.10.21 wheel by ``tools/facemesh_weights.py`` (which checks
the result against the TFLite interpreter). Nothing is unpickled, nothing is downloaded.
:class:`FaceMeshFeatures` feeds it the face as the landmark model expects a face crop (a 25% margin, made
by repeating the border, 192x192, RGB in [0, 1]) and normalises each tap per image.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrivferError
from .facefeat import GRID, CenterFaceFeatures, FaceFeatureLinear
from .layers import FeatureCenter, in_chunks, release_plan

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "facemesh.safetensors"
#: SHA-256 of the shipped weights' content (:func:`content_digest`): a model always gets the features it was
#: trained on.
WEIGHTS_SHA256 = "146f8a2f1e389b1fbaafc32d0ea1f2118fab212f7901fe3dce1d32ea0ade1a71"
#: The network's tensors used as features, with their channels: the end of the shared trunk (3x3, 128) and
#: the end of the landmark branch, just before the layer that outputs the 468 points (3x3, 32).
TAPS = {"p_re_lu_17": 128, "p_re_lu_20": 32}
SIDE, MARGIN = 192, 0.25  # the landmark model's input, and the border added on each side of the face


def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's SAME padding before and after, for size n, kernel k and stride s."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def content_digest(f) -> str:
    """SHA-256 of an open safetensors file's tensors and metadata, in a fixed order (the file's own bytes
    are not: its header is written in hash-map order)."""
    h = hashlib.sha256(json.dumps(f.metadata(), sort_keys=True).encode())
    for k in sorted(f.keys()):
        t = f.get_tensor(k)
        h.update(f"{k}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checked_weights(path: Path, sha256: str | None, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and float32 tensors of a front-end's shipped safetensors file, whose content must have the
    SHA-256 ``sha256`` (:func:`content_digest`; None skips the check): a model always gets the features it was
    trained on. ``what`` names the network in the one-line errors."""
    from safetensors import safe_open

    if not path.is_file():
        raise PrivferError(f"{path}: {what} weights not found (reinstall privfer)")
    with safe_open(str(path), framework="pt") as f:
        digest = content_digest(f)
        if sha256 is not None and digest != sha256:
            raise PrivferError(f"{path}: not the {what} weights privfer's features were built on "
                               f"(SHA-256 {digest[:12]}..., expected {sha256[:12]}...)")
        return f.metadata() or {}, {k: f.get_tensor(k).float() for k in f.keys()}


class FaceMeshNet(nn.Module):
    """Face Mesh's layers up to :data:`TAPS`: float [N, 3, 192, 192] RGB in [0, 1] -> the tap maps."""

    #: The tensors computed (the file's ``taps`` must name them), and what the weights are, for error messages.
    taps: dict[str, int] = TAPS
    what = "Face Mesh"

    def __init__(self, path: Path = WEIGHTS, sha256: str | None = WEIGHTS_SHA256):
        super().__init__()
        meta, weights = checked_weights(path, sha256, self.what)
        self.meta = meta  # the file's metadata (layer lists, taps, and what a subclass stores there)
        self._names = {}
        for i, (k, w) in enumerate(weights.items()):
            self._names[k] = f"w{i}"  # channels-last: twice as fast for the depthwise layers on a CPU
            self.register_buffer(f"w{i}", w.contiguous(memory_format=torch.channels_last) if w.dim() == 4 else w,
                                 persistent=False)
        self.layers = json.loads(meta["layers"])
        self._release = release_plan([layer["in"] for layer in self.layers], keep=set(self.taps))
        if json.loads(meta["taps"]) != list(self.taps):
            raise PrivferError(f"{path}: holds taps {meta['taps']}, expected {list(self.taps)}")

    def weight(self, name: str) -> torch.Tensor:
        """The fixed tensor stored under ``name`` in the weights file."""
        return getattr(self, self._names[name])

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the layer list (TFLite's SAME padding, NCHW) and return the :data:`TAPS` maps."""
        env = self.run(self.layers, self._release, {"input_1": x})
        return [env[t] for t in self.taps]

    def run(self, layers: list[dict], release: list[list[str]], env: dict[str, torch.Tensor]) -> dict:
        """Run a converted layer list on the named inputs ``env``; the tensors it produces that ``release``
        (:func:`~privfer.models.layers.release_plan`) keeps are added to ``env``, which is returned."""
        env = {k: v.contiguous(memory_format=torch.channels_last) for k, v in env.items()}
        for i, (layer, done) in enumerate(zip(layers, release)):
            op, h = layer["op"], [env[t] for t in layer["in"]]
            w = [self.weight(k) for k in layer.get("weights", [])]
            if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                s, k = layer["stride"], w[0].shape[-1] if w else layer["kernel"]
                (t0, t1), (l0, l1) = _same_pad(h[0].shape[-2], k, s), _same_pad(h[0].shape[-1], k, s)
                if (t0, l0) == (t1, l1):  # symmetric: padded by the convolution itself (no copy, one ONNX node)
                    y = self._conv(i, layer, h[0], w, (t0, l0))
                else:
                    y = self._conv(i, layer, F.pad(h[0], (l0, l1, t0, t1)), w, (0, 0))
            elif op == "PRELU":
                y = F.prelu(h[0], w[0])
            elif op == "ADD":
                y = h[0] + h[1]
            elif op == "MAX_POOL_2D":
                y = F.max_pool2d(h[0], layer["stride"])
            elif op == "PAD":
                y = F.pad(h[0], (0, 0, 0, 0, 0, layer["channels"]))
            else:
                raise PrivferError(f"{self.what} weights: unsupported layer {op}")
            env[layer["out"]] = y
            for t in done:  # not needed by a later layer: free it now
                del env[t]
        return env

    def _conv(self, i: int, layer: dict, x: torch.Tensor, w: list[torch.Tensor], padding: tuple[int, int]) -> torch.Tensor:
        """``layer`` (number ``i`` of its list), a convolution (depthwise when it has one input channel per group)
        with the fixed weights."""
        groups = x.shape[1] if layer["op"] == "DEPTHWISE_CONV_2D" else 1
        return F.conv2d(x, w[0], w[1], stride=layer["stride"], padding=padding, groups=groups)


class TunedFaceMeshNet(FaceMeshNet):
    """:class:`FaceMeshNet` whose convolutions are trainable ``nn.Conv2d`` modules, initialised with the shipped
    weights (the PReLU slopes stay fixed): the trunk can then be fine-tuned, and Opacus sees ordinary layers.
    A saved model holds the trained convolutions (``convs``); the shipped file only initialises them.
    Convolutions before layer ``tune_from`` of the layer list stay fixed (``requires_grad`` off): 40 leaves
    the 96-, 48- and 24-pixel stages as shipped, which cuts a training step's time by more than half."""

    def __init__(self, path: Path = WEIGHTS, sha256: str | None = WEIGHTS_SHA256, tune_from: int = 0):
        super().__init__(path, sha256)
        self.convs = nn.ModuleDict()
        for i, layer in enumerate(self.layers):
            if layer["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w, b = (getattr(self, self._names[k]) for k in layer["weights"])
                groups = w.shape[0] if layer["op"] == "DEPTHWISE_CONV_2D" else 1
                conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[-1], stride=layer["stride"], groups=groups)
                with torch.no_grad():
                    conv.bias.copy_(b)
                # channels-last, as the fixed weights: about twice as fast for the depthwise layers on a CPU
                conv.weight = nn.Parameter(w.clone().contiguous(memory_format=torch.channels_last))
                conv.requires_grad_(i >= tune_from)
                self.convs[str(i)] = conv
                for k in layer["weights"]:  # the module holds them now
                    delattr(self, self._names[k])
                layer["weights"], layer["kernel"] = [], w.shape[-1]

    def _conv(self, i, layer, x, w, padding):
        conv = self.convs[str(i)]
        conv.padding = padding  # fixed for a given input size (TensorFlow's SAME padding)
        return conv(x)


def mesh_input(x: torch.Tensor) -> torch.Tensor:
    """Faces [N, 1, S, S] in [0, 1] as the Face Mesh models take a face crop: a :data:`MARGIN` border of repeated
    edge pixels, scaled to SIDE x SIDE, grey as R = G = B: [N, 3, SIDE, SIDE]."""
    p = round(int(x.shape[-1]) * MARGIN)  # int(): a constant in an exported graph (its input size is fixed)
    x = F.pad(x, (p, p, p, p), mode="replicate")
    return F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)


class FaceMeshFeatures(nn.Module):
    """Fixed front-end: float [N, 1, S, S] faces in [0, 1] -> [N, 160, 3, 3] Face Mesh features. No parameters."""

    out_channels = sum(TAPS.values())
    cache_tag = f"facemesh-{SIDE}-{MARGIN}-{GRID}"

    def __init__(self, tuned: bool = False, tune_from: int = 0):
        super().__init__()
        self.net = TunedFaceMeshNet(tune_from=tune_from) if tuned else FaceMeshNet()

    def forward(self, x):
        return in_chunks(self._features, x)  # bounded memory for large batches

    def _features(self, x):
        # both taps are already GRID x GRID (stride 64 of the 192 px input): no pooling
        return torch.cat([F.group_norm(t, 1) / 2 for t in self.net.maps(mesh_input(x))], dim=1)


class FaceFeatures(nn.Module):
    """CenterFace and Face Mesh features side by side: [N, 448, 3, 3]. No parameters."""

    out_channels = CenterFaceFeatures.out_channels + FaceMeshFeatures.out_channels
    cache_tag = f"{CenterFaceFeatures.cache_tag}+{FaceMeshFeatures.cache_tag}"

    def __init__(self):
        super().__init__()
        self.centerface, self.facemesh = CenterFaceFeatures(), FaceMeshFeatures()

    def forward(self, x):
        return torch.cat([self.centerface(x), self.facemesh(x)], dim=1)


class FaceMeshLinear(FaceFeatureLinear):
    """:class:`FaceFeatures` + a linear head (4,032 features)."""

    frontend_class = FaceFeatures

    pretrained = {
        "frontend": f"{FaceFeatureLinear.pretrained['frontend']}; and MediaPipe Face Mesh (Kartynnik et al. 2019, "
                    f"Apache-2.0) layers {', '.join(TAPS)} on faces with a {MARGIN:.0%} margin at {SIDE}x{SIDE}",
        "weights": f"{FaceFeatureLinear.pretrained['weights']}; face_landmark.tflite of mediapipe 0.10.21, "
                   "converted to privfer/weights/facemesh.safetensors",
        "sha256": f"{FaceFeatureLinear.pretrained['sha256']}; {WEIGHTS_SHA256}",
        "trained_on": f"{FaceFeatureLinear.pretrained['trained_on']}; Google's own photographs annotated with "
                      "face landmarks (not public; face geometry), by Face Mesh's authors",
        "note": "the fixed front-ends learnt nothing from this card's data; no guarantee of this card covers the data "
                "they were trained on (WIDER FACE is public; Face Mesh's photographs are Google's)",
    }


class FaceMeshTuned(nn.Module):
    """CenterFace's fixed features beside Face Mesh features whose trunk is trained too (fine-tuned, from the
    shipped weights), then one hidden layer and the classifier: the end-to-end counterpart of
    :class:`FaceMeshLinear` with ``hidden``. Trained on augmented faces like the other end-to-end models (no
    feature cache: the Face Mesh features change as it learns). ``tune_from`` (:class:`TunedFaceMeshNet`) keeps
    Face Mesh's early, high-resolution layers fixed.

    ``center`` and ``mirror_average`` build the head of :class:`FaceMeshLinear` with the same options (a
    :class:`~privfer.models.layers.FeatureCenter` first; the features of the face and of its mirror image
    averaged, twice the front-ends' cost) under the same tensor names (``head.*``), so that a trained fixed-feature
    model can start it (``init_from`` in the training config): at the first step it is that model. The centre is
    not fit here (there is no fixed front-end to fit it on): it comes with ``init_from``."""

    pretrained = {**FaceMeshLinear.pretrained,
                  "note": "CenterFace's front-end is fixed; Face Mesh's trunk starts from its shipped weights and is "
                          "trained on this card's data as part of the model (what this card states about that data "
                          "covers it); no guarantee of this card covers the data the front-ends were first trained "
                          "on (WIDER FACE is public; Face Mesh's photographs are Google's)"}

    def __init__(self, num_classes: int, hidden: int = 256, dropout: float = 0.5, tune_from: int = 40,
                 center: bool = False, mirror_average: bool = False):
        super().__init__()
        if hidden < 1:
            raise PrivferError(f"hidden must be >= 1, got {hidden}")
        if tune_from < 0:
            raise PrivferError(f"tune_from must be >= 0 (a layer of Face Mesh's list), got {tune_from}")
        self.centerface = CenterFaceFeatures()
        self.facemesh = FaceMeshFeatures(tuned=True, tune_from=tune_from)
        self.mirror_average = mirror_average
        shape = (CenterFaceFeatures.out_channels + FaceMeshFeatures.out_channels, GRID, GRID)
        d = shape[0] * GRID * GRID
        self.head = nn.Sequential(*([FeatureCenter(shape)] if center else []), nn.Flatten(), nn.Linear(d, hidden),
                                  nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def features(self, x):
        """[N, 448, 3, 3]: CenterFace's fixed features and the tuned Face Mesh features, side by side."""
        if self.mirror_average:  # one batch for both, as MirrorAverage
            return self._features(torch.cat([x, x.flip(-1)])).unflatten(0, (2, -1)).mean(0)
        return self._features(x)

    def _features(self, x):
        with torch.no_grad():  # fixed: no gradient (and onnxruntime's faster path on a CPU)
            c = self.centerface(x)
        return torch.cat([c, self.facemesh(x)], dim=1)

    def forward(self, x):
        return self.head(self.features(x))
