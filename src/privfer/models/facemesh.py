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
from .layers import in_chunks, release_plan

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

    def __init__(self, path: Path = WEIGHTS, sha256: str | None = WEIGHTS_SHA256):
        super().__init__()
        meta, weights = checked_weights(path, sha256, "Face Mesh")
        self._names = {}
        for i, (k, w) in enumerate(weights.items()):
            self._names[k] = f"w{i}"  # channels-last: twice as fast for the depthwise layers on a CPU
            self.register_buffer(f"w{i}", w.contiguous(memory_format=torch.channels_last) if w.dim() == 4 else w,
                                 persistent=False)
        self.layers = json.loads(meta["layers"])
        self._release = release_plan([layer["in"] for layer in self.layers], keep=set(TAPS))
        if json.loads(meta["taps"]) != list(TAPS):
            raise PrivferError(f"{path}: holds taps {meta['taps']}, expected {list(TAPS)}")

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the layer list (TFLite's SAME padding, NCHW) and return the :data:`TAPS` maps."""
        env = {"input_1": x.contiguous(memory_format=torch.channels_last)}
        for layer, done in zip(self.layers, self._release):
            op, h = layer["op"], [env[t] for t in layer["in"]]
            w = [getattr(self, self._names[k]) for k in layer.get("weights", [])]
            if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                s, k = layer["stride"], w[0].shape[-1]
                (t0, t1), (l0, l1) = _same_pad(h[0].shape[-2], k, s), _same_pad(h[0].shape[-1], k, s)
                groups = h[0].shape[1] if op == "DEPTHWISE_CONV_2D" else 1
                if (t0, l0) == (t1, l1):  # symmetric: padded by the convolution itself (no copy, one ONNX node)
                    y = F.conv2d(h[0], w[0], w[1], stride=s, padding=(t0, l0), groups=groups)
                else:
                    y = F.conv2d(F.pad(h[0], (l0, l1, t0, t1)), w[0], w[1], stride=s, groups=groups)
            elif op == "PRELU":
                y = F.prelu(h[0], w[0])
            elif op == "ADD":
                y = h[0] + h[1]
            elif op == "MAX_POOL_2D":
                y = F.max_pool2d(h[0], layer["stride"])
            elif op == "PAD":
                y = F.pad(h[0], (0, 0, 0, 0, 0, layer["channels"]))
            else:
                raise PrivferError(f"{WEIGHTS}: unsupported layer {op}")
            env[layer["out"]] = y
            for t in done:  # not needed by a later layer: free it now
                del env[t]
        return [env[t] for t in TAPS]


class FaceMeshFeatures(nn.Module):
    """Fixed front-end: float [N, 1, S, S] faces in [0, 1] -> [N, 160, 3, 3] Face Mesh features. No parameters."""

    out_channels = sum(TAPS.values())
    cache_tag = f"facemesh-{SIDE}-{MARGIN}-{GRID}"

    def __init__(self):
        super().__init__()
        self.net = FaceMeshNet()

    def forward(self, x):
        return in_chunks(self._features, x)  # bounded memory for large batches

    def _features(self, x):
        p = round(int(x.shape[-1]) * MARGIN)  # int(): a constant in an exported graph (its input size is fixed)
        x = F.pad(x, (p, p, p, p), mode="replicate")
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
        # both taps are already GRID x GRID (stride 64 of the 192 px input): no pooling
        return torch.cat([F.group_norm(t, 1) / 2 for t in self.net.maps(x)], dim=1)


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
