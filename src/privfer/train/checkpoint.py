"""Checkpoints: weights, EMA weights and optimizer tensors as safetensors; everything else as JSON.

A checkpoint is complete or absent: the weights file has a unique name, ``state.json`` (which names
it) is written atomically after it, and older weights are removed only then. Interrupting training
at any moment leaves the last complete checkpoint usable.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PrivferError
from ..models.io import save_weights, write_json_atomic

STATE = "state.json"


def _opt_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _opt_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckdir: Path, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, state: dict,
                    rng: np.random.Generator) -> None:
    """Write one complete checkpoint (see module docstring). ``state`` must be JSON-serialisable."""
    ckdir.mkdir(parents=True, exist_ok=True)
    tag = f"{state['stage']}-e{state['epoch']:04d}-s{state['global_step']:07d}"
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_t, opt_meta = _opt_split(opt)
    tensors.update(opt_t)
    tensors["rng.torch"] = torch.get_rng_state()
    weights = ckdir / f"ckpt-{tag}.safetensors"
    save_weights(tensors, weights)
    full = {**state, "weights": weights.name, "optimizer": opt_meta,
            "numpy_rng": rng.bit_generator.state}
    write_json_atomic(ckdir / STATE, full)
    for old in ckdir.glob("ckpt-*.safetensors"):
        if old.name != weights.name:
            old.unlink(missing_ok=True)


def load_checkpoint(ckdir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state, tensors) of the last complete checkpoint in ``ckdir``; PrivferError if there is none."""
    from safetensors.torch import load_file

    sp = ckdir / STATE
    if not sp.is_file():
        raise PrivferError(f"{ckdir.parent}: not a privfer run (no checkpoint/{STATE})")
    try:
        state = json.loads(sp.read_text())
        tensors = load_file(str(ckdir / state["weights"]))
    except Exception as e:  # corrupt JSON, missing weights
        raise PrivferError(f"{sp}: unusable checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return state, tensors


def restore(tensors: dict[str, torch.Tensor], state: dict, net: nn.Module, ema: nn.Module,
            opt: torch.optim.Optimizer, rng: np.random.Generator) -> None:
    """Load weights, EMA, optimizer and RNG states saved by :func:`save_checkpoint`."""
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt.load_state_dict(_opt_join(tensors, state["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    rng.bit_generator.state = state["numpy_rng"]
