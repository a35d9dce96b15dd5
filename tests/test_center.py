"""Feature centring (``model_kwargs: {center: true}``): the privately released mean, its accounting, resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from privfer.cli import main
from privfer.errors import PrivferError
from privfer.models.io import load_model
from privfer.models.layers import FeatureCenter
from privfer.train.center import center_of, feature_bound, set_private_center, set_public_center
from privfer.train.config import TrainConfig
from privfer.train.loop import train
from privfer.train.privacy import PrivacyState, epsilon_of


class Faces:
    """The part of a FaceSet the centre needs: pixels and content hashes."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.hashes = np.array([f"toy-{i}-{int(p.sum())}" for i, p in enumerate(pixels)])

    def __len__(self):
        return len(self.pixels)


class Toy(torch.nn.Module):
    """A parameter-free front-end [N, 1, 48, 48] -> [N, 1, 4, 4], normalised per image, plus a centred head."""

    def __init__(self):
        super().__init__()
        self.frontend = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.GroupNorm(1, 1, affine=False))
        self.head = torch.nn.Sequential(FeatureCenter((1, 4, 4)), torch.nn.Flatten(), torch.nn.Linear(16, 2))


def _faces(n: int, seed: int = 0) -> Faces:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (n, 48, 48)).astype(np.uint8)
    img[:, :24, :24] += 150  # a common component: the top-left quarter is bright in every face
    return Faces(img)


def test_release_is_planned_and_accounted():
    plain = PrivacyState.plan(3.0, 1e-5, 20_000, 1000, 10, 1.0)
    p = PrivacyState.plan(3.0, 1e-5, 20_000, 1000, 10, 1.0, releases=[5.0])
    assert p.noise_multiplier > plain.noise_multiplier  # the steps pay for the release
    p.record_release(5.0)
    with pytest.raises(PrivferError, match="no room"):
        p.record_release(5.0)  # only one was planned
    while p.steps < p.planned_steps:
        p.record_step()
    assert p.history[0] == [5.0, 1.0, 1]
    assert 2.9 < p.epsilon() <= 3.0
    assert epsilon_of(p.history[1:], 1e-5) < p.epsilon()  # the release is counted
    with pytest.raises(PrivferError, match="alone spend"):
        PrivacyState.plan(1.0, 1e-5, 20_000, 1000, 10, 1.0, releases=[0.5])


def test_private_center_is_a_noisy_clipped_mean():
    torch.manual_seed(0)
    net, faces = Toy(), _faces(3000)
    bound = feature_bound(net.frontend)
    assert 3.9 < bound <= 4.0  # 16 features normalised per image (GroupNorm's epsilon takes a little)
    p = PrivacyState.plan(8.0, 1e-5, len(faces), 300, 2, 1.0, releases=[2.0])
    set_private_center(net, net.frontend, faces, len(faces), mirror=False, privacy=p, noise_multiplier=2.0)
    with torch.no_grad():
        v = net.frontend(torch.from_numpy(faces.pixels).float()[:, None] / 255)
    exact = (v * (bound / v.flatten(1).norm(dim=1).clamp(min=bound))[:, None, None, None]).mean(0)  # clipped
    err = center_of(net).mean - exact
    assert exact.abs().max() > 1.0  # there was something to centre
    assert err.abs().max() < 6 * 2.0 * bound / len(faces)  # within the noise's 6 standard deviations
    assert err.abs().max() > 0  # noise was added
    assert p.history == [[2.0, 1.0, 1]]


def test_public_center_is_exact():
    net, faces = Toy(), _faces(200)
    set_public_center(net, net.frontend, faces, mirror=True)
    with torch.no_grad():
        x = torch.from_numpy(faces.pixels).float()[:, None] / 255
        exact = (net.frontend(x).mean(0) + net.frontend(x.flip(-1)).mean(0)) / 2
    torch.testing.assert_close(center_of(net).mean, exact, rtol=0, atol=2e-3)  # float16 features


def _cfg(tiny_fer, out, **kw):
    return TrainConfig.from_dict(dict(private=f"fer2013:{tiny_fer}", model="face-linear", model_kwargs={"center": True},
                                      epsilon=3.0, delta=1e-3, epochs=2, batch_size=40, physical_batch_size=64,
                                      lr=16.0, max_grad_norm=0.1, center_noise=10.0, seed=0, threads=1,
                                      out=str(out), **kw))


def test_training_releases_the_center_once_and_resumes(tiny_fer, tmp_path):
    full = train(_cfg(tiny_fer, tmp_path / "full"), progress=False, log=lambda *_: None)
    card = json.loads((full / "model_card.json").read_text())
    assert card["accountant_history"][0] == [10.0, 1.0, 1] and 2.5 < card["epsilon_spent"] <= 3.0
    assert card["feature_center"]["source"].startswith("private data") and card["feature_center"]["noise_multiplier"] == 10.0
    mean = load_file(str(full / "model.safetensors"))["head.0.mean"]
    assert mean.shape == (288, 3, 3) and mean.abs().max() > 0.1
    lm = load_model(str(full))  # the centre is part of the saved model
    torch.testing.assert_close(center_of(lm.net).mean, mean)

    def stop_after_first_epoch(msg):
        if "epoch 1:" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_fer, tmp_path / "cut"), progress=False, log=stop_after_first_epoch)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    cut = json.loads((tmp_path / "cut" / "model_card.json").read_text())
    assert cut["accountant_history"] == card["accountant_history"]  # released once, not again on resume
    torch.testing.assert_close(load_file(str(tmp_path / "cut" / "model.safetensors"))["head.0.mean"], mean)


def test_public_data_gives_the_center_for_free(tiny_fer, tmp_path):
    run = train(_cfg(tiny_fer, tmp_path / "run", public_split=0.3, public_epochs=1), progress=False,
                log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["feature_center"]["source"].startswith("public data")
    assert all(h[1] < 1.0 for h in card["accountant_history"])  # no release: the steps alone
