"""The public feature subspace (``model_kwargs: {project: K}``): its basis, folding it away, and training with it."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from privfer.cli import main
from privfer.errors import PrivferError
from privfer.models.facefeat import FaceFeatureLinear
from privfer.models.io import INT8_SCALE, dequantize_int8, load_model, quantize_int8
from privfer.train.config import TrainConfig
from privfer.train.loop import train
from privfer.train.subspace import fold_projection, projection_of, public_basis


def test_basis_is_the_top_principal_directions():
    g = torch.Generator().manual_seed(0)
    planted = torch.linalg.qr(torch.randn(50, 3, generator=g))[0]  # the data varies in 3 of 50 directions
    x = 5.0 + torch.randn(400, 3, generator=g) * torch.tensor([9.0, 6.0, 4.0]) @ planted.T
    x = x + 0.01 * torch.randn(400, 50, generator=g)
    basis, kept = public_basis(x, 3)
    assert kept > 0.999  # the planted directions hold all but the small noise
    torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)  # orthonormal columns
    torch.testing.assert_close(basis @ basis.T, planted @ planted.T, atol=1e-3, rtol=0)  # the planted span
    torch.testing.assert_close(public_basis(x.flip(0), 3)[0], basis, atol=1e-5, rtol=0)  # deterministic, signs fixed
    with pytest.raises(PrivferError, match="at most 50 principal directions"):
        public_basis(x, 51)


def test_whitened_basis_equalises_the_variances_and_keeps_their_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 20, generator=g) * torch.linspace(0.5, 6.0, 20)
    plain = public_basis(x, 5)[0]
    half, full = public_basis(x, 5, whiten=0.5)[0], public_basis(x, 5, whiten=1.0)[0]
    var = {a: ((x - x.mean(0)) @ b).var(0) for a, b in ((0, plain), (0.5, half), (1, full))}
    torch.testing.assert_close(var[1], var[1].mean().expand(5), rtol=1e-4, atol=0)  # whitened: all equal
    assert var[0].max() / var[0].min() > var[0.5].max() / var[0.5].min() > 1.0  # a = 0.5: in between
    for a in (0.5, 1):
        torch.testing.assert_close(var[a].sum(), var[0].sum(), rtol=1e-4, atol=0)  # the total variance is kept
    torch.testing.assert_close(full / full.norm(dim=0), plain, atol=1e-5, rtol=0)  # the same directions, rescaled
    with pytest.raises(PrivferError, match="project_whiten scales the public feature subspace"):
        TrainConfig.from_dict(dict(public_split=0.1, private="fer2013:x", model="face-linear", project_whiten=1.0))
    with pytest.raises(PrivferError, match=r"project_whiten must be in \[-1, 1\]"):
        TrainConfig.from_dict(dict(public_split=0.1, private="fer2013:x", model="face-linear",
                                   model_kwargs={"project": 4}, project_whiten=2.0))


@pytest.mark.parametrize("hidden", [0, 16])
def test_folding_keeps_the_function_and_gives_the_plain_network(hidden):
    torch.manual_seed(0)
    net = FaceFeatureLinear(7, center=True, hidden=hidden, project=8, dropout=0.5).eval()
    projection_of(net).basis.copy_(torch.linalg.qr(torch.randn(2592, 8))[0])
    for p in net.head.parameters():
        torch.nn.init.normal_(p)
    feats = torch.randn(5, 288, 3, 3)
    before = net.head(feats)
    fold_projection(net)
    assert projection_of(net) is None
    torch.testing.assert_close(net.head(feats), before, atol=1e-4, rtol=1e-4)
    plain = FaceFeatureLinear(7, center=True, hidden=hidden, dropout=0.5)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def test_projection_needs_public_data(tiny_fer):
    with pytest.raises(PrivferError, match="subspace is learnt from public data"):
        TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model="face-linear", model_kwargs={"project": 8}))
    with pytest.raises(PrivferError, match="project must be in"):
        FaceFeatureLinear(7, project=2592)


def _cfg(tiny_fer, out, **kw):
    return TrainConfig.from_dict({**dict(private=f"fer2013:{tiny_fer}", public_split=0.3, public_epochs=2,
                                         model="face-linear", model_kwargs={"center": True, "hidden": 16, "project": 6},
                                         epsilon=3.0, delta=1e-3, epochs=2, batch_size=40, physical_batch_size=64,
                                         clipping="ghost", lr=4.0, max_grad_norm=0.1, seed=0, threads=1,
                                         out=str(out)), **kw})


def _check_run(run):
    card = json.loads((run / "model_card.json").read_text())
    assert "project" not in card["model_kwargs"] and card["model_kwargs"]["hidden"] == 16
    assert card["feature_subspace"]["dimensions"] == 6 and card["feature_subspace"]["source"].startswith("public")
    first = load_file(str(run / "model.safetensors"))["head.2.weight"]  # [16, 2592], folded: rank <= 6
    assert first.shape == (16, 2592) and 3 <= torch.linalg.matrix_rank(first, rtol=1e-4) <= 6  # trained, in it
    lm = load_model(str(run))  # loads as the plain hidden-layer network
    assert projection_of(lm.net) is None


def test_training_learns_in_the_public_subspace_and_resumes(tiny_fer, tmp_path):
    logs = []
    _check_run(train(_cfg(tiny_fer, tmp_path / "run"), progress=False, log=logs.append))
    assert any(m.startswith("feature subspace: top 6 principal directions") for m in logs)

    def stop_after_first_epoch(msg):
        if "epoch 1:" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_fer, tmp_path / "cut"), progress=False, log=stop_after_first_epoch)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0  # the basis comes from the checkpoint
    _check_run(tmp_path / "cut")


def test_float16_weights_halve_the_file_load_as_float32_and_are_calibrated_as_stored(tiny_fer, tmp_path, capsys):
    """``weights_dtype: float16`` stores the same trained weights (projection folded in) rounded to half
    precision; loading widens them again, and the card's calibration is that of the rounded weights."""
    r32 = train(_cfg(tiny_fer, tmp_path / "f32"), progress=False, log=lambda *_: None)
    r16 = train(_cfg(tiny_fer, tmp_path / "f16", weights_dtype="float16"), progress=False, log=lambda *_: None)
    w32, w16 = load_file(str(r32 / "model.safetensors")), load_file(str(r16 / "model.safetensors"))
    assert sorted(w16) == sorted(w32)
    for k, v in w16.items():
        assert v.dtype == (torch.float16 if w32[k].is_floating_point() else w32[k].dtype), k
        assert torch.equal(v, w32[k].to(v.dtype)), k  # the same training; only the storage differs
    assert (r16 / "model.safetensors").stat().st_size < 0.55 * (r32 / "model.safetensors").stat().st_size
    net = load_model(str(r16)).net
    for k, v in net.state_dict().items():
        if k in w16 and v.is_floating_point():
            assert v.dtype == torch.float32 and torch.equal(v, w16[k].float()), k
    card = json.loads((r16 / "model_card.json").read_text())
    assert card["config"]["weights_dtype"] == "float16"
    # refitting the calibration on the loaded model and the same validation data gives the card's own temperature
    # (to 1e-5 here: features through the front-end, not the cache; the unrounded weights' is 3e-4 away)
    assert main(["calibrate", str(r16), "--data", card["calibrated_on"], "--out", str(tmp_path / "re")]) == 0
    again = json.loads((tmp_path / "re" / "model_card.json").read_text())
    assert again["temperature"] == pytest.approx(card["temperature"], rel=5e-5)
    with pytest.raises(PrivferError, match="weights_dtype must be one of float32, float16, int8, got 'bfloat16'"):
        _cfg(tiny_fer, tmp_path / "x", weights_dtype="bfloat16")


def test_int8_quantisation_is_per_row_and_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 3, 4, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 0.0, 2.0]).view(5, 1, 1)
    q, scale = quantize_int8(t)
    assert q.dtype == torch.int8 and q.shape == t.shape and scale.shape == (5,)
    assert q.abs().amax(dim=(1, 2)).tolist() == [127, 127, 127, 0, 127]  # each row's peak at full scale
    back = dequantize_int8(q, scale)
    assert torch.all((back - t).abs() <= scale.view(5, 1, 1) / 2 + 1e-7)  # half a step of its own row
    assert torch.equal(back[3], torch.zeros(3, 4))  # an all-zero row stays zero


def test_int8_weights_store_matrices_with_scales_load_as_float32_and_are_calibrated_as_stored(tiny_fer, tmp_path):
    """``weights_dtype: int8`` stores each weight matrix as int8 with per-row scales and every other floating
    tensor as float16; loading widens them to float32, and the card's calibration is that of those weights."""
    r32 = train(_cfg(tiny_fer, tmp_path / "f32"), progress=False, log=lambda *_: None)
    r8 = train(_cfg(tiny_fer, tmp_path / "i8", weights_dtype="int8"), progress=False, log=lambda *_: None)
    w32, w8 = load_file(str(r32 / "model.safetensors")), load_file(str(r8 / "model.safetensors"))
    matrices = [k for k, v in w32.items() if v.is_floating_point() and v.dim() >= 2]
    assert matrices and sorted(w8) == sorted([*w32, *(k + INT8_SCALE for k in matrices)])
    for k, v in w32.items():
        if k in matrices:  # the same training; only the storage differs
            assert w8[k].dtype == torch.int8, k
            torch.testing.assert_close(dequantize_int8(w8[k], w8[k + INT8_SCALE]), v, rtol=0,
                                       atol=float(w8[k + INT8_SCALE].max()) / 2 + 1e-7)
        else:
            assert torch.equal(w8[k], v.half() if v.is_floating_point() else v), k
    net = load_model(str(r8)).net
    for k, v in net.state_dict().items():
        if k in matrices:
            assert v.dtype == torch.float32 and torch.equal(v, dequantize_int8(w8[k], w8[k + INT8_SCALE])), k
    for broken in ({k: v for k, v in w8.items() if k != matrices[0] + INT8_SCALE},  # scales lost
                   {**w8, matrices[0] + INT8_SCALE: w8[matrices[0] + INT8_SCALE][:1]}):  # too few of them
        save_file(broken, str(tmp_path / "broken.safetensors"))
        shutil.copy(r8 / "model_card.json", tmp_path / "broken.json")
        with pytest.raises(PrivferError, match=f"weights do not fit the model card .*int8 tensor {matrices[0]} without"):
            load_model(str(tmp_path / "broken.safetensors"))
    card = json.loads((r8 / "model_card.json").read_text())
    assert main(["calibrate", str(r8), "--data", card["calibrated_on"], "--out", str(tmp_path / "re")]) == 0
    again = json.loads((tmp_path / "re" / "model_card.json").read_text())
    assert again["temperature"] == pytest.approx(card["temperature"], rel=5e-5)


def test_public_mix_trains_with_the_same_epsilon_and_the_same_update_under_both_clippings(tiny_fer, tmp_path):
    runs = {(mix, c): train(_cfg(tiny_fer, tmp_path / f"{mix}-{c}", public_mix=mix, clipping=c), progress=False,
                            log=lambda *_: None) for mix, c in ((0.0, "ghost"), (1.0, "ghost"), (1.0, "flat"))}
    cards = {k: json.loads((r / "model_card.json").read_text()) for k, r in runs.items()}
    assert len({c["epsilon_spent"] for c in cards.values()}) == 1 and cards[1.0, "ghost"]["config"]["public_mix"] == 1.0
    w = {k: load_file(str(r / "model.safetensors"))["head.2.weight"] for k, r in runs.items()}
    assert not torch.allclose(w[0.0, "ghost"], w[1.0, "ghost"], atol=1e-3)
    torch.testing.assert_close(w[1.0, "ghost"], w[1.0, "flat"], rtol=1e-4, atol=1e-5)
