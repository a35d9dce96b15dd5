"""CenterFace backbone features as a fixed front-end (``face-linear``)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import privfer.models.facefeat as ff
from privfer.errors import PrivferError
from privfer.faces.detect import _dynamic_centerface
from privfer.models.facefeat import TAPS, CenterFaceFeatures, FaceFeatureLinear, onnx_file, pooling_matrix
from privfer.models.io import load_model
from privfer.train.config import TrainConfig
from privfer.train.loop import train


@pytest.fixture(scope="module")
def fe():
    return CenterFaceFeatures().eval()


def test_features_are_the_detectors_own_layers(fe):
    """The tap maps equal the bundled detector graph's tensors of the same name (run by onnxruntime on
    the whole detector), averaged on the 3x3 grid and normalised per image."""
    m = onnx.load_from_string(_dynamic_centerface(onnx_file()))
    for t in TAPS:
        m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 1, 48, 48)
    up = F.interpolate(x, size=(ff.SIDE, ff.SIDE), mode="bilinear", align_corners=False) * 255
    maps = s.run(list(TAPS), {s.get_inputs()[0].name: up.expand(-1, 3, -1, -1).numpy().copy()})
    ref = torch.cat([F.group_norm(F.adaptive_avg_pool2d(torch.from_numpy(a), 3), 1) / 2 for a in maps], 1)
    with torch.no_grad():
        out = fe(x)
    assert out.shape == (3, 288, 3, 3)
    assert torch.allclose(out, ref, atol=1e-4)


def test_torch_and_onnxruntime_paths_agree(fe):
    x = torch.rand(4, 1, 48, 48)
    with torch.no_grad():
        fast = fe(x)  # onnxruntime
    with torch.enable_grad():
        slow = fe(x)  # torch interpreter (the one exported to ONNX)
    assert torch.allclose(fast, slow.detach(), atol=1e-4)


def test_no_parameters_no_saved_state_and_faces_of_any_size(fe):
    assert list(fe.parameters()) == [] and fe.state_dict() == {}
    net = FaceFeatureLinear(8)
    assert set(net.state_dict()) == {"head.2.weight", "head.2.bias"}
    with torch.no_grad():
        assert net(torch.rand(2, 1, 64, 64)).shape == (2, 8)


def test_pooling_matrix_is_adaptive_average_pooling():
    u = torch.rand(2, 5, 8, 8)
    a = torch.as_tensor(pooling_matrix(8, 3), dtype=torch.float32)
    assert torch.allclose(a @ u @ a.T, F.adaptive_avg_pool2d(u, 3), atol=1e-6)


def test_other_weights_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "centerface.onnx"
    fake.write_bytes(b"not the model")
    monkeypatch.setattr("privfer.faces.detect.centerface_model_file", lambda: fake)
    with pytest.raises(PrivferError, match="not the CenterFace weights"):
        CenterFaceFeatures()


def test_dp_training_on_face_features_learns_and_loads(tiny_fer, tmp_path):
    cfg = TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model="face-linear", epsilon=8.0, delta=1e-3,
                                     epochs=6, batch_size=70, physical_batch_size=64, lr=16.0, max_grad_norm=0.1,
                                     aug_mult=2, seed=0, threads=1, out=str(tmp_path / "run")))
    run = train(cfg, progress=False, log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["model"] == "face-linear" and 0 < card["epsilon_spent"] <= 8.0
    lm = load_model(str(run / "model.safetensors"))
    from privfer.data.cache import load_faces
    val = load_faces(f"fer2013:{tiny_fer}@val")
    acc = float((lm.probs(val.pixels).argmax(1) == val.labels).mean())
    assert acc > 0.5  # 7 classes: chance is 1/7; the synthetic classes are easy
    assert np.isfinite(lm.probs(val.pixels[:2])).all()


def test_card_names_the_pretrained_frontend(tiny_fer, tmp_path):
    cfg = TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model="face-linear", epsilon=8.0, delta=1e-3,
                                     epochs=1, batch_size=70, physical_batch_size=64, lr=16.0, seed=0, threads=1,
                                     out=str(tmp_path / "run")))
    card = json.loads((train(cfg, progress=False, log=lambda *_: None) / "model_card.json").read_text())
    assert card["pretrained_frontend"]["sha256"] == ff.CENTERFACE_SHA256
    assert "WIDER FACE" in card["pretrained_frontend"]["trained_on"]


def test_mirror_average_is_flip_invariant_and_reuses_the_cache(fe):
    from privfer.train.features import cached, mirror_views

    net = FaceFeatureLinear(7, mirror_average=True).eval()
    torch.nn.init.normal_(net.head[-1].weight)
    x = torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x.flip(-1)), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(net.frontend(x), (fe(x) + fe(x.flip(-1))) / 2, rtol=1e-4, atol=1e-4)
    assert not mirror_views(net.frontend, True) and mirror_views(fe, True)  # mirroring is no augmentation for it
    px = (np.random.default_rng(0).random((4, 48, 48)) * 255).astype(np.uint8)
    hashes = np.array([f"mirror-average-{i}" for i in range(4)])
    a, b, avg = cached(fe, px, hashes), cached(fe, px, hashes, True), cached(net.frontend, px, hashes)
    np.testing.assert_allclose(avg, (a.astype(np.float32) + b.astype(np.float32)) / 2, atol=2e-3)
    assert net.frontend.cache_tag == fe.cache_tag + "-mirror-average"


def test_centred_mirror_averaged_model_trains_and_loads(tiny_fer, tmp_path):
    cfg = TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model="face-linear", epsilon=8.0, delta=1e-3,
                                     model_kwargs={"center": True, "mirror_average": True}, epochs=4, batch_size=50,
                                     physical_batch_size=64, lr=16.0, max_grad_norm=0.1, seed=0, threads=1,
                                     public_split=0.3, public_epochs=2, out=str(tmp_path / "run")))
    run = train(cfg, progress=False, log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["model_kwargs"]["mirror_average"] and card["model_kwargs"]["center"]
    assert card["feature_center"]["mirror_averaged"] is False  # the features are already averaged
    assert card["feature_center"]["source"].startswith("public data")  # 140 private faces: too few for a release
    lm = load_model(str(run))
    from privfer.data.cache import load_faces
    val = load_faces(f"fer2013:{tiny_fer}@val")
    np.testing.assert_allclose(lm.logits(val.pixels), lm.logits(val.pixels[:, :, ::-1].copy()), atol=1e-4)
    assert float((lm.probs(val.pixels).argmax(1) == val.labels).mean()) > 0.5
    from privfer.infer.onnx import onnx_model

    assert np.abs(onnx_model(lm).logits(val.pixels[:5]) - lm.logits(val.pixels[:5])).max() < 1e-3  # exports


def test_hidden_layer_head_trains_without_dp_loads_and_exports(tiny_fer, tmp_path):
    """``hidden=H`` (fer2013-nonprivate's head): one GELU layer of H units, dropout on the classifier's input;
    the linear head keeps its layout, so shipped linear models load unchanged."""
    net = FaceFeatureLinear(7, hidden=16, dropout=0.5)
    shapes = [tuple(p.shape) for p in net.head.parameters()]
    assert shapes == [(16, 2592), (16,), (7, 16), (7,)]
    assert [type(m).__name__ for m in FaceFeatureLinear(7).head] == ["Flatten", "Dropout", "Linear"]
    with pytest.raises(PrivferError, match="hidden"):
        FaceFeatureLinear(7, hidden=-1)
    cfg = TrainConfig.from_dict(dict(public=f"fer2013:{tiny_fer}", model="face-linear", public_epochs=6,
                                     model_kwargs={"center": True, "hidden": 32, "dropout": 0.2}, public_lr=3e-3,
                                     seed=0, threads=1, out=str(tmp_path / "run")))
    run = train(cfg, progress=False, log=lambda *_: None)
    assert json.loads((run / "model_card.json").read_text())["model_kwargs"]["hidden"] == 32
    lm = load_model(str(run))
    from privfer.data.cache import load_faces
    val = load_faces(f"fer2013:{tiny_fer}@val")
    assert float((lm.probs(val.pixels).argmax(1) == val.labels).mean()) > 0.5
    from privfer.infer.onnx import onnx_model

    assert np.abs(onnx_model(lm).logits(val.pixels[:5]) - lm.logits(val.pixels[:5])).max() < 1e-3  # exports


def test_model_kwargs_flag_merges_into_the_config_and_a_hidden_layer_trains_under_dp(tiny_fer, tmp_path):
    """``privfer train --model-kwargs JSON`` adds to (or overrides) the config's model options; a hidden-layer head
    trains with DP-SGD (Opacus' per-sample gradients for both layers); bad JSON is a one-line error."""
    from privfer.cli import main

    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(f"private: fer2013:{tiny_fer}\nmodel: face-linear\nmodel_kwargs: {{center: true, dropout: 0.1}}\n"
                       "epsilon: 8.0\ndelta: 1.0e-3\nepochs: 1\nbatch_size: 64\nmax_grad_norm: 0.1\nthreads: 1\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfgfile), "--model-kwargs", '{"hidden": 8, "dropout": 0.0}',
                 "--out", str(run), "--quiet"]) == 0
    card = json.loads((run / "model_card.json").read_text())
    assert card["model_kwargs"] == {"center": True, "dropout": 0.0, "hidden": 8} and 0 < card["epsilon_spent"] <= 8.0
    assert tuple(load_model(str(run)).net.head[2].weight.shape) == (8, 2592)
    for bad in ("{hidden: 8}", "[8]"):
        assert main(["train", "--config", str(cfgfile), "--model-kwargs", bad, "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
