"""MediaPipe's attention mesh (lips and eye regions) as a fixed front-end (``facemesh-attn-linear``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import privfer.models.attnmesh as am
from privfer.errors import PrivferError
from privfer.models.attnmesh import (CROPS, TAPS, AttentionMeshFeatures, AttentionMeshNet, FaceMeshAttentionFeatures,
                                     FaceMeshAttentionLinear, crop, region_transform)
from privfer.models.facemesh import FaceFeatures
from privfer.train.config import TrainConfig
from privfer.train.features import cached, compute
from privfer.train.loop import train

REFERENCE = Path(__file__).parent / "data" / "attnmesh_tflite_reference.npz"


@pytest.fixture(scope="module")
def net():
    return AttentionMeshNet()


def test_network_gives_the_tflite_interpreters_tensors(net):
    """The fixture holds the TFLite interpreter's own tensors for these fixed inputs (written by
    tools/attnmesh_weights.py when it converted the weights): the trunk's landmarks for a fixed face, and the
    three sub-networks' taps for fixed random crops."""
    ref = np.load(REFERENCE)
    x = np.random.default_rng(0).random((1, 192, 192, 3), dtype=np.float32)  # tools/facemesh_weights.reference_input
    rng = np.random.default_rng(1)  # tools/attnmesh_weights.reference_crops
    crops = {c: torch.from_numpy(rng.standard_normal((1, 32, 16, 16)).astype(np.float32)) for c in CROPS}
    with torch.no_grad():
        trunk = net.trunk(torch.from_numpy(x).permute(0, 3, 1, 2))
        ours = {"landmarks": net.landmarks(trunk[1])}
        env = net.run(net.branch_layers, net._branch_release, crops)
        ours.update({t: env[t] for t in TAPS})
    assert set(ours) == set(ref.files)
    for t, a in ours.items():
        assert a.shape == ref[t].shape
        assert np.abs(a.numpy() - ref[t]).max() < 1e-4 * np.abs(ref[t]).max(), t


def test_regions_are_the_mediapipe_models(net):
    assert [r["name"] for r in net.regions] == ["lips", "left_eye", "right_eye"]
    assert [len(r["subset_idxs"]) for r in net.regions] == [80, 71, 71]
    assert [(r["left_rotation_idx"], r["right_rotation_idx"]) for r in net.regions] == [(61, 291), (33, 133), (362, 263)]


def _crop_coordinates(points, a, b, t):
    """Invert ``p = x a + y b + t``: the crop cell (x, y) of each map point."""
    m = torch.stack([a, b], dim=2)  # [N, 2, 2], columns a and b
    return torch.linalg.solve(m[:, None], (points - t[:, None]).unsqueeze(-1)).squeeze(-1)


def test_region_transform_levels_the_rotation_landmarks_and_frames_the_region():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(3, 468, 2, generator=g) * 40 + 4
    region = {"left_rotation_idx": 5, "right_rotation_idx": 9, "subset_idxs": [5, 9, 11, 40, 100],
              "output_width": 16, "output_height": 16, "scale_x": 1.5, "scale_y": 2.0}
    a, b, t = region_transform(points, region)
    assert torch.allclose((a * b).sum(1), torch.zeros(3), atol=1e-5)  # a turned square grid
    xy = _crop_coordinates(points[:, region["subset_idxs"]], a, b, t)
    # the region's two rotation landmarks on one row of the crop, left one first
    assert torch.allclose(xy[:, 0, 1], xy[:, 1, 1], atol=1e-4) and bool((xy[:, 0, 0] < xy[:, 1, 0]).all())
    # the region's box, centred, filling 1/scale of the crop
    for axis, scale in ((0, 1.5), (1, 2.0)):
        lo, hi = xy[..., axis].amin(1), xy[..., axis].amax(1)
        assert torch.allclose(lo, torch.full((3,), 8 - 8 / scale), atol=1e-3)
        assert torch.allclose(hi, torch.full((3,), 8 + 8 / scale), atol=1e-3)


def test_crop_samples_the_map_at_the_placed_cells():
    fmap = torch.arange(2 * 3 * 20 * 20, dtype=torch.float32).reshape(2, 3, 20, 20)
    one, zero = torch.tensor([[1.0, 0.0]] * 2), torch.tensor([[0.0, 1.0]] * 2)
    t = torch.tensor([[4.0, 2.0], [0.0, 7.0]])
    out = crop(fmap, one, zero, t, 5, 6)  # no turn, no scale: a window of the map
    assert torch.allclose(out[0], fmap[0, :, 2:7, 4:10], atol=1e-3)
    assert torch.allclose(out[1], fmap[1, :, 7:12, 0:6], atol=1e-3)
    half = crop(fmap, one, zero, t + 0.5, 5, 6)  # between pixels: the average of the four neighbours
    assert torch.allclose(half[0, :, 0, 0], fmap[0, :, 2:4, 4:6].mean((1, 2)))


def test_no_parameters_no_saved_state_flat_features():
    fe = AttentionMeshFeatures().eval()
    assert list(fe.parameters()) == [] and fe.state_dict() == {}
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        f, g = fe(x), fe(x.flip(-1))
    assert f.shape == (2, 1920) == (2, *AttentionMeshFeatures.out_shape)
    sizes = [c * 4 for c in TAPS.values()]
    for part in f.split(sizes, dim=1):  # each tap: zero mean, std 1/2 per image
        assert torch.allclose(part.mean(1), torch.zeros(2), atol=1e-4)
        assert torch.allclose(part.std(1, unbiased=False), torch.full((2,), 0.5), atol=1e-3)
    assert not torch.allclose(f, g)


def test_stacked_with_face_mesh_and_cached_part_by_part(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVFER_CACHE", str(tmp_path))
    fe = FaceMeshAttentionFeatures().eval()
    assert fe.out_shape == (FaceFeatures.out_channels * 9 + 1920,)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    whole = compute(fe, pixels)
    assert whole.shape == (3, 5952)
    np.testing.assert_array_equal(cached(fe, pixels, np.array(["a", "b", "c"]), min_cached=1), whole)
    net = FaceMeshAttentionLinear(7, center=True, mirror_average=True, hidden=16)
    assert set(net.state_dict()) == {"head.0.mean", "head.2.weight", "head.2.bias", "head.5.weight", "head.5.bias"}
    assert net.head[0].mean.shape == (5952,)
    with torch.no_grad():
        assert net(torch.rand(3, 1, 48, 48)).shape == (3, 7)


def test_other_weights_are_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(am.WEIGHTS), framework="pt") as f:
        meta = f.metadata()
    w = load_file(str(am.WEIGHTS))
    w["output_mesh/Bias"] = w["output_mesh/Bias"] + 1
    save_file(w, str(tmp_path / "w.safetensors"), metadata=meta)
    with pytest.raises(PrivferError, match="not the attention mesh weights"):
        AttentionMeshNet(tmp_path / "w.safetensors")
    save_file(load_file(str(am.WEIGHTS)), str(tmp_path / "t.safetensors"),
              metadata={**meta, "branch_taps": json.dumps(["p_re_lu_30"])})
    with pytest.raises(PrivferError, match="holds taps"):
        AttentionMeshNet(tmp_path / "t.safetensors", sha256=None)


def test_dp_training_and_card(tiny_fer, tmp_path):
    cfg = TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model="facemesh-attn-linear", epsilon=8.0,
                                     delta=1e-3, epochs=2, batch_size=70, physical_batch_size=64, lr=16.0,
                                     max_grad_norm=0.1, model_kwargs={"center": True}, seed=0, threads=1,
                                     out=str(tmp_path / "run")))
    card = json.loads((train(cfg, progress=False, log=lambda *_: None) / "model_card.json").read_text())
    assert card["model"] == "facemesh-attn-linear" and 0 < card["epsilon_spent"] <= 8.0
    assert am.WEIGHTS_SHA256 in card["pretrained_frontend"]["sha256"]
    assert "attention mesh" in card["pretrained_frontend"]["frontend"]
