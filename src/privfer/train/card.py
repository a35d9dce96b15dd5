"""The model card: what the model is, which data it saw, and which privacy guarantee covers which data."""
from __future__ import annotations

import platform
import sys

from .. import __version__
from ..models.registry import MODELS, card_kwargs
from .data import IN_PRIVATE
from .privacy import PrivacyState


def environment(seed: int) -> dict:
    """Versions and settings needed to reproduce a run."""
    import numpy
    import opacus
    import torch

    return {"privfer": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "opacus": opacus.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
            # the CPU and the vector instructions torch's kernels use: floating-point sums (and so the weights
            # of a network trained over many steps) can differ between CPUs with different ones
            "cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "seed": seed}


def _cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_data(fs, subset: str | None = None) -> dict | None:
    """How a model card names a data set: spec, size, hash of its content, class counts and what was dropped."""
    if fs is None:
        return None
    d = {"spec": fs.spec, "n": len(fs), "data_hash": fs.data_hash(), "class_counts": fs.class_counts()}
    if fs.dropped.get("duplicate image"):
        d["duplicates_dropped"] = fs.dropped["duplicate image"]
    if fs.dropped.get(IN_PRIVATE):
        d["private_overlap_dropped"] = fs.dropped[IN_PRIVATE]
    if subset:
        d["subset"] = subset
    return d


def model_card(cfg, data, privacy: PrivacyState | None, calib: dict, selected: str, elapsed: float, st: dict,
               world_size: int = 1, feature_center: dict | None = None, feature_subspace: dict | None = None,
               initialised_from: dict | None = None) -> dict:
    """Build ``model_card.json`` (all keys documented in the README's "Model card" section).

    ``world_size``: processes that trained the model together (torchrun); the guarantee does not depend on it.
    ``feature_center``: where a model's feature centre came from (``privfer.train.center.describe_center``).
    ``feature_subspace``: where its public feature subspace came from (``privfer.train.subspace.describe_subspace``);
    the saved weights have it folded in, so ``model_kwargs`` omit ``project``.
    ``initialised_from``: the trained model the run started from (``privfer.models.io.init_weights``)."""
    eps = privacy.epsilon() if privacy is not None else None
    # --public-split: both sets come from one spec; say which part (by content hash) each one is
    split_note = f" (split by content hash, public fraction {cfg.public_split})" if cfg.public_split else None
    if privacy is not None:
        unit = ("each distinct image (content hash; duplicates were trained on once)" if cfg.dedupe else
                "each example (an image present k times is covered only at k*epsilon)")
        guarantee = (f"(epsilon={eps:.3f}, delta={privacy.delta:g})-DP with respect to {unit} of the private "
                     f"data {data.private.spec}{split_note or ''} (target epsilon {privacy.epsilon_target})")
    else:
        guarantee = "none: no differential privacy was used"
    public_note = None
    if data.public is not None:
        public_note = f"public data {data.public.spec}{split_note or ''} was trained on WITHOUT differential privacy: no guarantee covers it"
    card = {
        "model": cfg.model,
        "model_kwargs": card_kwargs(cfg.model, {k: v for k, v in cfg.model_kwargs.items() if k != "project"}),
        "classes": list(data.classes),
        "input_size": cfg.input_size,
        "epsilon_target": privacy.epsilon_target if privacy else None,
        "epsilon_spent": eps,
        "delta": privacy.delta if privacy else None,
        "noise_multiplier": privacy.noise_multiplier if privacy else None,
        "max_grad_norm": privacy.max_grad_norm if privacy else None,
        "sample_rate": privacy.sample_rate if privacy else None,
        "steps": privacy.steps if privacy else st["global_step"],
        "aug_mult": cfg.aug_mult,
        "clipping": cfg.clipping if privacy else None,
        "accountant": privacy.accountant if privacy else None,
        "accountant_history": privacy.history if privacy else None,
        "world_size": world_size,
        "private_data": describe_data(data.private, split_note and f"images with content-hash fraction >= {cfg.public_split}"),
        "public_data": describe_data(data.public, split_note and f"images with content-hash fraction < {cfg.public_split}"),
        "val_data": describe_data(data.val),
        "guarantee": guarantee,
        "public_data_note": public_note,
        "initialised_from": initialised_from and {
            **initialised_from, "note": "training started from this model's weights: the data it learnt from (its_*) "
                                        "shaped this model too, with no guarantee of this card"},
        "pretrained_frontend": getattr(MODELS.get(cfg.model), "pretrained", None),
        "feature_center": feature_center,
        "feature_subspace": feature_subspace,
        "validation_use": (f"validation data ({data.val.spec}) was used, without privacy, only for checkpoint "
                           f"selection and calibration; checkpoint: {selected}") if data.val is not None else
                          "no validation data: last checkpoint kept, not calibrated",
        "train_metrics_note": "train_loss/train_acc in metrics.jsonl are computed on the training data without noise: "
                              "share them only as far as that data may be shared",
        "temperature": calib["temperature"],
        "class_bias": calib.get("class_bias"),
        "class_bias_objective": calib.get("class_bias_objective"),
        "class_bias_min_recall": calib.get("class_bias_min_recall"),
        "calibration_version": calib["calibration_version"],
        "negative_threshold": calib["negative_threshold"],
        "negative_recall_target": cfg.negative_recall,
        "calibrated_on": calib["calibrated_on"],
        "selected": selected,
        "seed": cfg.seed,
        "training_time_s": round(elapsed, 1),
        "config": cfg.to_dict(),
        "environment": environment(cfg.seed),
    }
    return card
