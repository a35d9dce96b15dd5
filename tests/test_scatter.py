"""Scattering front-end and training on cached features (issue 6's fixed-feature lever)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import torch.nn.functional as F

from privfer.models.io import load_model
from privfer.models.registry import VERSIONED_OPTIONS, card_kwargs, kwargs_of_card
from privfer.models.scatter import DEFAULT_VARIANT, LOWPASS, Scattering, ScatterNet, gaussian, lowpass_matrix, morlet
from privfer.train.config import TrainConfig
from privfer.train.features import cached, compute
from privfer.train.loop import train


def test_scattering_shape_and_no_saved_state():
    s = Scattering()
    out = s(torch.rand(3, 1, 48, 48))
    assert out.shape == (3, 81, 12, 12) and (out[:, 1:] >= 0).all()  # orders 1-2 are moduli
    assert list(s.parameters()) == [] and s.state_dict() == {}
    net = ScatterNet(7)
    assert all(k.startswith("head.") for k in net.state_dict())


@pytest.mark.parametrize("variant", ["full", "fast"])
def test_wavelets_are_zero_mean_and_scattering_sees_edges(variant):
    w = morlet(17, 1.6, 0.3, 3 * np.pi / 8, 0.5)
    assert abs(w.sum()) < 1e-9
    s = Scattering(variant)
    flat, edge = torch.full((1, 1, 48, 48), 0.5), torch.full((1, 1, 48, 48), 0.2)
    edge[..., 24:] = 0.8
    a, b = s(flat), s(edge)
    if variant == "fast":  # square-root compressed coefficients
        a, b = a ** 2, b ** 2
    assert a[:, 1:].abs().max() < 1e-4 < b[:, 1:].abs().max()  # a flat image has no first/second-order energy
    assert torch.allclose(a[:, 0], torch.full_like(a[:, 0], 0.5), atol=1e-5)  # order 0: the local mean


def test_lowpass_matrices_are_the_padded_gaussian_convolution():
    """The low-pass as two matrix products gives the sums of a reflection-padded 2-D convolution."""
    u = torch.rand(2, 3, 24, 20, dtype=torch.float64)
    for name, (size, sigma) in LOWPASS.items():
        g = gaussian(size, sigma)
        phi = torch.tensor(np.outer(g, g))[None, None]
        p = size // 2
        for stride in (1, 2, 4):
            ref = F.conv2d(F.pad(u.reshape(6, 1, 24, 20), (p, p, p, p), mode="reflect"), phi, stride=stride)
            a, b = (torch.tensor(lowpass_matrix(n, g, stride)) for n in (24, 20))
            torch.testing.assert_close(a @ u @ b.T, ref.reshape(2, 3, 24 // stride, 20 // stride))


def test_fast_variant_is_cheaper_and_close_to_full():
    from privfer.models.registry import count_flops

    full, fast = ScatterNet(7, head="linear", scattering="full"), ScatterNet(7, head="linear", scattering="fast")
    assert count_flops(fast) < 0.5 * count_flops(full)
    x = torch.rand(4, 1, 48, 48)
    a, b = full.frontend(x), fast.frontend(x) ** 2  # the same coefficients, up to the cascade's approximation
    assert a.shape == b.shape and torch.allclose(a[:, 0], b[:, 0], atol=1e-5)
    assert torch.corrcoef(torch.stack([a[:, 1:].flatten(), b[:, 1:].flatten()]))[0, 1] > 0.9
    with pytest.raises(Exception, match="scattering must be one of"):
        Scattering("kymatio")


def test_cards_rebuild_the_network_they_were_trained_with():
    """A card written before the ``scattering`` option existed rebuilds the "full" front-end; new cards name it."""
    assert VERSIONED_OPTIONS["scatter-linear"]["scattering"] == ("full", DEFAULT_VARIANT)
    assert kwargs_of_card({"model": "scatter-linear", "model_kwargs": {}}) == {"scattering": "full"}
    assert card_kwargs("scatter", {}) == {"scattering": DEFAULT_VARIANT}
    assert kwargs_of_card({"model": "scatter", "model_kwargs": card_kwargs("scatter", {})}) == {"scattering": DEFAULT_VARIANT}
    assert card_kwargs("fusion", {"width": 8}) == {"width": 8} == kwargs_of_card({"model": "fusion", "model_kwargs": {"width": 8}})


def test_feature_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVFER_CACHE", str(tmp_path))
    px = np.random.default_rng(0).integers(0, 255, (5, 48, 48), dtype=np.uint8)
    h = np.array(["h1", "h2", "h3", "h4", "h5"])
    cached(Scattering(), px, h)
    assert list(tmp_path.glob("features-*.npy")) == []  # small sets are not written
    a = cached(Scattering(), px, h, min_cached=0)
    assert len(list(tmp_path.glob("features-*.npy"))) == 1
    b = cached(Scattering(), px, h, min_cached=0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, compute(Scattering(), px))
    cached(Scattering(), px, h, mirror=True, min_cached=0)
    cached(Scattering(), px, np.array(["x1", "h2", "h3", "h4", "h5"]), min_cached=0)
    assert len(list(tmp_path.glob("features-*.npy"))) == 3
    other = "full" if DEFAULT_VARIANT == "fast" else "fast"  # another variant: other features, another file
    assert not np.array_equal(cached(Scattering(other), px, h, min_cached=0), a)
    assert len(list(tmp_path.glob("features-*.npy"))) == 4


def test_sets_of_cached_faces_are_gathered_not_computed_again(tmp_path, monkeypatch):
    """A set whose faces are all in sets cached before (an audit's shadow halves of its population) is gathered
    from them: the same features, no front-end pass, no file of its own. A set with a new face is computed, and
    another cache directory knows none of them."""
    from privfer.train import features as F

    monkeypatch.setenv("PRIVFER_CACHE", str(tmp_path / "a"))
    px = np.random.default_rng(1).integers(0, 255, (10, 48, 48), dtype=np.uint8)
    h = np.array([f"g{i}" for i in range(10)])
    fe = Scattering()
    both = np.concatenate([cached(fe, px[:6], h[:6], min_cached=0), cached(fe, px[6:], h[6:], min_cached=0)])
    files = sorted((tmp_path / "a").glob("features-*.npy"))
    assert len(files) == 2
    passes, compute_ = [], F.compute
    monkeypatch.setattr(F, "compute", lambda fe_, pixels, *a, **k: passes.append(len(pixels)) or compute_(fe_, pixels, *a, **k))
    rows = [7, 2, 9, 0]  # from both sets
    np.testing.assert_array_equal(cached(fe, px[rows], h[rows], min_cached=0), both[rows])
    np.testing.assert_array_equal(cached(fe, px[rows], h[rows]), both[rows])  # a small set too
    assert passes == [] and sorted((tmp_path / "a").glob("features-*.npy")) == files
    new = cached(fe, px[[1, 2, 3]], np.array(["g1", "g2", "other"]), min_cached=0)
    np.testing.assert_array_equal(new, compute_(fe, px[[1, 2, 3]]))
    assert passes == [3] and len(list((tmp_path / "a").glob("features-*.npy"))) == 3
    monkeypatch.setenv("PRIVFER_CACHE", str(tmp_path / "b"))
    cached(fe, px[rows], h[rows], min_cached=0)
    assert passes == [3, 4]


@pytest.mark.parametrize("model", ["scatter-linear", "scatter"])
def test_dp_training_on_scattering_features_learns_and_loads(tiny_fer, tmp_path, model):
    epochs = 6 if model == "scatter-linear" else 12  # the CNN head learns the synthetic stripes more slowly
    cfg = TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model=model, epsilon=8.0, delta=1e-3, epochs=epochs,
                                     batch_size=70, physical_batch_size=64, lr=2.0, max_grad_norm=0.1,
                                     aug_mult=2, seed=0, threads=1, out=str(tmp_path / "run")))
    run = train(cfg, progress=False, log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["model"] == model and 0 < card["epsilon_spent"] <= 8.0
    assert card["model_kwargs"] == {"scattering": DEFAULT_VARIANT}  # the card names its front-end
    lm = load_model(str(run / "model.safetensors"))
    assert lm.net.frontend.variant == DEFAULT_VARIANT
    old = tmp_path / "old"  # a card from before the option: rebuilt with the "full" front-end
    old.mkdir()
    (old / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    (old / "model_card.json").write_text(json.dumps({**card, "model_kwargs": {}}))
    assert load_model(str(old / "model.safetensors")).net.frontend.variant == "full"
    from privfer.data.cache import load_faces
    val = load_faces(f"fer2013:{tiny_fer}@val")
    acc = float((lm.probs(val.pixels).argmax(1) == val.labels).mean())
    assert acc > 0.5  # 7 classes: chance is 1/7; the synthetic classes are easy


def test_linear_head_refuses_another_face_size():
    from privfer.errors import PrivferError

    with pytest.raises(PrivferError, match="48x48"):
        ScatterNet(7, head="linear")(torch.rand(1, 1, 64, 64))
    assert ScatterNet(7, head="linear", input_size=64)(torch.rand(2, 1, 64, 64)).shape == (2, 7)
    assert ScatterNet(7)(torch.rand(2, 1, 64, 64)).shape == (2, 7)  # the CNN head pools globally


def test_pooled_linear_head_averages_the_feature_maps():
    """pool=k: the linear head sees k x k averages of the normalised maps (k*k times fewer weights)."""
    from privfer.errors import PrivferError

    net = ScatterNet(7, head="linear", pool=2)
    assert net.head[-1].in_features == 81 * 6 * 6
    torch.nn.init.normal_(net.head[-1].weight)
    x = torch.rand(2, 1, 48, 48)
    f = net.head[0](net.frontend(x))
    expect = F.avg_pool2d(f, 2).flatten(1) @ net.head[-1].weight.T + net.head[-1].bias
    assert torch.allclose(net(x), expect, atol=1e-5)
    for bad in ({"pool": 5}, {"pool": 0}, {"pool": 2, "head": "cnn"}):
        with pytest.raises(PrivferError, match="pool"):
            ScatterNet(7, **{"head": "linear", **bad})
    assert torch.nn.AvgPool2d not in {type(m) for m in ScatterNet(7, head="linear").head}


def test_online_augmentation_and_class_bias_reach_the_card(tiny_fer, tmp_path):
    """feature_cache: false runs the front-end on transformed faces in both stages; class offsets are fit
    on validation, stored in the card and used by LoadedModel.predict for the label."""
    from privfer.errors import PrivferError

    cfg = TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", public_split=0.3, model="scatter-linear",
                                     feature_cache=False, class_bias="balanced", public_epochs=1, epochs=1,
                                     epsilon=8.0, delta=1e-3, batch_size=70, physical_batch_size=64, seed=0,
                                     threads=1, out=str(tmp_path / "run")))
    run = train(cfg, progress=False, log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["class_bias_objective"] == "balanced" and len(card["class_bias"]) == 7
    lm = load_model(str(run / "model.safetensors"))
    from privfer.data.cache import load_faces
    from privfer.models.io import softmax
    val = load_faces(f"fer2013:{tiny_fer}@val")
    z = lm.logits(val.pixels)
    assert card["calibration_version"] == 2  # offsets decide labels; probabilities are softmax(z / T)
    np.testing.assert_allclose(lm.probs(val.pixels), softmax(z, card["temperature"]), rtol=1e-5, atol=1e-7)
    probs, labels = lm.predict(val.pixels)
    np.testing.assert_array_equal(labels, (z / card["temperature"] + np.array(card["class_bias"])).argmax(1))
    with pytest.raises(PrivferError, match="class_bias"):
        TrainConfig.from_dict(dict(private="x:y", class_bias="yes"))


def test_augmented_views_are_fixed_cached_and_drawn_distinct(tmp_path, monkeypatch):
    """aug_views: a face's view j is the same transformed copy in every call, batch and set (seeded by its content
    hash), cached on its own key, mirrored after the transforms; FeatureViews draws K distinct views per face
    from the face, its mirror and the copies."""
    from types import SimpleNamespace

    from privfer.train.data import to_input
    from privfer.train.features import FeatureViews, VIEW_AUGMENT, view_copies

    monkeypatch.setenv("PRIVFER_CACHE", str(tmp_path))
    px = np.random.default_rng(0).integers(0, 255, (6, 48, 48), dtype=np.uint8)
    h = np.array([f"h{i}" for i in range(6)])
    fe = Scattering()
    v1 = cached(fe, px, h, view=1, min_cached=0)
    np.testing.assert_array_equal(v1, cached(fe, px, h, view=1, min_cached=0))  # read back from the cache
    np.testing.assert_array_equal(v1, compute(fe, px, view=1, hashes=h, batch=4))  # drawn again: the same copies
    np.testing.assert_array_equal(v1[[4, 1]], compute(fe, px[[4, 1]], view=1, hashes=h[[4, 1]]))  # in any set
    np.testing.assert_array_equal(v1[[2]], cached(fe, px[[2]], h[[2]], view=1))  # remembered per image
    assert not np.allclose(v1, cached(fe, px, h, min_cached=0))  # not the faces themselves
    assert not np.allclose(v1, compute(fe, px, view=2, hashes=h))  # another view, other transforms
    assert len(list(tmp_path.glob("features-*.npy"))) == 2
    with pytest.raises(ValueError, match="hash"):
        compute(fe, px, view=1)
    copies = view_copies(to_input(px), h, 1)  # the mirrored view: the mirror image of the same copy
    np.testing.assert_array_equal(compute(fe, px, mirror=True, view=1, hashes=h),
                                  fe(copies.flip(-1)).to(torch.float16).numpy())
    assert VIEW_AUGMENT.flip is False
    fs = SimpleNamespace(pixels=px, hashes=h)
    fv = FeatureViews(fe, fs, mirror=True, aug_views=2)
    assert fv.pool.shape[0] == 6  # face, mirror, and two copies with their mirrors
    rows = torch.tensor([0, 3, 5])
    x = fv.views(rows, k=6)
    for i, r in enumerate(rows.tolist()):  # the K = P views of a face are all of its views, each once
        got = x[i * 6:(i + 1) * 6].reshape(6, -1)
        pool = fv.pool[:, r].float().reshape(6, -1)
        match = (got[:, None] == pool[None]).all(-1)
        assert match.any(1).all() and (match.sum(0) == 1).all()
    assert fv.views(rows, k=1).shape == (3, *fv.plain.shape[1:])
    assert FeatureViews(fe, fs, mirror=True).pool is None  # no augmented views: the face and its mirror, as before


def test_aug_views_need_a_fixed_front_end_and_the_cache(tiny_fer, tmp_path):
    from privfer.errors import PrivferError

    base = dict(private=f"fer2013:{tiny_fer}", epsilon=8.0, delta=1e-3, epochs=1, batch_size=70, seed=0, threads=1)
    for bad in ({"aug_views": -1}, {"aug_views": 2, "feature_cache": False}, {"aug_views": 2, "augment": False}):
        with pytest.raises(PrivferError, match="aug.views"):
            TrainConfig.from_dict({**base, "model": "scatter-linear", **bad})
    with pytest.raises(PrivferError, match="no fixed front-end"):
        train(TrainConfig.from_dict({**base, "model": "cnn", "aug_views": 2, "out": str(tmp_path / "cnn")}),
              progress=False, log=lambda *_: None)
    assert not (tmp_path / "cnn").exists()  # refused before the run directory is written
    run = train(TrainConfig.from_dict({**base, "model": "scatter-linear", "aug_views": 2, "aug_mult": 3,
                                       "physical_batch_size": 64, "lr": 2.0, "max_grad_norm": 0.1,
                                       "out": str(tmp_path / "run")}), progress=False, log=lambda *_: None)
    assert json.loads((run / "config.json").read_text())["aug_views"] == 2


def test_cached_sets_are_found_by_later_processes_through_their_index(tmp_path, monkeypatch):
    """Each features file has an index of its faces beside it, so a later process (another run's deduplicated
    training set) gathers its faces from the file without a front-end pass."""
    from privfer.train import features as F

    monkeypatch.setenv("PRIVFER_CACHE", str(tmp_path))
    px = np.random.default_rng(2).integers(0, 255, (8, 48, 48), dtype=np.uint8)
    h = np.array([f"p{i}" for i in range(8)])
    whole = np.array(cached(Scattering(), px, h, min_cached=0))
    assert len(list(tmp_path.glob("index-*.json"))) == 1
    monkeypatch.setattr(F, "_known", {})  # a new process: nothing remembered
    monkeypatch.setattr(F, "_scanned", set())
    monkeypatch.setattr(F, "compute", lambda *a, **k: pytest.fail("features computed again"))
    np.testing.assert_array_equal(cached(Scattering(), px[1:6], h[1:6], min_cached=0), whole[1:6])
    assert len(list(tmp_path.glob("features-*.npy"))) == 1
