"""Training engine: DP accounting, resume, overlap refusal, clipping, augmentation multiplicity, models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants.utils import get_noise_multiplier
from opacus.validators import ModuleValidator
from safetensors.torch import load_file

from privfer.cli import main
from privfer.errors import PrivferError
from privfer.models.registry import MODELS, build_model, count_flops
from privfer.train.config import TrainConfig
from privfer.train.dp import DPStepper
from privfer.train.loop import train
from privfer.train.objective import Objective
from privfer.train.privacy import PrivacyState


def _cfg(tmp_path, name, **kw):
    base = dict(model="cnn", model_kwargs={"widths": [8, 16]}, epochs=2, batch_size=32, physical_batch_size=64,
                lr=0.5, seed=3, threads=1, out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig.from_dict(base)


def _card(run):
    return json.loads((run / "model_card.json").read_text())


def test_dp_run_reports_epsilon_within_target_and_opacus_noise(tiny_fer, tmp_path):
    cfg = _cfg(tmp_path, "dp", private=f"fer2013:{tiny_fer}", epsilon=3.0, delta=1e-3)
    run = train(cfg, progress=False, log=lambda *_: None)
    card = _card(run)
    n = card["private_data"]["n"]
    assert n == 140
    assert 0 < card["epsilon_spent"] <= 3.0
    q = 32 / n
    steps = 2 * round(1 / q)
    assert card["steps"] == steps
    assert card["noise_multiplier"] == pytest.approx(
        get_noise_multiplier(target_epsilon=3.0, target_delta=1e-3, sample_rate=q, steps=steps, accountant="prv"))
    assert card["accountant"] == "prv" and card["sample_rate"] == pytest.approx(q)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["epsilon"] == pytest.approx(card["epsilon_spent"])
    for key in ("model", "classes", "input_size", "epsilon_target", "delta", "max_grad_norm", "aug_mult",
                "private_data", "public_data", "world_size", "temperature", "negative_threshold"):
        assert key in card


def test_resume_equals_uninterrupted(tiny_fer, tmp_path):
    full = train(_cfg(tmp_path, "full", private=f"fer2013:{tiny_fer}", delta=1e-3), progress=False, log=lambda *_: None)

    def stop_after_first_epoch(msg):
        if "epoch 1:" in msg:
            raise KeyboardInterrupt

    cfg = _cfg(tmp_path, "cut", private=f"fer2013:{tiny_fer}", delta=1e-3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, log=stop_after_first_epoch)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    a, b = _card(full), _card(tmp_path / "cut")
    assert a["epsilon_spent"] == b["epsilon_spent"] and a["steps"] == b["steps"]
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_beyond_budget_is_refused(tiny_fer, tmp_path):
    run = train(_cfg(tmp_path, "r", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1), progress=False,
                log=lambda *_: None)
    before = (run / "model.safetensors").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "50", "--quiet"]) == 2
    assert (run / "model.safetensors").read_bytes() == before


def test_overlap_between_public_and_private_is_refused(tiny_fer, tmp_path, capsys):
    cfg = _cfg(tmp_path, "o", public=f"fer2013:{tiny_fer}", private=f"fer2013:{tiny_fer}", delta=1e-3)
    with pytest.raises(PrivferError, match="140 images"):
        train(cfg, progress=False, log=lambda *_: None)
    rc = main(["train", "--public", f"fer2013:{tiny_fer}", "--private", f"fer2013:{tiny_fer}", "--delta", "1e-3",
               "--out", str(tmp_path / "o2"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "both the public set" in err[0]
    assert not (tmp_path / "o2" / "model.safetensors").exists()


def test_public_split_is_disjoint_by_content_hash(tiny_fer, tmp_path):
    run = train(_cfg(tmp_path, "ps", private=f"fer2013:{tiny_fer}", public_split=0.3, public_epochs=1, delta=1e-3,
                     epochs=1), progress=False, log=lambda *_: None)
    card = _card(run)
    assert card["public_data"]["n"] + card["private_data"]["n"] == 140
    assert 0 < card["public_data"]["n"] < 140
    stages = [json.loads(line)["stage"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["public", "private"]


@pytest.mark.parametrize("k", [1, 3])
def test_each_clipped_example_gradient_is_at_most_C(k):
    torch.manual_seed(0)
    net = build_model("fusion", 7)
    C = 0.05
    stepper = DPStepper(net, torch.optim.SGD(net.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=C,
                        expected_batch_size=1, aug_mult=k)
    x = torch.randint(0, 256, (4, 48, 48), dtype=torch.uint8)
    obj = Objective(torch.tensor([0, 1, 2, 3]))
    for i in range(4):  # one example per step: the released gradient is that example's clipped gradient
        stepper.step(obj, torch.tensor([i]), lambda r: (x[r].float() / 255).unsqueeze(1).repeat_interleave(k, 0))
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in net.parameters()))
        assert 0 < float(norm) <= C * (1 + 1e-4)


def _hidden_head(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(40, 16), torch.nn.GELU(), torch.nn.Linear(16, 5))


@pytest.mark.parametrize("votes", [False, True])
def test_ghost_clipping_gives_the_flat_update(votes):
    """Ghost clipping (norms without per-example gradients) releases the same noisy, clipped sum as Opacus'
    per-example gradients: same weights after several steps with noise, virtual steps and clipping active."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 40, generator=g) * 3
    labels = torch.randint(0, 5, (64,), generator=g)
    vote = torch.softmax(torch.randn(64, 5, generator=g), 1) if votes else None
    obj = Objective(labels, vote, negative=torch.tensor([True, True, False, False, False]), negative_weight=0.5)
    nets = []
    for ghost in (False, True):
        net = _hidden_head(0)
        stepper = DPStepper(net, torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9), noise_multiplier=0.7,
                            max_grad_norm=0.1, expected_batch_size=24, physical_batch_size=10, ghost=ghost)
        torch.manual_seed(5)  # the noise stream
        for idx in (torch.arange(0, 25), torch.arange(25, 50), torch.tensor([], dtype=torch.long), torch.arange(50, 64)):
            stepper.step(obj, idx, lambda r: x[r])
        nets.append(net)
    before = _hidden_head(0)
    for a, b, c in zip(nets[0].parameters(), nets[1].parameters(), before.parameters()):
        assert not torch.allclose(a, c)  # it trained
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ghost", [False, True])
def test_public_mix_adds_the_rescaled_public_gradient_to_the_release(ghost):
    """The public gradient is added to the released (clipped, noised, scaled) gradient and to nothing else: with
    plain SGD the weights differ from a step without it by exactly lr times that gradient, whose norm is the one
    asked for; the release itself (the per-example state Opacus keeps) is untouched by computing it."""
    g = torch.Generator().manual_seed(2)
    x, labels = torch.randn(40, 40, generator=g) * 3, torch.randint(0, 5, (40,), generator=g)
    pub_x, pub_y = torch.randn(16, 40, generator=g), torch.randint(0, 5, (16,), generator=g)
    obj, pub = Objective(labels), Objective(pub_y)
    nets, extras = [], []
    for mix in (False, True):
        net = _hidden_head(0)
        stepper = DPStepper(net, torch.optim.SGD(net.parameters(), lr=0.5), noise_multiplier=0.7, max_grad_norm=0.1,
                            expected_batch_size=20, physical_batch_size=8, ghost=ghost)

        def extra():
            grads = stepper.public_gradient(lambda m: pub(m(pub_x), torch.arange(16)), 0.3)
            extras.append(grads)
            return grads

        torch.manual_seed(5)  # the noise stream
        stepper.step(obj, torch.arange(0, 20), lambda r: x[r], extra if mix else None)
        nets.append(net)
    (grads,) = extras
    assert float(torch.sqrt(sum((e ** 2).sum() for e in grads))) == pytest.approx(0.3, rel=1e-5)
    for a, b, e in zip(nets[0].parameters(), nets[1].parameters(), grads):
        torch.testing.assert_close(b, a - 0.5 * e, rtol=1e-5, atol=1e-6)
    with pytest.raises(PrivferError, match="public_mix adds a public gradient"):
        TrainConfig.from_dict(dict(private="fer2013:x", public_mix=0.5))
    with pytest.raises(PrivferError, match="public_mix must be >= 0"):
        TrainConfig.from_dict(dict(private="fer2013:x", public_split=0.1, public_mix=-1))


def test_ghost_clipping_trains_with_the_same_epsilon(tiny_fer, tmp_path):
    runs = {c: train(_cfg(tmp_path, c, private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1, clipping=c),
                     progress=False, log=lambda *_: None) for c in ("flat", "ghost")}
    cards = {c: _card(r) for c, r in runs.items()}
    assert cards["ghost"]["clipping"] == "ghost" and cards["flat"]["clipping"] == "flat"
    assert cards["ghost"]["epsilon_spent"] == cards["flat"]["epsilon_spent"] <= 8


def test_ghost_clipping_refusals(tiny_fer, tmp_path):
    with pytest.raises(PrivferError, match="aug-mult 1"):
        _cfg(tmp_path, "g", private=f"fer2013:{tiny_fer}", clipping="ghost", aug_mult=2)
    with pytest.raises(PrivferError, match="flat or ghost"):
        _cfg(tmp_path, "g", private=f"fer2013:{tiny_fer}", clipping="fast")
    with pytest.raises(ValueError, match="aug_mult 1"):
        DPStepper(_hidden_head(0), torch.optim.SGD(_hidden_head(0).parameters(), lr=0.1), 1.0, 1.0, 8, aug_mult=2,
                  ghost=True)


def test_aug_mult_does_not_change_epsilon(tiny_fer, tmp_path):
    a = _card(train(_cfg(tmp_path, "k1", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1, aug_mult=1),
                    progress=False, log=lambda *_: None))
    b = _card(train(_cfg(tmp_path, "k4", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1, aug_mult=4),
                    progress=False, log=lambda *_: None))
    assert a["epsilon_spent"] == b["epsilon_spent"] and a["noise_multiplier"] == b["noise_multiplier"]
    assert b["aug_mult"] == 4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_have_no_batchnorm_and_pass_opacus_validator(name):
    for kw in ({}, {"attention": True}) if name in ("cnn", "fusion") else ({},):
        m = build_model(name, 8, **kw)
        assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in m.modules())
        assert ModuleValidator.validate(m, strict=False) == []


def test_default_model_is_sized_for_a_cpu():
    m = build_model("fusion", 8)
    assert sum(p.numel() for p in m.parameters()) < 1_500_000
    assert count_flops(m) <= 40e6


def test_nonprivate_run_on_real_fer2013_reduces_loss(fer2013_root, tmp_path):
    cfg = TrainConfig.from_dict(dict(public=f"fer2013:{fer2013_root}", limit=1024, public_epochs=4, public_batch_size=64,
                                     public_lr=3e-3, augment=False, model="cnn", seed=0, threads=2,
                                     val=f"fer2013:{fer2013_root}@val", out=str(tmp_path / "np")))
    run = train(cfg, progress=False, log=lambda *_: None)
    losses = [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.05
    assert _card(run)["epsilon_spent"] is None and "none" in _card(run)["guarantee"]


@pytest.mark.parametrize("flags,msg", [
    (["--epsilon", "0"], "epsilon must be > 0"),
    (["--delta", "0.5"], "delta must be in"),
    (["--batch-size", "100000"], "larger than"),
    (["--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
    (["--ema-decay", "1"], "ema_decay must be in [0, 1)"),
])
def test_bad_privacy_settings_exit_2(tiny_fer, tmp_path, capsys, flags, msg):
    rc = main(["train", "--private", f"fer2013:{tiny_fer}", "--out", str(tmp_path / "bad"), "--quiet", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0]


def test_bad_resume_and_config_exit_2(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert main(["train", "--resume", str(tmp_path / "notarun")]) == 2
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("private: fer2013:/x\nepsilonn: 3\n")
    assert main(["train", "--config", str(cfgfile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not a privfer run" in err[0] and "unknown config keys epsilonn" in err[1]


def test_augment_ranges_set_the_transforms_and_unknown_ones_exit_2(tiny_fer, tmp_path, capsys, monkeypatch):
    import privfer.train.loop as loop
    from privfer.train.augment import Augment

    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("public: fer2013:/x\naugment_ranges: {rotate: 0, spin: 3}\n")
    assert main(["train", "--config", str(cfgfile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "augment_ranges: unknown spin" in err[0]
    for bad, msg in (("[1]", "must be a mapping"), ("{shift: -1}", "shift must be a number >= 0"),
                     ("{flip: 2}", "flip must be true or false")):
        cfgfile.write_text(f"public: fer2013:/x\naugment_ranges: {bad}\n")
        assert main(["train", "--config", str(cfgfile)]) == 2
        assert msg in capsys.readouterr().err
    made = []
    monkeypatch.setattr(loop, "Augment", lambda **kw: made.append(kw) or Augment(**kw))
    loop.train(_cfg(tmp_path, "r", public=f"fer2013:{tiny_fer}", public_epochs=1, augment_ranges={"rotate": 0.0}),
               progress=False, log=lambda *_: None)
    assert made == [{"rotate": 0.0}]


def test_existing_run_is_not_overwritten(tiny_fer, tmp_path):
    run = train(_cfg(tmp_path, "x", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1), progress=False,
                log=lambda *_: None)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(PrivferError, match="exists"):
        train(_cfg(tmp_path, "x", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1), progress=False)
    assert (run / "model.safetensors").read_bytes() == before


def test_privacy_state_never_steps_past_plan():
    ps = PrivacyState.plan(2.0, 1e-5, 10_000, 100, 1, 1.0)
    ps.steps = ps.planned_steps
    with pytest.raises(PrivferError, match="refusing step"):
        ps.record_step()
    assert np.isfinite(ps.noise_multiplier)


def test_duplicate_private_images_are_trained_on_once(tiny_fer, tmp_path):
    """DP covers each record; an image present twice would be covered only at 2*epsilon. privfer trains on each
    distinct image once (content hash) and says so in the card; --no-dedupe keeps every record."""
    import shutil

    src = next((tiny_fer / "train" / "happy").glob("*.jpg"))
    for i in range(3):  # the same pixels under three more names
        shutil.copy(src, src.with_name(f"Training_9999999{i}.jpg"))
    base = dict(private=f"fer2013:{tiny_fer}", model="cnn", epochs=1, batch_size=64, physical_batch_size=64,
                delta=1e-3, threads=1, augment=False)
    run = train(TrainConfig.from_dict({**base, "out": str(tmp_path / "a")}), progress=False, log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["private_data"]["n"] == 140 and card["private_data"]["duplicates_dropped"] == 3
    assert "each distinct image" in card["guarantee"]
    run = train(TrainConfig.from_dict({**base, "dedupe": False, "out": str(tmp_path / "b")}), progress=False,
                log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    assert card["private_data"]["n"] == 143 and "duplicates_dropped" not in card["private_data"]
    assert "k*epsilon" in card["guarantee"]


def test_weight_decay_flag_sets_the_stage_it_names(tiny_fer, tmp_path):
    """--weight-decay is the DP stage's; in a public-only run without a config, the (only) public stage's;
    --public-weight-decay is the public stage's."""
    flags = ["--model", "scatter-linear", "--epochs", "1", "--batch-size", "32", "--delta", "1e-3", "--weight-decay", "0.01",
             "--quiet"]
    assert main(["train", "--private", f"fer2013:{tiny_fer}", "--out", str(tmp_path / "dp"), *flags]) == 0
    dp = json.loads((tmp_path / "dp" / "config.json").read_text())
    assert dp["weight_decay"] == 0.01 and dp["public_weight_decay"] == TrainConfig().public_weight_decay
    assert main(["train", "--public", f"fer2013:{tiny_fer}", "--out", str(tmp_path / "np"), *flags]) == 0
    pub = json.loads((tmp_path / "np" / "config.json").read_text())
    assert pub["public_weight_decay"] == 0.01 and pub["weight_decay"] == TrainConfig().weight_decay
    # --public-weight-decay always names the public stage, also beside --private data
    assert main(["train", "--private", f"fer2013:{tiny_fer}", "--public-split", "0.3", "--public-epochs", "1",
                 "--public-weight-decay", "0.2", "--out", str(tmp_path / "two"), *flags]) == 0
    two = json.loads((tmp_path / "two" / "config.json").read_text())
    assert two["public_weight_decay"] == 0.2 and two["weight_decay"] == 0.01


def test_label_smoothing_reaches_the_dp_stage(tiny_fer, tmp_path):
    """The same seeded DP run with and without label smoothing: only the loss differs, so its first epoch does."""
    def first_loss(name, ls):
        run = train(_cfg(tmp_path, name, private=f"fer2013:{tiny_fer}", epochs=1, delta=1e-3, label_smoothing=ls),
                    progress=False, log=lambda *_: None)
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]

    plain, smoothed = first_loss("plain", 0.0), first_loss("smoothed", 0.5)
    assert plain == first_loss("plain-again", 0.0)  # deterministic, so a difference is the smoothing's
    assert smoothed != pytest.approx(plain, abs=1e-6)


def test_mixup_trains_on_the_mixture_with_the_mixed_loss():
    """_mixup: the logits of lam * x + (1 - lam) * x[pair] and lam * loss(labels) + (1 - lam) * loss(pair's
    labels), lam from Beta(alpha, alpha) and pair a permutation, both drawn from the run's generator."""
    from privfer.train.loop import _mixup

    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    x, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    obj, rows = Objective(labels), torch.arange(6)
    logits, loss = _mixup(lin, x, rows, obj, np.random.default_rng(7), 0.4)
    draws = np.random.default_rng(7)
    lam = draws.beta(0.4, 0.4)
    pair = torch.from_numpy(draws.permutation(6))
    assert 0 < lam < 1 and not torch.equal(pair, rows)
    mixed = lin(lam * x + (1 - lam) * x[pair])
    torch.testing.assert_close(logits, mixed)
    expected = lam * torch.nn.functional.cross_entropy(mixed, labels) + (1 - lam) * torch.nn.functional.cross_entropy(
        mixed, labels[pair])
    torch.testing.assert_close(loss, expected.float())


def test_public_mixup_changes_the_public_stage_only_and_is_refused_without_public_data(tiny_fer, tmp_path):
    def run(name, mixup):
        out = train(_cfg(tmp_path, name, public=f"fer2013:{tiny_fer}", public_epochs=1, public_mixup=mixup),
                    progress=False, log=lambda *_: None)
        return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]

    plain, mixed = run("plain", 0.0), run("mixed", 0.4)
    assert mixed == run("mixed-again", 0.4)  # seeded: the same draws
    assert mixed != pytest.approx(plain, abs=1e-6)
    with pytest.raises(PrivferError, match="public_mixup mixes examples in the public stage"):
        _cfg(tmp_path, "dp", private=f"fer2013:{tiny_fer}", public_mixup=0.4)
    with pytest.raises(PrivferError, match="public_mixup must be >= 0"):
        _cfg(tmp_path, "neg", public=f"fer2013:{tiny_fer}", public_mixup=-1)
    assert main(["train", "--public", f"fer2013:{tiny_fer}", "--model", "scatter-linear", "--epochs", "1",
                 "--public-mixup", "0.2", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["public_mixup"] == 0.2


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_parses_builds_its_model_and_writes_runs_of_its_name(path):
    cfg = TrainConfig.from_file(path)
    assert cfg.out == f"runs/{path.stem}"  # the README's `privfer train --config configs/NAME.yaml` -> runs/NAME
    net = build_model(cfg.model, 7, **cfg.model_kwargs)
    assert ModuleValidator.is_valid(net)


def test_validation_images_that_are_private_training_data_are_dropped(tiny_fer, tmp_path):
    """Validation data is used without privacy (selection, calibration): an image that is private training data
    too would be used outside the guarantee, so it leaves the validation set and the card counts it."""
    import shutil

    from privfer.train.loop import prepare_data

    for i, src in enumerate(sorted((tiny_fer / "train" / "sad").glob("*.jpg"))[:2]):  # 2 training images in val
        shutil.copy(src, tiny_fer / "test" / "sad" / f"PublicTest_9999999{i}.jpg")
    cfg = _cfg(tmp_path, "v", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1)
    data = prepare_data(cfg)
    assert len(data.val) == 56 and data.val.dropped["in private training data"] == 2
    assert not set(data.val.hashes.tolist()) & set(data.private.hashes.tolist())
    card = _card(train(cfg, progress=False, log=lambda *_: None))
    assert card["val_data"]["n"] == 56 and card["val_data"]["private_overlap_dropped"] == 2
    assert card["calibration_version"] == 2
    # without private data nothing is protected, so nothing is dropped
    assert len(prepare_data(_cfg(tmp_path, "p", public=f"fer2013:{tiny_fer}")).val) == 58


def test_calibrate_refits_on_new_data_and_leaves_out_private_images(tiny_fer, tmp_path, capsys):
    import shutil

    for i, src in enumerate(sorted((tiny_fer / "train" / "sad").glob("*.jpg"))[:2]):
        shutil.copy(src, tiny_fer / "test" / "sad" / f"PublicTest_9999999{i}.jpg")
    run = train(_cfg(tmp_path, "r", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1, class_bias="mixed"),
                progress=False, log=lambda *_: None)
    before = _card(run)
    out = tmp_path / "calibrated"
    assert main(["calibrate", str(run), "--data", f"fer2013:{tiny_fer}@val", "--out", str(out),
                 "--class-bias", "balanced", "--negative-recall", "0.9"]) == 0
    err = capsys.readouterr().err
    assert "2 images of" in err and "not used" in err
    card = _card(out)
    assert card["calibration_data"]["n"] == 56 and card["calibration_data"]["private_overlap_dropped"] == 2
    assert card["class_bias_objective"] == "balanced" and card["negative_recall_target"] == 0.9
    assert card["calibrated_on"].endswith("@val") and "without privacy" in card["calibration_use"]
    for key in ("epsilon_spent", "private_data", "guarantee", "config", "classes"):
        assert card[key] == before[key]
    assert (out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    # in place: only the card changes
    weights_mtime = (run / "model.safetensors").stat().st_mtime_ns
    assert main(["calibrate", str(run), "--data", f"fer2013:{tiny_fer}@val", "--out", str(run)]) == 0
    assert (run / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert _card(run)["class_bias_objective"] == "mixed"  # the card's own objective by default
    capsys.readouterr()
    assert main(["calibrate", str(run), "--data", f"fer2013:{tmp_path / 'nowhere'}@val", "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    other = train(_cfg(tmp_path, "other", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1, seed=9),
                  progress=False, log=lambda *_: None)
    card_before = (other / "model_card.json").read_text()
    assert main(["calibrate", str(run), "--data", f"fer2013:{tiny_fer}@val", "--out", str(other)]) == 2
    assert "another model" in capsys.readouterr().err and (other / "model_card.json").read_text() == card_before


def test_min_recall_floors_the_decided_labels_recall_on_validation(tiny_fer, tmp_path, capsys):
    """``min_recall`` raises the floored classes' offsets at the end of training until their validation recall
    meets the floor; the card records the floors, ``privfer calibrate`` keeps or drops them, and a floor the run
    cannot fit is refused before the run directory is written."""
    from conftest import write_fer_folder

    from privfer.eval.evaluate import evaluate

    floors = {"disgust": 0.8, "fear": 0.5}  # above what one epoch learns: the offsets must do it
    run = train(_cfg(tmp_path, "floors", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1, class_bias="mixed",
                     min_recall="disgust=0.8,fear=0.5"), progress=False, log=lambda *_: None)
    card = _card(run)
    assert card["class_bias_min_recall"] == floors == card["config"]["min_recall"]
    r = evaluate(run, f"fer2013:{tiny_fer}@val")
    assert r["per_class"]["disgust"]["recall"] >= 0.8 and r["per_class"]["fear"]["recall"] >= 0.5
    plain = tmp_path / "plain"
    assert main(["calibrate", str(run), "--data", f"fer2013:{tiny_fer}@val", "--out", str(plain),
                 "--min-recall", "none"]) == 0
    assert "recall floors" not in capsys.readouterr().err and _card(plain)["class_bias_min_recall"] is None
    assert main(["calibrate", str(run), "--data", f"fer2013:{tiny_fer}@val", "--out", str(run)]) == 0
    assert "recall floors disgust 0.8, fear 0.5" in capsys.readouterr().err  # the card's floors by default
    floors_only = _cfg(tmp_path, "x", private=f"fer2013:{tiny_fer}", min_recall={"fear": 0.5})  # class_bias off
    assert (floors_only.class_bias, floors_only.min_recall) == ("off", {"fear": 0.5})
    no_fear = write_fer_folder(tmp_path / "nofear", classes=["angry", "disgust", "happy", "neutral"])
    for bad, match in (({"contempt": 0.5}, "contempt, not a class of the model"),
                       ({"fear": 0.5}, "the calibration data has no example of fear")):
        with pytest.raises(PrivferError, match=match):
            train(_cfg(tmp_path, "refused", private=f"fer2013:{no_fear}", delta=1e-3, epochs=1, class_bias="mixed",
                       min_recall=bad), progress=False, log=lambda *_: None)
        assert not (tmp_path / "refused").exists()


def test_evaluate_can_leave_out_the_models_own_training_images(tiny_fer, tmp_path, capsys):
    import shutil

    from privfer.eval.evaluate import evaluate

    run = train(_cfg(tmp_path, "r", public=f"fer2013:{tiny_fer}", epochs=1), progress=False, log=lambda *_: None)
    for i, src in enumerate(sorted((tiny_fer / "train" / "fear").glob("*.jpg"))[:3]):
        shutil.copy(src, tiny_fer / "test" / "fear" / f"PublicTest_9999999{i}.jpg")
    spec = f"fer2013:{tiny_fer}@val"
    full, clean = evaluate(run, spec), evaluate(run, spec, drop_overlap=True)
    assert full["n"] == 59 and full["training_overlap_dropped"] is None
    assert clean["n"] == 56 and clean["training_overlap_dropped"] == 3
    assert main(["evaluate", str(run), "--data", spec, "--drop-overlap"]) == 0
    assert "left out as training data: 3" in capsys.readouterr().out
    card = _card(run)
    del card["config"]
    (run / "model_card.json").write_text(json.dumps(card))
    assert main(["evaluate", str(run), "--data", spec, "--drop-overlap"]) == 2
    assert "membership cannot be checked" in capsys.readouterr().err


def test_environment_records_versions_seed_and_cpu():
    """What a run needs to be reproduced, including the CPU (a network's float sums can differ between CPUs)."""
    from privfer.train.card import environment

    env = environment(7)
    assert env["seed"] == 7 and env["torch"] == torch.__version__
    if Path("/proc/cpuinfo").exists():
        assert env["cpu"] not in ("", "unknown")
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_negative_term_is_a_logistic_loss_on_the_negative_log_odds():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 2])
    neg = torch.tensor([True, False, True, False])
    plain = Objective(labels)(logits, torch.arange(6))
    with_neg = Objective(labels, negative=neg, negative_weight=2.0)(logits, torch.arange(6))
    odds = torch.logsumexp(logits[:, [0, 2]], 1) - torch.logsumexp(logits[:, [1, 3]], 1)
    expected = -(torch.nn.functional.logsigmoid(odds[[0, 2, 4, 5]]).sum()
                 + torch.nn.functional.logsigmoid(-odds[[1, 3]]).sum()) / 6
    assert torch.allclose(with_neg - plain, 2.0 * expected)
    # descending it raises the negative log-odds of the faces labelled negative and lowers the others'
    (g,) = torch.autograd.grad(with_neg - plain, logits)
    new = logits - g
    new_odds = torch.logsumexp(new[:, [0, 2]], 1) - torch.logsumexp(new[:, [1, 3]], 1)
    assert (new_odds[[0, 2, 4, 5]] > odds[[0, 2, 4, 5]]).all() and (new_odds[[1, 3]] < odds[[1, 3]]).all()
    # with votes, the target is the share of votes for negative classes
    votes = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.2, 0.6, 0.2]])
    soft = Objective(torch.tensor([0, 2]), votes, negative=neg, negative_weight=1.0)
    v_plain = Objective(torch.tensor([0, 2]), votes)(logits[:2], torch.arange(2))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(odds[:2], torch.tensor([0.5, 0.6]))
    assert torch.allclose(soft(logits[:2], torch.arange(2)) - v_plain, bce)


def test_negative_weight_reaches_dp_training_and_is_refused_when_meaningless(tiny_fer, tmp_path):
    with pytest.raises(PrivferError, match="negative_weight must be >= 0"):
        _cfg(tmp_path, "bad", private=f"fer2013:{tiny_fer}", negative_weight=-1)
    with pytest.raises(PrivferError, match="both in and out of the negative set"):
        Objective(torch.tensor([0, 1]), negative=torch.tensor([True, True]), negative_weight=1.0)
    runs = [train(_cfg(tmp_path, f"nw{w}", private=f"fer2013:{tiny_fer}", delta=1e-3, epochs=1, negative_weight=w),
                  progress=False, log=lambda *_: None) for w in (0.0, 5.0)]
    a, b = (load_file(r / "model.safetensors") for r in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seed, same noise: only the loss differs
    assert json.loads((runs[1] / "config.json").read_text())["negative_weight"] == 5.0
    assert _card(runs[0])["epsilon_spent"] == _card(runs[1])["epsilon_spent"]  # no privacy cost


def test_negative_weight_refuses_classes_all_on_one_side(tmp_path):
    from conftest import write_fer_folder

    root = write_fer_folder(tmp_path / "pos", classes=["happy", "neutral", "surprise"])
    out = tmp_path / "run"
    with pytest.raises(PrivferError, match="not both in and out of the negative set"):
        train(_cfg(tmp_path, "run", private=f"folder:{root}@train", val=f"folder:{root}@test", delta=1e-3, epochs=1,
                   negative_weight=1.0),
              progress=False, log=lambda *_: None)
    assert not out.exists()
