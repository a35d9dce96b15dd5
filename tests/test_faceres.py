"""HSE FaceRes as a fifth fixed front-end (``facemesh-attn-onet-res-linear``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import privfer.models.faceres as fr
from privfer.errors import PrivferError
from privfer.models.attnmesh import FaceMeshAttentionONetFeatures
from privfer.models.facefeat import feature_shape, grid_pool
from privfer.models.faceres import (TAPS, FaceMeshAttentionONetResFeatures, FaceResFeatures, FaceResNet,
                                    same_pad)
from privfer.models.io import load_model
from privfer.models.registry import build_model
from privfer.train.config import TrainConfig
from privfer.train.loop import train

REFERENCE = Path(__file__).parent / "data" / "faceres_reference.npz"


def test_network_gives_tensorflow_js_maps():
    """The fixture holds TensorFlow.js' own tap maps of the original model for its input, averaged on the 3x3 grid
    (written by tools/faceres_weights.py when it converted the weights)."""
    ref = np.load(REFERENCE)
    x = torch.from_numpy(ref["input"].astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        ours = [grid_pool(m).numpy() for m in FaceResNet().maps(x)]
    for i, o in enumerate(ours):
        assert o.shape == ref[f"tap{i}"].shape == (1, list(TAPS.values())[i], 3, 3)
        assert np.abs(o - ref[f"tap{i}"]).max() < 1e-4


def test_same_padding_puts_the_extra_row_at_the_bottom_right():
    x = torch.ones(1, 1, 4, 4)
    p = same_pad(x, 3, 2)  # out 2x2: one row and column of padding in all, after the input
    assert p.shape[-2:] == (5, 5) and p[0, 0, -1].sum() == 0 and p[0, 0, 0].sum() == 4
    assert same_pad(x, 3, 1).shape[-2:] == (6, 6)


def test_no_parameters_no_saved_state_normalised_per_image():
    fe = FaceResFeatures().eval()
    assert list(fe.parameters()) == [] and fe.state_dict() == {}
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = fe(x)
        assert fe(torch.rand(1, 1, 64, 64)).shape == (1, 768, 3, 3)
        assert not torch.allclose(f, fe(x.flip(-1)))
    assert f.shape == (2, 768, 3, 3)
    for part in f.split(list(TAPS.values()), dim=1):  # each tap: zero mean, std 1/2 per image
        assert torch.allclose(part.flatten(1).mean(1), torch.zeros(2), atol=1e-4)
        assert torch.allclose(part.flatten(1).std(1, unbiased=False), torch.full((2,), 0.5), atol=1e-3)
    assert feature_shape(FaceMeshAttentionONetResFeatures) == (
        feature_shape(FaceMeshAttentionONetFeatures)[0] + 768 * 9,)


def test_other_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    w = load_file(str(fr.WEIGHTS))
    w["pw_3.bias"] = w["pw_3.bias"] + 1
    save_file(w, str(tmp_path / "w.safetensors"))
    with pytest.raises(PrivferError, match="not the FaceRes weights"):
        FaceResNet(tmp_path / "w.safetensors")
    with pytest.raises(PrivferError, match="not found"):
        FaceResNet(tmp_path / "missing.safetensors")


def test_model_by_name_training_card_load_and_export(tiny_fer, tmp_path):
    net = build_model("facemesh-attn-onet-res-linear", 7, hidden=8)
    assert net.head[1].in_features == feature_shape(FaceMeshAttentionONetResFeatures)[0]
    cfg = TrainConfig.from_dict(dict(public=f"fer2013:{tiny_fer}", model="facemesh-attn-onet-res-linear",
                                     model_kwargs={"center": True, "mirror_average": True, "hidden": 16},
                                     public_epochs=3, public_batch_size=32, public_optimizer="adamw", public_lr=0.003,
                                     seed=0, threads=1, out=str(tmp_path / "run")))
    run = train(cfg, progress=False, log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["model"] == "facemesh-attn-onet-res-linear"
    assert fr.WEIGHTS_SHA256 in card["pretrained_frontend"]["sha256"]
    assert "FaceRes" in card["pretrained_frontend"]["frontend"] and "VGGFace2" in card["pretrained_frontend"]["trained_on"]
    lm = load_model(str(run))
    from privfer.data.cache import load_faces
    from privfer.infer.onnx import onnx_model

    val = load_faces(f"fer2013:{tiny_fer}@val")
    assert float((lm.probs(val.pixels).argmax(1) == val.labels).mean()) > 0.5
    assert np.abs(onnx_model(lm).logits(val.pixels[:5]) - lm.logits(val.pixels[:5])).max() < 1e-3  # exports
