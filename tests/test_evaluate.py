"""Evaluation, its output files, the report and the ``evaluate``/``report`` CLI verbs, on a few hundred real faces."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from privfer.cli import main
from privfer.data.cache import load_faces
from privfer.errors import PrivferError
from privfer.eval.evaluate import evaluate, write_outputs
from privfer.eval.report import make_report, results_table
from privfer.models import build_model
from privfer.models.io import load_model, save_model
from privfer.taxonomy import CLASSES, CLASSES_7

FER2013 = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
#: Unequal class sizes of the validation fixture, so that the majority class is unique (happiness).
VAL_COUNTS = dict(zip(FOLDERS, (6, 3, 5, 12, 8, 7, 4)))
TRAIN_PER_CLASS = 12


def _copy_fer(dst: Path, private_test: int = 0) -> Path:
    """A small FER2013 image-folder copy: real faces (synthetic ones when ../shared is absent), plus
    ``private_test`` PublicTest faces per class copied again as stand-ins for the held-back PrivateTest split."""
    if (FER2013 / "train").is_dir():
        for c in FOLDERS:
            for top, n, prefix in (("train", TRAIN_PER_CLASS, "Training"), ("test", VAL_COUNTS[c], "PublicTest")):
                (dst / top / c).mkdir(parents=True, exist_ok=True)
                for f in sorted((FER2013 / top / c).glob(f"{prefix}_*.jpg"))[:n]:
                    shutil.copy(f, dst / top / c / f.name)
    else:
        from conftest import write_fer_folder

        write_fer_folder(dst, n_train=TRAIN_PER_CLASS, n_val=max(VAL_COUNTS.values()))
        for c in FOLDERS:
            for f in sorted((dst / "test" / c).iterdir())[VAL_COUNTS[c]:]:
                f.unlink()
    for c in FOLDERS:
        for i, f in enumerate(sorted((dst / "test" / c).glob("PublicTest_*"))[:private_test]):
            shutil.copy(f, dst / "test" / c / f"PrivateTest_{i:05d}{f.suffix}")
    return dst


@pytest.fixture(scope="module")
def fer(tmp_path_factory) -> Path:
    return _copy_fer(tmp_path_factory.mktemp("data") / "fer2013")


def _spec(root: Path, split: str = "val") -> str:
    return f"fer2013:{root}@{split}"


def make_run(out: Path, classes=CLASSES_7, input_size: int = 48, bias: dict | None = None, seed: int = 0,
             widths=(4, 8), **card) -> Path:
    """A saved tiny CNN run; ``bias`` makes a constant model (zero head weights, these head biases)."""
    torch.manual_seed(seed)
    net = build_model("cnn", len(classes), widths=widths)
    if bias is not None:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.zero_()
            for c, b in bias.items():
                net.head.bias[list(classes).index(c)] = b
    save_model(net, {"model": "cnn", "model_kwargs": {"widths": list(widths)}, "classes": list(classes),
                     "input_size": input_size, "temperature": 1.0, "negative_threshold": 0.5, **card}, out)
    return out


# ---------------------------------------------------------------- evaluate

def test_evaluate_is_deterministic_and_complete(fer, tmp_path):
    run = make_run(tmp_path / "run")
    a = evaluate(run, _spec(fer))
    b = evaluate(load_model(run), _spec(fer, "train"), split="val")
    assert json.dumps(a) == json.dumps(b)
    n_val = len(load_faces(_spec(fer)))
    assert a["n"] == n_val and sum(v["support"] for v in a["per_class"].values()) == n_val
    assert np.sum(a["confusion"]["counts"]) == n_val
    for key in ("accuracy", "loss", "macro_f1", "balanced_accuracy", "majority_baseline", "per_class", "confusion",
                "negative", "dropped", "model", "data", "tta"):
        assert key in a
    assert a["data"].endswith("@val") and a["dropped"] == {} and a["tta"] == "none"
    assert set(a["negative"]) >= {"auroc", "average_precision", "precision", "recall", "f1", "threshold"}
    cal = a["calibration"]
    assert 0.0 <= cal["ece"] <= 1.0 and 0.0 <= cal["negative_ece"] <= 1.0 and 0.0 <= cal["brier"] <= 2.0
    assert sum(cal["reliability"]["count"]) == sum(cal["negative_reliability"]["count"]) == n_val
    assert cal["ece_uncalibrated"] == cal["ece"]  # temperature 1, no offsets: the same probabilities
    assert cal["fit_on_this_data"] is False        # the card names no calibration data
    flipped = evaluate(run, _spec(fer), tta=True)
    assert flipped["tta"] == "flip" and flipped["n"] == n_val


def test_constant_model_scores_exactly_the_majority_baseline(fer, tmp_path):
    run = make_run(tmp_path / "const", bias={"happiness": 5.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate(run, _spec(fer))
    assert r["majority_class"] == "happiness"
    assert r["accuracy"] == r["majority_baseline"]
    assert r["per_class"]["happiness"]["recall"] == 1.0
    assert r["per_class"]["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": r["per_class"]["fear"]["support"]}
    assert r["macro_f1"] == pytest.approx(r["per_class"]["happiness"]["f1"] / 7)
    assert r["balanced_accuracy"] == pytest.approx(1 / 7)
    # happiness is not negative: every face scores the same, so AUROC is exactly chance
    assert r["negative"]["auroc"] == 0.5 and r["negative"]["recall"] == 0.0
    # one confidence for every face: its ECE is |accuracy - confidence|
    conf = float(np.exp(5.0) / (np.exp(5.0) + 6))
    assert r["calibration"]["ece"] == pytest.approx(abs(r["accuracy"] - conf))


def test_calibration_in_sample_is_flagged(fer, tmp_path):
    val = load_faces(_spec(fer))
    run = make_run(tmp_path / "run", val_data={"spec": _spec(fer), "data_hash": val.data_hash()},
                   temperature=2.0)
    r = evaluate(run, _spec(fer))
    assert r["calibration"]["fit_on_this_data"] is True
    assert r["calibration"]["ece"] != r["calibration"]["ece_uncalibrated"]
    assert evaluate(run, _spec(fer, "train"))["calibration"]["fit_on_this_data"] is False
    # the same split with some images left out (training drops those that are private data): still in sample
    by_spec = make_run(tmp_path / "run2", val_data={"spec": _spec(fer), "data_hash": "other"})
    assert evaluate(by_spec, _spec(fer))["calibration"]["fit_on_this_data"] is True


def test_intersection_drops_classes_the_model_lacks(fer, tmp_path):
    six = [c for c in CLASSES_7 if c != "disgust"]
    r = evaluate(make_run(tmp_path / "six", classes=six), _spec(fer))
    full = evaluate(make_run(tmp_path / "seven"), _spec(fer))
    n_disgust = full["per_class"]["disgust"]["support"]
    assert n_disgust > 0
    assert r["dropped"] == {"disgust": n_disgust}
    assert r["n"] == full["n"] - n_disgust
    assert r["classes"] == six and "disgust" not in r["per_class"]


def test_prediction_restricted_to_shared_classes(fer, tmp_path):
    # an 8-class model that would always say contempt: on 7-class data it must fall back to its next choice
    r = evaluate(make_run(tmp_path / "eight", classes=CLASSES, bias={"contempt": 50.0, "happiness": 1.0}), _spec(fer))
    assert r["model_only_classes"] == ["contempt"] and r["dropped"] == {}
    assert r["classes"] == list(CLASSES_7)
    assert r["accuracy"] == r["majority_baseline"]  # predicts happiness, the majority class
    # probabilities renormalised over the 7 shared classes: softmax of biases (1, 0, ..., 0)
    p_happy = np.e / (np.e + 6)
    assert r["per_class"]["happiness"]["support"] > 0
    expected = -(np.log(p_happy) * r["per_class"]["happiness"]["support"]
                 + np.log(1 / (np.e + 6)) * (r["n"] - r["per_class"]["happiness"]["support"])) / r["n"]
    assert r["loss"] == pytest.approx(expected, rel=1e-5)


def test_folder_dataset_with_contempt(fer, tmp_path):
    from privfer.data.readers import READERS

    if "folder" not in READERS:
        pytest.skip("folder reader not available")
    root = tmp_path / "ckplus_like"
    for cls, src in (("anger", "angry"), ("contempt", "neutral"), ("happiness", "happy")):
        (root / cls).mkdir(parents=True)
        for f in sorted((fer / "train" / src).iterdir())[:4]:
            shutil.copy(f, root / cls / f.name)
    r = evaluate(make_run(tmp_path / "run"), f"folder:{root}@all")
    assert r["dropped"] == {"contempt": 4}
    assert r["n"] == 8 and r["classes"] == ["happiness", "anger"]


def test_model_input_size_differs_from_data(fer, tmp_path):
    r = evaluate(make_run(tmp_path / "s40", input_size=40), _spec(fer))
    assert r["n"] == len(load_faces(_spec(fer)))


def test_bad_inputs_are_one_line_errors(fer, tmp_path):
    with pytest.raises(PrivferError, match="share none"):
        evaluate(make_run(tmp_path / "c", classes=["contempt"]), _spec(fer))
    run = make_run(tmp_path / "run")
    with pytest.raises(PrivferError, match="no usable samples"):
        evaluate(run, _spec(fer), split="test")
    with pytest.raises(PrivferError):
        evaluate(run, _spec(fer), split="bogus")
    with pytest.raises(PrivferError):
        evaluate(run, _spec(fer), batch_size=0)


def test_write_outputs(fer, tmp_path):
    r = evaluate(make_run(tmp_path / "run"), _spec(fer))
    paths = write_outputs(r, tmp_path / "out")
    assert [p.name for p in paths] == ["evaluation.json", "confusion_counts.csv", "confusion_normalized.csv",
                                       "confusion.png", "reliability.png"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(r))
    lines = paths[1].read_text().splitlines()
    assert len(lines) == 8 and lines[0].split(",")[1:] == list(CLASSES_7)
    assert paths[3].read_bytes()[:4] == paths[4].read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no temporaries left


# ---------------------------------------------------------------- CLI

def test_cli_evaluate_json_and_summary(fer, tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["evaluate", str(run), "--data", _spec(fer), "--json", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == json.loads(json.dumps(evaluate(run, _spec(fer))))
    assert main(["evaluate", str(run), "--data", f"fer2013:{fer}", "--split", "val",
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "macro-F1" in out and "ECE" in out and (tmp_path / "o" / "confusion.png").is_file()


@pytest.mark.parametrize("case", ["missing split", "no shared class", "weights do not fit"])
def test_cli_evaluate_errors(fer, tmp_path, capsys, case):
    run = make_run(tmp_path / "run")
    args = ["evaluate", str(run), "--data", _spec(fer)]
    if case == "missing split":
        args += ["--split", "test"]
    elif case == "no shared class":
        args[1] = str(make_run(tmp_path / "c", classes=["contempt"]))
    else:
        card = json.loads((run / "model_card.json").read_text())
        card["model_kwargs"] = {"widths": [8, 16]}
        (run / "model_card.json").write_text(json.dumps(card))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("privfer: error: ") and err.count("\n") == 1


# ---------------------------------------------------------------- report

def _train_tiny(root: Path, out: Path, private: bool, seed: int) -> Path:
    """Train a tiny CNN for three epochs on the fixture and save it as a run directory with metrics.jsonl."""
    from privfer.train.data import to_input

    train, val = load_faces(_spec(root, "train")), load_faces(_spec(root, "val"))
    torch.manual_seed(seed)
    net = build_model("cnn", 7, widths=(4, 8))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = to_input(train.pixels), torch.as_tensor(train.labels)
    xv, yv = to_input(val.pixels), torch.as_tensor(val.labels)
    rows = []
    for epoch in range(1, 4):
        net.train()
        loss = torch.nn.functional.cross_entropy(logits := net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.eval()
        with torch.no_grad():
            zv = net(xv)
        rows.append({"stage": "private" if private and epoch > 1 else "public", "epoch": epoch, "step": epoch,
                     "train_loss": loss.item(), "train_acc": float((logits.argmax(1) == y).float().mean()),
                     "val_loss": float(torch.nn.functional.cross_entropy(zv, yv)),
                     "val_acc": float((zv.argmax(1) == yv).float().mean()),
                     "epsilon": 2.0 * (epoch - 1) if private and epoch > 1 else None, "lr": 1e-2, "time_s": epoch})
    desc = {"spec": _spec(root, "train"), "n": len(train)}
    card = {"model": "cnn", "model_kwargs": {"widths": [4, 8]}, "classes": list(train.classes), "input_size": 48,
            "temperature": 1.0, "negative_threshold": 0.5, "val_data": {"spec": _spec(root, "val")},
            "private_data": desc if private else None, "public_data": None if private else desc,
            "epsilon_target": 4.0 if private else None, "epsilon_spent": 3.99 if private else None,
            "delta": 1e-5 if private else None, "training_time_s": 3.2, "seed": seed}
    save_model(net, card, out)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "config.json").write_text("{}\n")
    return out


@pytest.fixture(scope="module")
def two_runs(fer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    fer_test = _copy_fer(tmp / "fer2013_with_test", private_test=2)
    return (_train_tiny(fer, tmp / "public-run", private=False, seed=0),
            _train_tiny(fer_test, tmp / "dp-run", private=True, seed=1))


def test_report_renders(two_runs, tmp_path):
    report = make_report(list(two_runs), tmp_path / "report")
    md = report.read_text()
    assert md.count("## Trained on fer2013:") == 2                      # grouped by training data
    assert "| run | train accuracy | validation accuracy | train loss | validation loss | test loss | test accuracy |" in md
    assert "n/a (held back)" in md                                       # the public run's data has no test split
    dp_row = next(line for line in md.splitlines() if line.startswith("| dp-run |") and "%" in line)
    assert "held back" not in dp_row                                     # ... the DP run's has one
    assert "(ε=3.99, δ=1e-05; target ε=4) covers fer2013:" in md
    assert "no differential-privacy guarantee" in md and "no guarantee for public data" in md
    assert "weakest" in md
    assert "| ECE | negative-score ECE |" in md
    for name in ("01-public-run/curves.png", "02-dp-run/curves.png", "01-public-run/val/confusion.png",
                 "02-dp-run/val/reliability.png",
                 "02-dp-run/test/evaluation.json", "recall-01.png"):
        assert (tmp_path / "report" / name).is_file(), name
        if name.endswith(".png"):
            assert f"]({name})" in md


def test_results_table_and_cli_report(two_runs, tmp_path, capsys):
    table = results_table([str(r) for r in two_runs])
    lines = table.splitlines()
    assert len(lines) == 4 and "macro-F1" in lines[0] and "disgust recall" in lines[0] and "ε" in lines[0]
    assert "3.99" in lines[3] and "none (no DP)" in lines[2] and "privfer train --config" in lines[2]
    assert main(["report", *map(str, two_runs), "--table-only"]) == 0
    assert capsys.readouterr().out.strip() == table
    assert main(["report", str(two_runs[0])]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["report", str(two_runs[0]), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file()


def test_class_offsets_move_labels_not_probabilities(tmp_path):
    """Calibration version 2: probabilities are softmax(z / T); the offsets only decide the label. Cards of
    version 1 (no key) keep offsets in the probabilities, as they were fit."""
    from privfer.models.io import LoadedModel, softmax

    z = np.array([[2.0, 1.8, 0.0], [0.0, 3.0, 0.0]])
    card = {"classes": ["happiness", "disgust", "neutral"], "temperature": 2.0, "class_bias": [-0.5, 0.5, 0.0]}
    v2 = LoadedModel(None, {**card, "calibration_version": 2})
    probs, labels = v2.calibrated(z)
    assert np.allclose(probs, softmax(z, 2.0)) and labels.tolist() == [1, 1]
    assert probs[0].argmax() == 0  # the most probable class is not the decided one here
    v1 = LoadedModel(None, card)
    probs1, labels1 = v1.calibrated(z)
    assert np.allclose(probs1, softmax(z, 2.0, np.array(card["class_bias"]))) and labels1.tolist() == [1, 1]
    # restricted to some of the classes
    p, lab = v2.calibrated(z[:, [0, 2]], cols=np.array([0, 2]))
    assert np.allclose(p, softmax(z[:, [0, 2]], 2.0)) and lab.tolist() == [0, 1]  # row 2: a tie moved by -0.5
