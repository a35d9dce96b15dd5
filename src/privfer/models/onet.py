"""MTCNN's ONet as a third fixed front-end, and heads on it beside CenterFace (and Face Mesh).

ONet is the last stage of MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks"): a small network that takes a 48x48 face crop and was trained to tell faces from non-faces,
refine the box and place five landmarks (eyes, nose, mouth corners), on WIDER FACE and CelebA, both public
photograph collections, neither an expression dataset privfer reads. It sees faces at FER2013's own 48x48
resolution, where CenterFace and Face Mesh see them upscaled, and its features add to theirs: without DP, a
logistic regression on FER2013 reaches 57.8% on validation on ONet's features alone, and a head with one hidden
layer gains 1.3-1.5 points when they are appended to CenterFace's and Face Mesh's (docs/experiments.md).

:class:`ONetNet` runs ONet's four convolutions with the weights of ``privfer/weights/onet.safetensors``, converted
once from facenet-pytorch 2.6.0's ``onet.pt`` (MIT licence) by ``tools/onet_weights.py``, which checks the result
against facenet-pytorch's own network. Nothing is unpickled, nothing is downloaded. :class:`ONetFeatures` feeds
it the face as MTCNN does (48x48, grey as R = G = B, (pixel - 127.5) / 128), averages its second and third layers'
maps over a 3x3 grid (the fourth is 3x3 already) and normalises each per image: [N, 256, 3, 3].
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .facefeat import GRID, CenterFaceFeatures, FaceFeatureLinear, append_frontend, grid_pool
from .facemesh import FaceFeatures, FaceMeshLinear, checked_weights
from .layers import StackedFeatures, in_chunks

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "onet.safetensors"
#: SHA-256 of the shipped weights' content (``content_digest``): a model always gets the features it was trained on.
WEIGHTS_SHA256 = "cee94801e1050b30c51466111f98c3bb772fccae12fe9b76632037bb1aaa5c4c"
SIDE = 48  # ONet's input
#: The maps used as features, with their channels: after the second layer's pooling (10x10), the third layer (8x8),
#: the fourth (3x3).
TAPS = {"pool2": 64, "prelu3": 64, "prelu4": 128}


class ONetNet(nn.Module):
    """ONet's convolutions: float [N, 3, 48, 48], normalised as MTCNN's -> the :data:`TAPS` maps."""

    def __init__(self, path: Path = WEIGHTS, sha256: str | None = WEIGHTS_SHA256):
        super().__init__()
        for k, w in checked_weights(path, sha256, "ONet")[1].items():
            # fixed, non-persistent buffers: never saved in a privfer model
            self.register_buffer(k.replace(".", "_"), w, persistent=False)

    def _conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, getattr(self, f"conv{i}_weight"), getattr(self, f"conv{i}_bias"))
        return F.prelu(x, getattr(self, f"prelu{i}_weight"))

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The :data:`TAPS` maps: [N, 64, 10, 10], [N, 64, 8, 8] and [N, 128, 3, 3] for a 48x48 input."""
        x = F.max_pool2d(self._conv(1, x), 3, 2, ceil_mode=True)
        pool2 = F.max_pool2d(self._conv(2, x), 3, 2, ceil_mode=True)
        prelu3 = self._conv(3, pool2)
        prelu4 = self._conv(4, F.max_pool2d(prelu3, 2, 2, ceil_mode=True))
        return [pool2, prelu3, prelu4]


class ONetFeatures(nn.Module):
    """Fixed front-end: float [N, 1, S, S] faces in [0, 1] -> [N, 256, 3, 3] ONet features. No parameters."""

    out_channels = sum(TAPS.values())
    cache_tag = f"onet-{SIDE}-{GRID}-{'.'.join(TAPS)}"

    def __init__(self):
        super().__init__()
        self.net = ONetNet()

    def forward(self, x):
        return in_chunks(self._features, x)  # bounded memory for large batches

    def _features(self, x):
        if x.shape[-1] != SIDE or x.shape[-2] != SIDE:
            x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
        x = ((x * 255.0 - 127.5) / 128.0).expand(-1, 3, -1, -1)  # grey as R = G = B, MTCNN's normalisation
        # each tap normalised per image; / 2: about the per-feature scale of the CenterFace and Face Mesh features
        return torch.cat([F.group_norm(grid_pool(t), 1) / 2 for t in self.net.maps(x)], dim=1)


class FaceONetFeatures(StackedFeatures):
    """CenterFace and ONet features side by side: [N, 544, 3, 3]."""

    parts_classes = (CenterFaceFeatures, ONetFeatures)


class FaceMeshONetFeatures(StackedFeatures):
    """CenterFace, Face Mesh and ONet features side by side: [N, 704, 3, 3]."""

    parts_classes = (FaceFeatures, ONetFeatures)


_ONET_CARD = {
    "frontend": f"MTCNN ONet (Zhang et al. 2016) layers {', '.join(TAPS)} on 48x48 faces, averaged on a {GRID}x{GRID} grid",
    "weights": "data/onet.pt of facenet-pytorch 2.6.0 (MIT licence), converted to privfer/weights/onet.safetensors",
    "sha256": WEIGHTS_SHA256,
    "trained_on": "WIDER FACE and CelebA (public web photographs; face detection and five landmarks), by MTCNN's authors",
}


def _with_onet(card: dict) -> dict:
    """A model card's ``pretrained_frontend`` with ONet appended."""
    return append_frontend(card, _ONET_CARD)


class FaceONetLinear(FaceFeatureLinear):
    """:class:`FaceONetFeatures` + a linear head (4,896 features), with :class:`FaceFeatureLinear`'s options."""

    frontend_class = FaceONetFeatures
    pretrained = _with_onet(FaceFeatureLinear.pretrained)


class FaceMeshONetLinear(FaceMeshLinear):
    """:class:`FaceMeshONetFeatures` + a linear head (6,336 features), with :class:`FaceFeatureLinear`'s options."""

    frontend_class = FaceMeshONetFeatures
    pretrained = _with_onet(FaceMeshLinear.pretrained)
