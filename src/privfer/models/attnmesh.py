"""MediaPipe's attention mesh: the lips and the eyes, each seen at a higher resolution, as fixed features.

The attention mesh (Grishchenko et al. 2020, "Attention Mesh: High-fidelity Face Mesh Prediction in Real-time";
Apache-2.0) is the Face Mesh model that MediaPipe runs with ``refine_landmarks``: a trunk like Face Mesh's
(:mod:`privfer.models.facemesh`, other weights) places 468 points, then three small sub-networks each look again
at one region, the lips, the left eye and the right eye: the region is cut out of the trunk's 48x48 map by a
rotated crop around the trunk's own points for it, at 16x16, and the sub-network refines those points. Their last
layers describe the mouth's and the eyes' shapes, where expressions show, at three times the trunk's resolution.
Neither the trunk nor the sub-networks saw an expression dataset that privfer reads, so under DP they are free
features (Tramer & Boneh 2021). Without DP, a logistic regression on FER2013's mirror-averaged, centred features
reaches 62.6% on validation with them appended to CenterFace's and Face Mesh's, against 60.5% without them
(``python benchmarks/linear_ceiling.py facemesh facemesh-attn --mirror-average``).

:class:`AttentionMeshNet` runs, with torch, the trunk up to its landmarks, the two operations that MediaPipe
implements as TFLite custom ops (``Landmarks2TransformMatrix``: :func:`region_transform`;
``TransformTensorBilinear``: :func:`crop`) and the three sub-networks up to :data:`TAPS`. Weights, layer lists and
the regions' settings come from ``privfer/weights/attnmesh.safetensors``, converted once from
``face_landmark_with_attention.tflite`` of the mediapipe 0.10.21 wheel by ``tools/attnmesh_weights.py``, which
checks the layers against the TFLite interpreter. Nothing is unpickled, nothing is downloaded.
:class:`AttentionMeshFeatures` gives each face's features as one flat vector (the sub-networks' maps are 2x2,
not the 3x3 grid of the other front-ends).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrivferError
from .facefeat import STACKED_NOTE, CenterFaceFeatures, FaceFeatureLinear, append_frontend
from .facemesh import MARGIN, SIDE, FaceFeatures, FaceMeshLinear, FaceMeshNet, mesh_input
from .layers import StackedFeatures, in_chunks, release_plan
from .onet import FaceMeshONetFeatures, FaceMeshONetLinear

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "attnmesh.safetensors"
#: SHA-256 of the shipped weights' content (``facemesh.content_digest``): a model always gets the features it was
#: trained on.
WEIGHTS_SHA256 = "540738086bf8fac4ac11cf09b0213e9dfae79ee33a8403b0aaff5fc0d7932a65"
#: The trunk's tensors the regions need: the 48x48 map they are cut from, and the layer the landmarks come from.
TRUNK = {"p_re_lu_3": 32, "p_re_lu_19": 32}
#: The sub-networks' inputs (the three crops, in the order of the file's ``regions``).
CROPS = ("transform_tensor_bilinear_v2", "transform_tensor_bilinear_v2_1", "transform_tensor_bilinear_v2_2")
#: The features: for each region (lips, left eye, right eye), the last 128-channel map of its sub-network and the
#: 32-channel map before the layer that outputs its points, all 2x2.
TAPS = {"p_re_lu_30": 128, "p_re_lu_32": 32, "p_re_lu_43": 128, "p_re_lu_45": 32, "p_re_lu_63": 128, "p_re_lu_65": 32}
CELLS = 4  # each tap map is 2x2


def region_transform(points: torch.Tensor, region: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MediaPipe's ``Landmarks2TransformMatrix`` for one region: where each cell of the crop lies in the map.

    ``points`` [N, 468, 2] are the landmarks in the map's pixel coordinates. The crop is turned so that the
    region's two rotation landmarks lie on one row, centred on the box of the region's landmarks (in the turned
    frame) and ``scale`` times that box's size. Returns ``(a, b, t)``, each [N, 2], such that the crop's cell
    (column x, row y) samples the map at ``x * a + y * b + t``."""
    left, right = points[:, region["left_rotation_idx"]], points[:, region["right_rotation_idx"]]
    u = F.normalize(right - left, dim=1)  # the crop's rows run along u, its columns along v
    v = torch.stack([-u[:, 1], u[:, 0]], dim=1)
    sub = points[:, region["subset_idxs"]]
    pu, pv = (sub * u[:, None]).sum(-1), (sub * v[:, None]).sum(-1)  # the landmarks in the turned frame
    (u0, u1), (v0, v1) = (pu.amin(1), pu.amax(1)), (pv.amin(1), pv.amax(1))
    w, h = region["output_width"], region["output_height"]
    a = u * (region["scale_x"] * (u1 - u0) / w)[:, None]
    b = v * (region["scale_y"] * (v1 - v0) / h)[:, None]
    center = u * ((u0 + u1) / 2)[:, None] + v * ((v0 + v1) / 2)[:, None]
    return a, b, center - a * (w / 2) - b * (h / 2)


def crop(fmap: torch.Tensor, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """MediaPipe's ``TransformTensorBilinear``: [N, C, H, W] maps sampled (bilinear, edges repeated) at the
    [height, width] cells placed by :func:`region_transform` -> [N, C, height, width]."""
    _, _, hh, ww = fmap.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=fmap.dtype, device=fmap.device),
                            torch.arange(width, dtype=fmap.dtype, device=fmap.device), indexing="ij")
    p = xs[None, ..., None] * a[:, None, None] + ys[None, ..., None] * b[:, None, None] + t[:, None, None]
    grid = torch.stack([p[..., 0] * (2 / (ww - 1)) - 1, p[..., 1] * (2 / (hh - 1)) - 1], dim=-1)  # pixel -> [-1, 1]
    return F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)


class AttentionMeshNet(FaceMeshNet):
    """The attention mesh up to :data:`TAPS`: float [N, 3, 192, 192] RGB in [0, 1] -> the six 2x2 tap maps."""

    taps = TRUNK
    what = "attention mesh"

    def __init__(self, path: Path = WEIGHTS, sha256: str | None = WEIGHTS_SHA256):
        super().__init__(path, sha256)
        meta = self.meta
        self.regions = json.loads(meta["regions"])
        self.branch_layers = json.loads(meta["branch_layers"])
        if json.loads(meta["branch_taps"]) != list(TAPS) or [r["crop"] for r in self.regions] != list(CROPS):
            raise PrivferError(f"{path}: holds taps {meta['branch_taps']} of crops "
                               f"{[r['crop'] for r in self.regions]}, expected {list(TAPS)} of {list(CROPS)}")
        self._branch_release = release_plan([layer["in"] for layer in self.branch_layers], keep=set(TAPS))

    def landmarks(self, p19: torch.Tensor) -> torch.Tensor:
        """[N, 468, 3] landmarks (input pixels) from the trunk's last map (its 3x3 output layer, no padding)."""
        mesh = F.conv2d(p19.contiguous(), self.weight("output_mesh/Kernel"), self.weight("output_mesh/Bias"))
        return mesh.flatten(1).unflatten(1, (-1, 3))

    def trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's :data:`TRUNK` maps: the 48x48 map the regions are cut from, and the landmarks' layer."""
        return super().maps(x)

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        trunk = self.trunk(x)
        fmap, points = trunk[0].contiguous(), self.landmarks(trunk[1])[..., :2] * (trunk[0].shape[-1] / x.shape[-1])
        crops = {r["crop"]: crop(fmap, *region_transform(points, r), r["output_height"], r["output_width"])
                 for r in self.regions}
        env = self.run(self.branch_layers, self._branch_release, crops)
        return [env[t] for t in TAPS]


class AttentionMeshFeatures(nn.Module):
    """Fixed front-end: float [N, 1, S, S] faces in [0, 1] -> [N, 1920] attention-mesh features (the lips' and the
    eyes' sub-networks' maps, each normalised per image). No parameters."""

    out_shape = (sum(TAPS.values()) * CELLS,)
    cache_tag = f"attnmesh-{SIDE}-{MARGIN}-{'.'.join(TAPS)}"

    def __init__(self):
        super().__init__()
        self.net = AttentionMeshNet()

    def forward(self, x):
        return in_chunks(self._features, x)  # bounded memory for large batches

    def _features(self, x):
        return torch.cat([F.group_norm(t, 1).flatten(1) / 2 for t in self.net.maps(mesh_input(x))], dim=1)


class FaceAttentionFeatures(StackedFeatures):
    """CenterFace's features (:class:`~privfer.models.facefeat.CenterFaceFeatures`), flattened, then the attention
    mesh's: [N, 4512]. No parameters; each part is cached on its own."""

    parts_classes = (CenterFaceFeatures, AttentionMeshFeatures)
    flat = True


class FaceMeshAttentionFeatures(StackedFeatures):
    """CenterFace and Face Mesh features (:class:`~privfer.models.facemesh.FaceFeatures`), flattened, then the
    attention mesh's: [N, 5952]. No parameters; each part is cached on its own."""

    parts_classes = (FaceFeatures, AttentionMeshFeatures)
    flat = True


class FaceMeshAttentionONetFeatures(StackedFeatures):
    """:class:`FaceMeshAttentionFeatures` with MTCNN ONet's (:mod:`privfer.models.onet`) before the attention
    mesh's: [N, 8256]."""

    parts_classes = (FaceMeshONetFeatures, AttentionMeshFeatures)
    flat = True


_ATTN_CARD = {
    "frontend": f"MediaPipe attention mesh (Grishchenko et al. 2020, Apache-2.0): its lips and eye sub-networks' "
                f"layers {', '.join(TAPS)} on the regions it crops around its own landmarks",
    "weights": "face_landmark_with_attention.tflite of mediapipe 0.10.21, converted to privfer/weights/attnmesh.safetensors",
    "sha256": WEIGHTS_SHA256,
    "trained_on": "Google's own photographs annotated with face landmarks (not public; face geometry), by the "
                  "attention mesh's authors",
}


def _with_attention(card: dict) -> dict:
    """A model card's ``pretrained_frontend`` with the attention mesh appended."""
    return append_frontend(card, _ATTN_CARD, STACKED_NOTE + " (WIDER FACE and CelebA are public; the Face Mesh models' "
                                                      "photographs are Google's)")


class FaceAttentionLinear(FaceFeatureLinear):
    """:class:`FaceAttentionFeatures` + a linear head (4,512 features), with the options of
    :class:`~privfer.models.facefeat.FaceFeatureLinear`."""

    frontend_class = FaceAttentionFeatures
    pretrained = _with_attention(FaceFeatureLinear.pretrained)


class FaceMeshAttentionLinear(FaceMeshLinear):
    """:class:`FaceMeshAttentionFeatures` + a linear head (5,952 features), with the options of
    :class:`~privfer.models.facefeat.FaceFeatureLinear`."""

    frontend_class = FaceMeshAttentionFeatures
    pretrained = _with_attention(FaceMeshLinear.pretrained)


class FaceMeshAttentionONetLinear(FaceMeshONetLinear):
    """:class:`FaceMeshAttentionONetFeatures` + a linear head (8,256 features), with the options of
    :class:`~privfer.models.facefeat.FaceFeatureLinear`."""

    frontend_class = FaceMeshAttentionONetFeatures
    pretrained = _with_attention(FaceMeshONetLinear.pretrained)
