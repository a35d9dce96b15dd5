"""Training under torchrun: 2 CPU processes (gloo) give the single-process batches, noise, epsilon and losses.

Each torchrun launch costs a few seconds of process start-up, so the runs are tiny (140 synthetic faces,
a two-layer CNN) and shared where possible.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from privfer.train.config import TrainConfig
from privfer.train.loop import train

TINY = {"model": "cnn", "model_kwargs": {"widths": [8, 16], "dropout": 0.0}, "seed": 3, "threads": 1, "delta": 1e-3}
RUN_FILES = {"best.safetensors", "checkpoint", "config.json", "environment.json", "metrics.jsonl", "model.safetensors",
             "model_card.json"}


def _torchrun(args: list[str], cwd: Path, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRIVFER_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _card(run: Path) -> dict:
    return json.loads((run / "model_card.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from conftest import write_fer_folder

    return write_fer_folder(tmp_path_factory.mktemp("fer"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_two_processes_train_like_one(data, cache, tmp_path):
    """Public stage (no DP) then DP-SGD, 2 processes vs 1: same epsilon and noise exactly, same losses and weights
    (no augmentation, no dropout: the only randomness is the shared-seed sampling and rank 0's noise)."""
    conf = {**TINY, "private": f"fer2013:{data}", "public_split": 0.3, "public_epochs": 2, "public_batch_size": 16,
            "public_lr": 0.01, "epochs": 2, "batch_size": 16, "physical_batch_size": 8, "lr": 1.0, "epsilon": 8.0,
            "augment": False}
    cfg_file = tmp_path / "conf.json"
    cfg_file.write_text(json.dumps(conf))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = _torchrun(["-m", "privfer", "train", "--config", str(cfg_file), "--out", "run", "--quiet"], cwd, cache)
    assert res.returncode == 0, res.stderr[-3000:]
    two = cwd / "run"
    one = train(TrainConfig.from_dict({**conf, "out": str(tmp_path / "one")}), progress=False, log=lambda *_: None)

    a, b = _card(one), _card(two)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for key in ("epsilon_spent", "noise_multiplier", "sample_rate", "steps", "accountant_history"):
        assert a[key] == b[key], key
    ma, mb = _metrics(one), _metrics(two)
    assert [m["stage"] for m in mb] == ["public", "public", "private", "private"]
    for x, y in zip(ma, mb):
        assert x["step"] == y["step"] and x["epsilon"] == y["epsilon"]
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-4)
    for stage in ("public", "private"):  # the training loss falls in each stage
        losses = [m["train_loss"] for m in mb if m["stage"] == stage]
        assert losses[-1] < losses[0] - 0.01, (stage, losses)
    wa, wb = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=2e-3)  # float sums in another order

    # rank 0 alone writes: nothing beside the run directory, one line per epoch, one checkpoint
    assert sorted(os.listdir(cwd)) == ["run"]
    assert set(os.listdir(two)) == RUN_FILES
    assert len(mb) == 4
    assert len(list((two / "checkpoint").glob("ckpt-*.safetensors"))) == 1
    assert "distributed: 2 processes (gloo)" in res.stdout
    assert res.stdout.count("privfer train:") == 1  # one process logs


STOP_AFTER_EPOCH_1 = """
import sys
from privfer.train.config import TrainConfig
from privfer.train.loop import train

def stop(msg):
    if "epoch 1:" in msg:
        raise KeyboardInterrupt
train(TrainConfig.from_file(sys.argv[1], out=sys.argv[2]), progress=False, log=stop)
"""


def test_resume_under_torchrun_equals_uninterrupted(data, cache, tmp_path):
    """With augmentation and dropout (each rank its own random stream): interrupted after epoch 1 and resumed
    with torchrun, the run ends with the same weights and epsilon as an uninterrupted 2-process run."""
    conf = {**TINY, "model_kwargs": {"widths": [8, 16]}, "private": f"fer2013:{data}", "epochs": 2, "batch_size": 16,
            "physical_batch_size": 16, "aug_mult": 2, "lr": 0.5, "epsilon": 8.0}
    cfg_file = tmp_path / "conf.json"
    cfg_file.write_text(json.dumps(conf))
    script = tmp_path / "stop.py"
    script.write_text(STOP_AFTER_EPOCH_1)
    res = _torchrun(["-m", "privfer", "train", "--config", str(cfg_file), "--out", "full", "--quiet"], tmp_path, cache)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _torchrun([str(script), str(cfg_file), "cut"], tmp_path, cache)
    assert res.returncode != 0  # rank 0 was interrupted after checkpointing epoch 1; torchrun stopped rank 1
    cut = tmp_path / "cut"
    assert len(_metrics(cut)) == 1 and not (cut / "model.safetensors").exists()
    res = _torchrun(["-m", "privfer", "train", "--resume", "cut", "--quiet"], tmp_path, cache)
    assert res.returncode == 0, res.stderr[-3000:]

    full = tmp_path / "full"
    a, b = _card(full), _card(cut)
    assert a["epsilon_spent"] == b["epsilon_spent"] and a["steps"] == b["steps"] and b["world_size"] == 2
    assert [m["train_loss"] for m in _metrics(full)] == [m["train_loss"] for m in _metrics(cut)]
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)


def test_device_setting_and_single_process_defaults(monkeypatch):
    from privfer.errors import PrivferError
    from privfer.train import distributed

    with pytest.raises(PrivferError, match="device must be"):
        TrainConfig.from_dict({"public": "fer2013:/x", "device": "tpu"})
    if not torch.cuda.is_available():
        assert distributed.resolve_device("auto").type == "cpu"
        with pytest.raises(PrivferError, match="no CUDA"):
            distributed.resolve_device("cuda")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu").type == "cpu"  # no torchrun: no process group, rank 0 of 1
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_sum([1.5, 2]) == [1.5, 2] and distributed.all_gather_object("x") == ["x"]
    distributed.cleanup()
