"""MTCNN's ONet as a third fixed front-end (``face-onet-linear``, ``facemesh-onet-linear``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import privfer.models.onet as on
from privfer.errors import PrivferError
from privfer.models.facefeat import CenterFaceFeatures
from privfer.models.io import load_model
from privfer.models.onet import (TAPS, FaceMeshONetFeatures, FaceONetFeatures, FaceONetLinear, ONetFeatures,
                                 ONetNet)
from privfer.train.config import TrainConfig
from privfer.train.loop import train

REFERENCE = Path(__file__).parent / "data" / "onet_reference.npz"


def test_network_gives_facenet_pytorchs_tensor():
    """The fixture holds facenet-pytorch's own ONet's fourth-layer output for its input (written by
    tools/onet_weights.py when it converted the weights)."""
    ref = np.load(REFERENCE)
    with torch.no_grad():
        ours = ONetNet().maps(torch.from_numpy(ref["input"]))
    assert [tuple(m.shape[1:]) for m in ours] == [(64, 10, 10), (64, 8, 8), (128, 3, 3)]
    assert np.abs(ours[-1].numpy() - ref["prelu4"]).max() < 1e-5 * np.abs(ref["prelu4"]).max()


def test_no_parameters_no_saved_state_any_face_size_normalised_per_image():
    fe = ONetFeatures().eval()
    assert list(fe.parameters()) == [] and fe.state_dict() == {}
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        f = fe(x)
        assert fe(torch.rand(1, 1, 64, 64)).shape == (1, 256, 3, 3)
        assert not torch.allclose(f, fe(x.flip(-1)))
    assert f.shape == (2, 256, 3, 3)
    for part in f.split(list(TAPS.values()), dim=1):  # each tap: zero mean, std 1/2 per image
        assert torch.allclose(part.flatten(1).mean(1), torch.zeros(2), atol=1e-4)
        assert torch.allclose(part.flatten(1).std(1, unbiased=False), torch.full((2,), 0.5), atol=1e-3)
    net = FaceONetLinear(7)
    assert set(net.state_dict()) == {"head.2.weight", "head.2.bias"}
    assert net.head[-1].in_features == (CenterFaceFeatures.out_channels + 256) * 9


def test_other_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    w = load_file(str(on.WEIGHTS))
    w["conv1.bias"] = w["conv1.bias"] + 1
    save_file(w, str(tmp_path / "w.safetensors"))
    with pytest.raises(PrivferError, match="not the ONet weights"):
        ONetNet(tmp_path / "w.safetensors")
    with pytest.raises(PrivferError, match="not found"):
        ONetNet(tmp_path / "missing.safetensors")


def test_stacked_features_are_cached_part_by_part():
    """A stack of front-ends is the concatenation of its parts, and its cached features are each part's cached
    features side by side: adding ONet reuses the CenterFace and Face Mesh features already cached."""
    from privfer.train.features import cached

    fe = FaceMeshONetFeatures().eval()
    x = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fe(x), torch.cat([p(x) for p in fe.parts], 1))
    px = (np.random.default_rng(1).random((4, 48, 48)) * 255).astype(np.uint8)
    hashes = np.array([f"stacked-{i}" for i in range(4)])
    parts = [cached(p, px, hashes, True) for p in fe.parts]
    np.testing.assert_array_equal(cached(fe, px, hashes, True), np.concatenate(parts, axis=1))
    assert FaceONetFeatures.out_channels == 288 + 256 and FaceMeshONetFeatures.out_channels == 448 + 256


def test_dp_training_card_load_and_export(tiny_fer, tmp_path):
    cfg = TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model="face-onet-linear", epsilon=8.0,
                                     delta=1e-3, model_kwargs={"center": True, "mirror_average": True}, epochs=4,
                                     batch_size=50, physical_batch_size=64, lr=16.0, max_grad_norm=0.1, seed=0,
                                     threads=1, public_split=0.3, public_epochs=2, out=str(tmp_path / "run")))
    run = train(cfg, progress=False, log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["model"] == "face-onet-linear" and 0 < card["epsilon_spent"] <= 8.0
    assert on.WEIGHTS_SHA256 in card["pretrained_frontend"]["sha256"]
    assert "ONet" in card["pretrained_frontend"]["frontend"] and "CelebA" in card["pretrained_frontend"]["trained_on"]
    lm = load_model(str(run))
    from privfer.data.cache import load_faces
    from privfer.infer.onnx import onnx_model

    val = load_faces(f"fer2013:{tiny_fer}@val")
    assert float((lm.probs(val.pixels).argmax(1) == val.labels).mean()) > 0.5
    assert np.abs(onnx_model(lm).logits(val.pixels[:5]) - lm.logits(val.pixels[:5])).max() < 1e-3  # exports
