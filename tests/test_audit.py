"""Membership-inference audit: attacks on an overfit and an unrelated model, the epsilon lower bound by hand,
membership refusal, LiRA end to end with its shadow cache, and audits in reports."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from privfer.cli import main
from privfer.eval import audit as A
from privfer.models.io import load_model
from privfer.data.cache import load_faces
from privfer.train.config import TrainConfig
from privfer.train.loop import train

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def write_textures(root, n: int = 42, seed: int = 0):
    """A FER2013-folder dataset of random gratings with random labels: nothing to generalise, only to memorise.
    ``n`` training images (Training_*) and ``n`` validation images (PublicTest_*)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    k = 0
    for top, prefix in (("train", "Training"), ("test", "PublicTest")):
        for _ in range(n):
            d = root / top / CLASSES[rng.integers(len(CLASSES))]
            d.mkdir(parents=True, exist_ok=True)
            th, period, phase = rng.uniform(0, np.pi), rng.uniform(3, 12), rng.uniform(0, 2 * np.pi)
            img = 128 + 90 * np.sin(2 * np.pi * (np.cos(th) * xx + np.sin(th) * yy) / period + phase)
            img += rng.normal(0, 20, (48, 48))
            cv2.imwrite(str(d / f"{prefix}_{seed:02d}{k:06d}.png"), np.clip(img, 0, 255).astype(np.uint8))
            k += 1
    return root


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny CNN trained without DP for many epochs on 42 randomly labelled images (so it memorises them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVFER_CACHE", str(tmp_path_factory.getbasetemp() / "privfer-cache"))
        tmp = tmp_path_factory.mktemp("audit")
        root = write_textures(tmp / "textures")
        cfg = TrainConfig.from_dict(dict(
            public=f"fer2013:{root}@train", model="cnn", model_kwargs={"widths": [16, 32], "dropout": 0.0},
            public_epochs=40, public_batch_size=10, public_lr=0.01, augment=False, ema_decay=0.0, warmup_frac=0.0,
            select="last", seed=0, threads=1, out=str(tmp / "run")))
        run = train(cfg, progress=False, log=lambda *_: None)
    return root, run


def _audit_json(capsys, *argv) -> dict:
    assert main(["audit", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_loss_attack_on_overfit_model_leaks(overfit, tmp_path, capsys):
    root, run = overfit
    r = _audit_json(capsys, run, "--members", f"fer2013:{root}@train", "--non-members", f"fer2013:{root}@val",
                    "--out", tmp_path / "a")
    assert r["n_members"] == r["n_non_members"] == 42
    assert r["auc"] > 0.75
    assert set(r["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert 0.6 < r["balanced_accuracy"] <= 1
    assert r["epsilon_lower_bound"] >= 0 and r["epsilon_claimed"] is None  # no DP, no claim
    assert r["membership_check"]["members_in_public_data"] == 42
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert saved["auc"] == r["auc"]
    assert (tmp_path / "a" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    conf = _audit_json(capsys, run, "--members", f"fer2013:{root}@train", "--non-members", f"fer2013:{root}@val",
                       "--attack", "confidence")
    assert conf["auc"] == pytest.approx(r["auc"])  # p = exp(-loss): same order


def test_model_that_saw_neither_side_is_near_chance(overfit, tmp_path):
    _, run = overfit
    other = write_textures(tmp_path / "other", n=70, seed=1)
    lm = load_model(run)
    a, b = (load_faces(f"fer2013:{other}@{s}") for s in ("train", "val"))
    r = A.attack_metrics(A.simple_scores(lm, a, "loss"), A.simple_scores(lm, b, "loss"))
    assert abs(r["auc"] - 0.5) < 0.12
    assert r["epsilon_lower_bound"] < 1.0


def test_members_not_in_the_model_card_are_refused(overfit, tmp_path, capsys):
    root, run = overfit
    other = write_textures(tmp_path / "other", n=8, seed=2)
    rc = main(["audit", str(run), "--members", f"fer2013:{other}@train", "--non-members", f"fer2013:{root}@val", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "8 of 8 members" in err[0] and "not training data" in err[0]
    rc = main(["audit", str(run), "--members", f"fer2013:{root}@train", "--non-members", f"fer2013:{root}@all", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "42 of 84 non-members" in err[0] and "--drop-overlap" in err[0]


def test_membership_follows_the_recipe_public_split_and_limit(overfit, tmp_path, capsys):
    root, _ = overfit
    base = dict(private=f"fer2013:{root}@train", public_split=0.5, model="cnn", model_kwargs={"widths": [8, 16]},
                epochs=1, public_epochs=1, batch_size=8, delta=1e-3, seed=0, threads=1)
    run = train(TrainConfig.from_dict({**base, "out": str(tmp_path / "split")}), progress=False, log=lambda *_: None)
    card = json.loads((run / "model_card.json").read_text())
    sides = ("--members", f"fer2013:{root}@train", "--non-members", f"fer2013:{root}@val")
    r = _audit_json(capsys, run, *sides)
    c = r["membership_check"]
    assert (c["members_in_private_data"], c["members_in_public_data"]) == (card["private_data"]["n"],
                                                                           card["public_data"]["n"])
    assert r["epsilon_claimed"] is None and "--private-only" in r["epsilon_claimed_note"]
    p = _audit_json(capsys, run, *sides, "--private-only")
    assert p["n_members"] == card["private_data"]["n"] and p["epsilon_claimed"] == card["epsilon_spent"]
    # with `limit` in the recipe only 15 of the 42 images were trained on: the others are refused
    limited = dict(public=f"fer2013:{root}@train", limit=15, model="cnn", model_kwargs={"widths": [8]},
                   public_epochs=1, threads=1, out=str(tmp_path / "limit"))
    run = train(TrainConfig.from_dict(limited), progress=False, log=lambda *_: None)
    assert main(["audit", str(run), *sides, "--quiet"]) == 2
    assert "27 of 42 members" in capsys.readouterr().err


def test_limit_is_a_fixed_sample_of_equal_size(overfit, capsys):
    root, run = overfit
    argv = (run, "--members", f"fer2013:{root}@train", "--non-members", f"fer2013:{root}@all", "--drop-overlap",
            "--limit", 10)
    r1, r2 = _audit_json(capsys, *argv), _audit_json(capsys, *argv)
    assert r1["n_members"] == r1["n_non_members"] == 10
    assert r1["membership_check"]["non_members_dropped_as_training_data"] == 42
    assert r1["auc"] == r2["auc"]


def test_epsilon_lower_bound_by_hand():
    # One threshold flags all 100 members and none of 100 non-members. Two-sided 95% Clopper-Pearson:
    # TPR_lo = 0.025**(1/100) (the lower end for 100/100), FPR_hi = 1 - 0.025**(1/100) (the upper end for 0/100).
    u = 0.025 ** (1 / 100)
    assert A.epsilon_lower_bound([100], [0], 100, 100)["epsilon"] == pytest.approx(math.log(u / (1 - u)), rel=1e-9)
    assert math.log(u / (1 - u)) == pytest.approx(3.2814, abs=1e-4)
    # General counts against scipy's own exact (Clopper-Pearson) interval; both DP inequalities, delta > 0.
    from scipy.stats import binomtest

    tp, fp, n, delta = np.array([0, 30, 60, 90, 100]), np.array([0, 2, 10, 40, 100]), 100, 1e-3
    tpr_lo = np.array([binomtest(k, n).proportion_ci(0.95, "exact").low for k in tp])
    fpr_hi = np.array([binomtest(k, n).proportion_ci(0.95, "exact").high for k in fp])
    expect = 0.0
    for tl, fh in zip(tpr_lo, fpr_hi):
        for num, den in ((tl - delta, fh), (1 - fh - delta, 1 - tl)):
            if num > 0 and den > 0:
                expect = max(expect, math.log(num / den))
    got = A.epsilon_lower_bound(tp, fp, n, n, delta)
    assert got["epsilon"] == pytest.approx(expect, rel=1e-9)
    # At tp=30, fp=2 by hand: TPR_lo = 0.212406, FPR_hi = 0.070384 -> log((0.212406 - 0.001) / 0.070384) = 1.0998.
    assert got["epsilon"] == pytest.approx(1.0998, abs=1e-3) and got["index"] == 1
    # The second inequality, TNR <= e^eps FNR + delta, dominates when all members and half the non-members are
    # flagged: FPR_hi(50/100) = 0.601679 (the upper end of the exact interval) and FNR_hi = 1 - 0.025**(1/100),
    # so eps >= log((1 - 0.601679) / (1 - u)) = 2.3977; the first gives only log(u / 0.601679) = 0.471.
    got = A.epsilon_lower_bound([100], [50], 100, 100)["epsilon"]
    assert got == pytest.approx(math.log((1 - 0.6016788705) / (1 - u)), rel=1e-6)
    assert got == pytest.approx(2.3977, abs=1e-4)
    # A bound never beats the plug-in estimate log(TPR / FPR) and is 0 when the attack is chance.
    assert A.epsilon_lower_bound([50], [50], 100, 100)["epsilon"] == 0.0


def test_lira_end_to_end_reuses_its_shadow_cache(overfit, tmp_path, capsys, monkeypatch):
    root, run = overfit
    argv = (run, "--members", f"fer2013:{root}@train", "--non-members", f"fer2013:{root}@val", "--attack", "lira",
            "--shadows", 2, "--shadow-epochs", 1, "--limit", 16, "--shadow-cache", tmp_path / "shadows",
            "--out", tmp_path / "lira")
    r = _audit_json(capsys, *argv)
    assert r["variant"] == "online" and r["n_members"] == r["n_non_members"] == 16
    s = r["shadows"]
    assert (s["n"], s["trained"], s["reused"], s["population"], s["epochs"]) == (2, 2, 0, 32, 1)
    assert "1 epochs instead of the recipe's 40" in s["recipe"]
    assert 0.0 <= r["auc"] <= 1.0 and set(r["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert 0.0 <= s["accuracy_outside"] <= 1.0 and 0.0 <= s["model_non_member_accuracy"] <= 1.0
    assert (s["fit_warning"] is None) == (s["accuracy_outside"] >= s["model_non_member_accuracy"] - A.SHADOW_FIT_GAP)
    assert "shadow fit" in A.format_summary(r)
    models = sorted((tmp_path / "shadows").rglob("model.safetensors"))
    assert len(models) == 2
    before = [m.stat().st_mtime_ns for m in models]

    def no_training(*a, **k):
        raise AssertionError("a cached shadow model was trained again")

    train_shadow = A._train_shadow
    monkeypatch.setattr(A, "_train_shadow", no_training)
    r2 = _audit_json(capsys, *argv)
    assert (r2["shadows"]["trained"], r2["shadows"]["reused"]) == (0, 2)
    assert r2["auc"] == r["auc"] and [m.stat().st_mtime_ns for m in models] == before
    off = _audit_json(capsys, *argv[:-2], "--offline")
    assert off["variant"] == "offline" and off["shadows"]["reused"] == 2
    monkeypatch.setattr(A, "_train_shadow", train_shadow)
    big = _audit_json(capsys, *argv[:-2], "--population", 40)  # 8 more examples: another population, new shadows
    assert (big["shadows"]["population"], big["shadows"]["trained"], big["n_members"]) == (40, 2, 16)


def test_lira_shadows_of_a_fixed_front_end_share_the_population_features(tiny_fer, tmp_path, capsys, monkeypatch):
    """The shadows' training halves are gathered from the population's features, computed once: the audit caches
    no features but the population's (each shadow half used to be computed again and written as its own file)."""
    from privfer.train import features as F

    monkeypatch.setenv("PRIVFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(F, "MIN_CACHED", 8)  # the population is cached on disk as a large one would be
    run = train(TrainConfig.from_dict(dict(public=f"fer2013:{tiny_fer}@train", model="scatter-linear", public_epochs=1,
                                           seed=0, threads=1, out=str(tmp_path / "run"))), progress=False, log=lambda *_: None)
    before = set((tmp_path / "cache").glob("features-*.npy"))
    r = _audit_json(capsys, run, "--members", f"fer2013:{tiny_fer}@train", "--non-members", f"fer2013:{tiny_fer}@val",
                    "--attack", "lira", "--shadows", 4, "--shadow-epochs", 1, "--limit", 12, "--population", 60,
                    "--shadow-cache", tmp_path / "shadows")
    assert (r["shadows"]["trained"], r["shadows"]["population"]) == (4, 60)
    new = set((tmp_path / "cache").glob("features-*.npy")) - before
    assert new and all(len(np.load(f, mmap_mode="r")) == 60 for f in new)  # the population's, nothing per shadow


def test_shadows_that_fit_far_worse_than_the_model_are_flagged():
    """Shadows of a DP recipe on a small population can learn far less than the model (its expected batch, scaled
    down, drowns in noise): LiRA then understates the leak, and the audit says so."""
    assert A.shadow_fit_warning(0.74, 0.75) is None and A.shadow_fit_warning(0.80, 0.75) is None
    w = A.shadow_fit_warning(0.47, 0.74)
    assert "47.0%" in w and "74.0%" in w and "--population" in w
    r = {"model": "m", "attack": "lira", "variant": "online", "n_members": 2, "members": "a", "n_non_members": 2,
         "non_members": "b", "shadows": {"n": 2, "reused": 0, "trained": 2, "population": 4, "recipe": "r",
                                         "cache": "c", "accuracy_outside": 0.47, "model_non_member_accuracy": 0.74,
                                         "fit_warning": w},
         "auc": 0.5, "balanced_accuracy": 0.5, "tpr_at_fpr": {"0.01": 0.01, "0.001": 0.0}, "fpr_resolution": 0.5,
         "epsilon_lower_bound": 0.0, "confidence": 0.95, "delta": 1e-5, "epsilon_claimed": 8.0,
         "epsilon_claimed_note": "card"}
    text = A.format_summary(r)
    assert "shadow fit 47.0%" in text and "warning   the shadows reach 47.0%" in text


def test_lira_scores_separate_in_from_out():
    rng = np.random.default_rng(0)
    n, s = 200, 8
    inside = A.shadow_masks(n, s)
    assert (inside.sum(axis=0) == s // 2).all() and (A.shadow_masks(n, s + 2)[:s] == inside).all()
    base = rng.normal(0, 2, n)  # per-example difficulty
    phi = base + np.where(inside, 3.0, 0.0) + rng.normal(0, 0.5, (s, n))
    member = np.arange(n) < n // 2
    target = base + np.where(member, 3.0, 0.0) + rng.normal(0, 0.5, n)
    sh = A.ShadowResult(phi, inside, {})
    for offline in (False, True):
        scores, variant = A.lira_scores(target, sh, offline)
        assert variant == ("offline" if offline else "online")
        assert A.attack_metrics(scores[member], scores[~member])["auc"] > 0.95
    # without the per-example calibration the raw confidence separates much worse
    assert A.attack_metrics(target[member], target[~member])["auc"] < 0.9


def test_shadow_recipe_of_a_dp_model_keeps_its_sampling_rate():
    card = {"config": {"private": "fer2013:x", "public_split": 0.1, "epochs": 8, "batch_size": 1024},
            "sample_rate": 1024 / 28709, "private_data": {"n": 28709}}
    recipe, note = A.shadow_recipe(card, 1000, epochs=2)
    assert recipe["batch_size"] == round(1000 * 1024 / 28709) and recipe["epochs"] == 2
    assert recipe["public"] is None and recipe["public_split"] is None and recipe["private"]
    assert "public pretraining stage skipped" in note and "2 epochs instead of the recipe's 8" in note


def test_shadows_of_a_model_with_recall_floors_train_without_calibration(overfit, tmp_path):
    """The shipped DP models fit class offsets and recall floors on validation data; shadows have none, so their
    recipe drops the calibration (which does not change the weights, hence not the cache key) and trains."""
    root, _ = overfit
    config = {"private": f"fer2013:{root}@train", "model": "cnn", "model_kwargs": {"widths": [8, 16]}, "epochs": 1,
              "batch_size": 8, "physical_batch_size": 8, "delta": 1e-3, "augment": False, "threads": 1}
    floored = {**config, "class_bias": "mixed", "min_recall": {"disgust": 0.35, "fear": 0.35}, "negative_recall": 0.9}
    card = {"sample_rate": 8 / 42, "private_data": {"n": 42}}
    recipe, note = A.shadow_recipe({**card, "config": floored}, 20)
    assert (recipe["class_bias"], recipe["min_recall"], recipe["negative_recall"]) == ("off", None, None)
    assert "no validation data" in note
    plain, _ = A.shadow_recipe({**card, "config": config}, 20)
    fs = load_faces(f"fer2013:{root}@train").subset(np.arange(20))
    assert A._cache_key(recipe, fs, 0) == A._cache_key(plain, fs, 0)
    A._train_shadow(recipe, fs, tmp_path / "shadow", seed=0, progress=False)
    assert (tmp_path / "shadow" / "model.safetensors").is_file()


def test_report_lists_audits(overfit, tmp_path, capsys):
    from privfer.eval.report import make_report

    root, run = overfit
    r = _audit_json(capsys, run, "--members", f"fer2013:{root}@train", "--non-members", f"fer2013:{root}@val",
                    "--out", run / "audit" / "loss")
    assert [name for name, _ in A.find_audits(run)] == ["loss"]
    md = make_report([run], tmp_path / "report").read_text()
    assert "### Membership-inference audits" in md
    row = next(line for line in md.splitlines() if line.startswith("| run | loss |"))
    lo, hi = r["auc_ci"]
    assert lo < r["auc"] < hi
    assert f"| {r['auc']:.3f} ({lo:.3f}-{hi:.3f}) |" in row and "| 42 / 42 |" in row


def test_report_shows_how_lira_shadows_fit():
    from privfer.eval.report import audit_markdown

    base = {"attack": "lira", "variant": "online", "n_members": 10, "n_non_members": 10, "auc": 0.5,
            "tpr_at_fpr": {"0.01": 0.0, "0.001": 0.0}, "balanced_accuracy": 0.5, "epsilon_lower_bound": 0.0}
    fit = {**base, "shadows": {"population": 20000, "accuracy_outside": 0.73, "model_non_member_accuracy": 0.75,
                               "fit_warning": None}}
    unfit = {**base, "shadows": {"population": 2000, "accuracy_outside": 0.47, "model_non_member_accuracy": 0.75,
                                 "fit_warning": A.shadow_fit_warning(0.47, 0.75)}}
    md = audit_markdown([("m", [("lira-pop20000", fit), ("lira", unfit), ("loss", {**base, "attack": "loss"})])])
    lines = [line for line in md.splitlines() if line.startswith("- m ")]
    assert len(lines) == 2  # the loss audit has no shadows
    assert "73.0%" in lines[0] and "20000" in lines[0] and "do not mimic" not in lines[0]
    assert "47.0%" in lines[1] and "understates" in lines[1]
    assert audit_markdown([("m", [("loss", {**base, "attack": "loss"})])]).count("\n- ") == 0
