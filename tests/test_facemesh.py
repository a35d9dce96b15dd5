"""MediaPipe Face Mesh's trunk as a fixed front-end (``facemesh-linear``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import privfer.models.facemesh as fm
from privfer.errors import PrivferError
from privfer.models.facefeat import CenterFaceFeatures
from privfer.models.facemesh import TAPS, FaceFeatures, FaceMeshFeatures, FaceMeshLinear, FaceMeshNet
from privfer.train.config import TrainConfig
from privfer.train.loop import train

REFERENCE = Path(__file__).parent / "data" / "facemesh_tflite_reference.npz"


def test_network_gives_the_tflite_interpreters_tensors():
    """The fixture holds the TFLite interpreter's own tap tensors for this fixed input
    (written by tools/facemesh_weights.py when it converted the weights)."""
    x = np.random.default_rng(0).random((1, 192, 192, 3), dtype=np.float32)
    ref = np.load(REFERENCE)
    with torch.no_grad():
        ours = FaceMeshNet().maps(torch.from_numpy(x).permute(0, 3, 1, 2))
    for t, a in zip(TAPS, ours):
        assert a.shape == ref[t].shape
        assert np.abs(a.numpy() - ref[t]).max() < 1e-4 * np.abs(ref[t]).max()


def test_no_parameters_no_saved_state_any_face_size():
    fe = FaceMeshFeatures().eval()
    assert list(fe.parameters()) == [] and fe.state_dict() == {}
    with torch.no_grad():
        assert fe(torch.rand(2, 1, 48, 48)).shape == (2, 160, 3, 3)
        assert fe(torch.rand(1, 1, 64, 64)).shape == (1, 160, 3, 3)
    net = FaceMeshLinear(7)
    assert set(net.state_dict()) == {"head.2.weight", "head.2.bias"}
    assert FaceFeatures.out_channels == CenterFaceFeatures.out_channels + 160
    with torch.no_grad():
        assert net(torch.rand(3, 1, 48, 48)).shape == (3, 7)


def test_features_are_normalised_per_image_and_mirror_sensitive():
    fe = FaceMeshFeatures().eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        f = fe(x)
        g = fe(x.flip(-1))
    for part in f.split(list(TAPS.values()), dim=1):  # each tap: zero mean, std 1/2 per image
        assert torch.allclose(part.flatten(1).mean(1), torch.zeros(2), atol=1e-4)
        assert torch.allclose(part.flatten(1).std(1, unbiased=False), torch.full((2,), 0.5), atol=1e-3)
    assert not torch.allclose(f, g)


def test_other_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(fm.WEIGHTS), framework="pt") as f:
        meta = f.metadata()
    w = load_file(str(fm.WEIGHTS))
    k = sorted(w)[0]
    w[k] = w[k] + 1
    save_file(w, str(tmp_path / "w.safetensors"), metadata=meta)
    with pytest.raises(PrivferError, match="not the Face Mesh weights"):
        FaceMeshNet(tmp_path / "w.safetensors")
    with pytest.raises(PrivferError, match="not found"):
        FaceMeshNet(tmp_path / "missing.safetensors")


def test_dp_training_and_card(tiny_fer, tmp_path):
    cfg = TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model="facemesh-linear", epsilon=8.0, delta=1e-3,
                                     epochs=2, batch_size=70, physical_batch_size=64, lr=16.0, max_grad_norm=0.1,
                                     seed=0, threads=1, out=str(tmp_path / "run")))
    card = json.loads((train(cfg, progress=False, log=lambda *_: None) / "model_card.json").read_text())
    assert card["model"] == "facemesh-linear" and 0 < card["epsilon_spent"] <= 8.0
    assert fm.WEIGHTS_SHA256 in card["pretrained_frontend"]["sha256"]
    assert "Face Mesh" in card["pretrained_frontend"]["frontend"]


_PEAK = """
import re, sys, torch
from privfer.models.facemesh import FaceMeshNet

def peak_kb():  # VmHWM: this process's peak resident memory (ru_maxrss would count the parent's, kept across exec)
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

torch.set_num_threads(1)
net = FaceMeshNet()
if sys.argv[1] == "hold":  # the interpreter as it was: every layer's output kept until the end
    net._release = [[] for _ in net.layers]
x = torch.rand(48, 3, 192, 192)
with torch.inference_mode():
    net.maps(x[:1])
    before = peak_kb()
    net.maps(x)
print(peak_kb() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads peak memory from Linux's /proc")
def test_interpreter_frees_each_layer_output_after_its_last_use():
    """Peak memory of one batch: holding every layer's output took a loss audit of a Face Mesh model to
    20 GB; freeing them after their last use needs a fraction of that (measured in fresh processes)."""
    import subprocess
    import sys

    net = FaceMeshNet()
    freed = {t for step in net._release for t in step}
    assert not freed & set(TAPS) and "input_1" in freed
    peak = {m: int(subprocess.run([sys.executable, "-c", _PEAK, m], capture_output=True, text=True, check=True)
                   .stdout.split()[-1]) for m in ("free", "hold")}
    assert peak["hold"] > 300_000 and peak["free"] < peak["hold"] / 3, peak  # kB


def test_release_plan_frees_after_the_last_reader_and_keeps_outputs():
    from privfer.models.layers import release_plan

    # step i reads: x -> a; a -> b; b and a (a skip) -> c; c -> d. c is a kept output.
    plan = release_plan([["x"], ["a"], ["b", "a"], ["c"]], keep={"c"})
    assert [sorted(p) for p in plan] == [["x"], [], ["a", "b"], []]


def test_large_batches_run_in_chunks_with_the_same_features(monkeypatch):
    """Without gradients the heavy front-ends split a large batch (bounded memory); the features are the same."""
    import privfer.models.layers as layers

    x = torch.rand(7, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    fe = FaceFeatures().eval()
    with torch.no_grad():
        whole = fe(x)
        calls = []
        monkeypatch.setattr(layers, "MAX_FRONTEND_BATCH", 3)
        for m in (fe.centerface, fe.facemesh):
            inner = m._features
            monkeypatch.setattr(m, "_features", lambda c, inner=inner: calls.append(len(c)) or inner(c))
        chunked = fe(x)
    assert calls == [3, 3, 1, 3, 3, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)


def test_tuned_trunk_starts_as_shipped_and_trains_only_from_tune_from():
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    fixed, tuned = FaceMeshFeatures().eval(), FaceMeshFeatures(tuned=True, tune_from=40).eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), fixed(x))
    convs = tuned.net.convs
    assert len(convs) == 38 and list(tuned.net.buffers())  # the PReLU slopes stay fixed buffers
    tuned(x).sum().backward()
    for i, c in convs.items():
        assert c.weight.requires_grad == (int(i) >= 40)
        assert (c.weight.grad is not None) == (int(i) >= 40)


def test_tuned_model_is_valid_under_opacus():
    """Per-sample gradients for the trained convolutions and the head; none for the fixed layers."""
    from opacus import GradSampleModule

    from privfer.models.facemesh import FaceMeshTuned

    gs = GradSampleModule(FaceMeshTuned(7, hidden=8, tune_from=70))
    gs(torch.rand(3, 1, 48, 48)).sum().backward()
    net = gs._module
    assert net.facemesh.net.convs["75"].weight.grad_sample.shape[0] == 3
    assert getattr(net.facemesh.net.convs["66"].weight, "grad_sample", None) is None
    assert net.head[1].weight.grad_sample.shape == (3, 8, 4032)


def test_tuned_model_trains_saves_and_loads_its_trunk(tiny_fer, tmp_path):
    from safetensors.torch import load_file

    from privfer.models import load_model

    cfg = TrainConfig.from_dict(dict(public=f"fer2013:{tiny_fer}", model="facemesh-tuned",
                                     model_kwargs={"hidden": 8, "tune_from": 70}, public_epochs=1,
                                     public_batch_size=70, public_lr=1e-2, augment=True, seed=0, threads=1,
                                     out=str(tmp_path / "run")))
    run = train(cfg, progress=False, log=lambda *_: None)
    shipped = FaceMeshFeatures(tuned=True).net.convs
    saved = load_file(str(run / "model.safetensors"))
    assert torch.equal(saved["facemesh.net.convs.0.weight"], shipped["0"].weight.detach())  # fixed
    assert not torch.equal(saved["facemesh.net.convs.75.weight"], shipped["75"].weight.detach())  # trained
    m = load_model(run)
    assert torch.equal(m.net.facemesh.net.convs["75"].weight.detach(), saved["facemesh.net.convs.75.weight"])
    assert m.predict(np.random.default_rng(0).integers(0, 255, (2, 48, 48), dtype=np.uint8))[1].shape == (2,)
    card = json.loads((run / "model_card.json").read_text())
    assert "trained on this card's data as part of the model" in card["pretrained_frontend"]["note"]


def _fixed_feature_run(tiny_fer, out, **kwargs):
    """A trained facemesh-linear head (centre, mirror averaging, one hidden layer) on the tiny dataset."""
    cfg = TrainConfig.from_dict(dict(public=f"fer2013:{tiny_fer}", model="facemesh-linear",
                                     model_kwargs={"center": True, "mirror_average": True, "hidden": 8, **kwargs},
                                     public_epochs=2, public_batch_size=32, public_lr=1e-2, seed=0, threads=1,
                                     out=str(out)))
    return train(cfg, progress=False, log=lambda *_: None)


def test_tuned_model_started_from_a_fixed_feature_head_is_that_model(tiny_fer, tmp_path):
    """init_from copies the head (and its centre) by name: before any training step the tuned model's logits are
    the fixed-feature model's."""
    from privfer.models import load_model
    from privfer.models.facemesh import FaceMeshTuned
    from privfer.models.io import init_weights

    run = _fixed_feature_run(tiny_fer, tmp_path / "fixed")
    fixed = load_model(run)
    tuned = FaceMeshTuned(7, hidden=8, center=True, mirror_average=True).eval()
    about = init_weights(tuned, run, fixed.classes)
    assert about["tensors"] == sorted(fixed.net.state_dict()) and "head.0.mean" in about["tensors"]
    assert about["its_model"] == "facemesh-linear" and "no differential privacy" in about["its_guarantee"]
    x = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), fixed.net(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(PrivferError, match=r"init_from .*: its tensor head.2.bias \(8,\) does not fit this model "
                                           r"\(shape \(16,\) there\)"):
        init_weights(FaceMeshTuned(7, hidden=16, center=True), run, fixed.classes)
    with pytest.raises(PrivferError, match="its classes .* are not this run's"):
        init_weights(tuned, run, fixed.classes[::-1])
    with pytest.raises(PrivferError, match="nowhere: not a run directory"):
        init_weights(tuned, "nowhere", fixed.classes)


def test_init_from_trains_on_from_the_model_and_says_so_in_the_card(tiny_fer, tmp_path):
    from safetensors.torch import load_file

    run = _fixed_feature_run(tiny_fer, tmp_path / "fixed")
    cfg = TrainConfig.from_dict(dict(public=f"fer2013:{tiny_fer}", model="facemesh-tuned", init_from=str(run),
                                     model_kwargs={"hidden": 8, "tune_from": 70, "center": True,
                                                   "mirror_average": True},
                                     public_epochs=1, public_batch_size=70, public_lr=1e-3, seed=0, threads=1,
                                     out=str(tmp_path / "tuned")))
    tuned = train(cfg, progress=False, log=lambda *_: None)
    before, after = load_file(str(run / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    assert torch.equal(after["head.0.mean"], before["head.0.mean"])  # the centre is kept, not refit
    assert not torch.equal(after["head.2.weight"], before["head.2.weight"])  # trained on from there
    card = json.loads((tuned / "model_card.json").read_text())
    init = card["initialised_from"]
    assert init["model"] == str(run) and len(init["weights_sha256"]) == 64
    assert init["its_public_data"]["spec"] == f"fer2013:{tiny_fer}@train" and "no guarantee of this card" in init["note"]


def test_init_from_is_refused_with_private_data_and_a_centre_needs_a_source(tiny_fer, tmp_path):
    with pytest.raises(PrivferError, match="init_from: a run with private data cannot start from another model"):
        TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", init_from="ferplus-dp8"))
    cfg = TrainConfig.from_dict(dict(public=f"fer2013:{tiny_fer}", model="facemesh-tuned",
                                     model_kwargs={"hidden": 8, "center": True}, public_epochs=1, threads=1,
                                     out=str(tmp_path / "run")))
    with pytest.raises(PrivferError, match="no fixed front-end to fit a feature centre on"):
        train(cfg, progress=False, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
