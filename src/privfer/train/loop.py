"""The training loop: optional non-private stage on public data, then DP-SGD on private data.

Read top to bottom: :func:`train` prepares data (content-hash split and overlap check), builds the
model, runs each stage epoch by epoch (checkpointing after each), then selects, calibrates and saves
the EMA weights with a model card.

Under torchrun (see ``distributed.py``) every rank runs this same code on the same global batches and
keeps only the examples it owns; gradients are summed over ranks; rank 0 alone validates, logs and
writes the run directory. With one process every distributed call below is a no-op.
"""
from __future__ import annotations

import base64
import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.cache import FaceSet, load_faces
from ..data.spec import parse_spec
from ..errors import PrivferError
from ..models.io import (CALIBRATION_VERSION, LoadedModel, init_weights, round_to_stored, save_weights,
                         write_json_atomic)
from ..models.registry import build_model
from . import distributed
from .augment import Augment
from .card import environment, model_card
from .center import center_of, describe_center, init_center
from .checkpoint import load_checkpoint, restore, save_checkpoint
from .config import TrainConfig
from .data import check_disjoint, split_by_hash, to_input, without_private
from .dp import DPStepper
from .features import FeatureViews, cached, frontend_of, head_logits, mirror_views
from .objective import Objective, check_negative_mask
from ..eval.calibrate import check_min_recall
from .privacy import PrivacyState, steps_per_epoch
from .subspace import describe_subspace, fold_projection, init_subspace, projection_of
from ..taxonomy import negative_mask


@dataclass
class Data:
    """The data of a run: public (trained without DP), private (only with DP), validation."""

    public: FaceSet | None
    private: FaceSet | None
    val: FaceSet | None
    classes: tuple[str, ...]
    #: the validation set through the model's fixed front-end, when it has one (see ``features.py``)
    val_features: torch.Tensor | None = None


def prepare_data(cfg: TrainConfig, progress: bool = False) -> Data:
    """Load the training sets, carve out or check the public set, and find the validation split."""
    def load(spec: str) -> FaceSet:
        return load_faces(parse_spec(spec), size=cfg.input_size, labels=cfg.labels, progress=progress)

    private = load(cfg.private) if cfg.private else None
    public = load(cfg.public) if cfg.public else None
    if cfg.public_split:
        public, private = split_by_hash(private, cfg.public_split)
    if cfg.limit:  # the first N of a fixed shuffle (files are sorted by class, so plain first-N is one class)
        public = _first(public, cfg.limit)
        private = _first(private, cfg.limit)
    if private is not None and cfg.dedupe:
        # DP protects each *record*: an image present k times is only (k*eps)-protected (group privacy).
        # Training on each distinct image once makes the guarantee hold per image.
        private = private.unique()
    if public is not None and private is not None:
        if public.classes != private.classes:
            raise PrivferError(f"public classes {public.classes} differ from private classes {private.classes}")
        check_disjoint(public, private)
    main = private if private is not None else public
    def load_val(spec: str) -> FaceSet:  # validation always uses hard (majority) labels
        return load_faces(parse_spec(spec), size=cfg.input_size, labels="majority", progress=progress)

    val = None
    if cfg.val:
        val = load_val(cfg.val)
    else:
        spec = parse_spec(cfg.private or cfg.public)
        try:
            val = load_val(str(spec.with_split("val")))
        except PrivferError:
            val = None  # the dataset has no validation split
    if val is not None and val.classes != main.classes:
        raise PrivferError(f"validation classes {val.classes} differ from training classes {main.classes}")
    if val is not None and private is not None:
        # checkpoint selection and calibration use validation without privacy (FER2013's PublicTest holds 280
        # of its training images): the card counts the images left out
        val = without_private(val, private.hashes)
    return Data(public, private, val, main.classes)


def _first(fs: FaceSet | None, n: int) -> FaceSet | None:
    if fs is None:
        return None
    order = np.random.default_rng(0).permutation(len(fs))[:n]
    return fs.subset(np.sort(order))


def lr_at(step: int, total: int, base: float, warmup_frac: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return base * (step + 1) / warm
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class EMA:
    """Exponential moving average of the weights (with the usual warm-up); what is evaluated and saved."""

    def __init__(self, net: nn.Module, decay: float):
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.net.parameters(), net.parameters()):
            e.lerp_(p.detach(), 1.0 - d)


def val_logits(net: nn.Module, data: Data) -> np.ndarray:
    """Logits of ``net`` on the fixed, un-augmented validation set (from the cached front-end features when
    the model has a fixed front-end)."""
    if data.val_features is not None:
        return head_logits(net, data.val_features).cpu().numpy()
    return LoadedModel(net, {"classes": list(data.classes)}).logits(data.val.pixels)


def val_metrics(net: nn.Module, data: Data) -> dict:
    """Loss and accuracy of ``net`` on the validation set."""
    if data.val is None:
        return {"val_loss": None, "val_acc": None}
    logits = torch.from_numpy(val_logits(net, data))
    y = torch.from_numpy(data.val.labels)
    return {"val_loss": float(nn.functional.cross_entropy(logits, y)), "val_acc": float((logits.argmax(1) == y).float().mean())}


def _tqdm(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, log=print) -> Path:
    """Run (or resume) a training run into ``cfg.out``; returns the run directory.

    Under torchrun every rank calls this; the process group is joined here and left on return.
    """
    device = distributed.init(cfg.device)
    try:
        return _train(cfg, resume, progress, log, device)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, resume: bool, progress: bool, log, device: torch.device) -> Path:
    out = Path(cfg.out)
    ckdir = out / "checkpoint"
    main = distributed.is_main()
    if not main:  # rank 0 alone logs and shows progress
        log, progress = (lambda *_: None), False
    problem = None
    if cfg.clipping == "ghost" and distributed.world_size() > 1:
        problem = "clipping ghost runs in one process: use --clipping flat with torchrun"
    elif main and not resume and out.exists() and any(out.iterdir()):
        problem = f"{out}: run directory exists and is not empty (use --resume {out} or another --out)"
    problem = distributed.broadcast_object(problem)  # rank 0 creates the directory: only it may check
    if problem:
        raise PrivferError(problem)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # the same on every rank: all ranks draw the same global batches
    t_start = time.time()

    if not distributed.is_local_main():  # the first process on each machine fills the preprocessing cache
        distributed.barrier()
    data = prepare_data(cfg, progress=progress)
    if distributed.is_local_main():
        distributed.barrier()
    net = build_model(cfg.model, len(data.classes), **cfg.model_kwargs).to(device)
    # init_from: the run starts from a trained model (refused with private data: config.py)
    initialised = init_weights(net, cfg.init_from, data.classes) if cfg.init_from else None
    center_given = initialised is not None and "head.0.mean" in initialised["tensors"]  # center_of: head[0]
    fe = frontend_of(net)
    if center_of(net) is not None and fe is None and not center_given:
        raise PrivferError(f"model_kwargs center: model {cfg.model!r} has no fixed front-end to fit a feature centre "
                           "on; start it from a trained model with one (init_from), or drop center")
    if cfg.aug_views and fe is None:
        raise PrivferError(f"aug_views: model {cfg.model!r} has no fixed front-end whose features could be cached")
    if cfg.negative_weight:  # refused before the run directory is written
        check_negative_mask(torch.tensor(negative_mask(data.classes)), data.classes)
    if cfg.min_recall:  # refused before the run directory is written
        if data.val is None:
            raise PrivferError("min_recall: the class offsets' recall floors are fit on validation data; give --val")
        check_min_recall(cfg.min_recall, data.classes, data.val.labels)
    if fe is not None and data.val is not None and distributed.is_main():
        data.val_features = torch.from_numpy(np.array(cached(fe, data.val.pixels, data.val.hashes)))
    if distributed.rank() > 0:  # same initial weights (seed above); each rank its own augmentations
        torch.manual_seed(_rank_seed(cfg.seed, distributed.rank()))
    ema = EMA(net, cfg.ema_decay)
    aug = Augment(**(cfg.augment_ranges or {})) if cfg.augment else Augment.off()
    # a feature centre comes from the public data when there is some, else from the private data (one release)
    private_center = center_of(net) is not None and data.public is None and data.private is not None

    privacy = None
    if data.private is not None:
        privacy = PrivacyState.plan(cfg.epsilon, cfg.delta, len(data.private), cfg.batch_size, cfg.epochs,
                                    cfg.max_grad_norm, releases=[cfg.center_noise] if private_center else [])

    st = {"stage": cfg.stages[0], "stage_index": 0, "epoch": 0, "global_step": 0, "stage_step": 0,
          "best_val_acc": -1.0, "metrics_lines": 0, "elapsed_s": 0.0}
    ckpt = None
    if resume:
        saved, tensors = load_checkpoint(ckdir)
        st = {k: saved[k] for k in st}
        if saved.get("privacy"):
            privacy = PrivacyState.from_dict(saved["privacy"])
            if cfg.private:
                planned = cfg.epochs * steps_per_epoch(privacy.sample_rate)
                if planned != privacy.planned_steps:
                    privacy.extend_to(planned)
        ema.updates = saved.get("ema_updates", 0)
        ckpt = (saved, tensors)
        t_start = time.time() - st["elapsed_s"]
        if main:
            _truncate_lines(out / "metrics.jsonl", st["metrics_lines"])
        ranks_then = len(saved.get("rank_rng") or [None])
        if ranks_then != distributed.world_size():
            log(f"note: resuming with {distributed.world_size()} processes, checkpoint written with {ranks_then}: "
                "same batches, noise and epsilon, but augmentations (and so weights) differ from an uninterrupted run")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", cfg.to_dict())
        write_json_atomic(out / "environment.json", environment(cfg.seed))
    log(f"privfer train: {len(data.classes)} classes; public={len(data.public) if data.public is not None else 0} "
        f"private={len(data.private) if data.private is not None else 0} val={len(data.val) if data.val is not None else 0}")
    if initialised is not None:
        log(f"initialised from {initialised['model']} ({initialised['its_model']}, {len(initialised['tensors'])} tensors)")
    if data.private is not None and data.private.dropped.get("duplicate image"):
        log(f"private data: {data.private.dropped['duplicate image']} duplicate images (content hash) dropped: "
            "each distinct image is trained on once")
    if distributed.world_size() > 1:
        log(f"distributed: {distributed.world_size()} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), "
            "one global batch, noise added once (rank 0)")
    if privacy is not None:
        log(f"DP-SGD: target (eps={privacy.epsilon_target}, delta={privacy.delta}), noise {privacy.noise_multiplier:.4f}, "
            f"q={privacy.sample_rate:.5f}, {privacy.planned_steps} steps, C={privacy.max_grad_norm}, K={cfg.aug_mult}")
    if center_of(net) is not None and ckpt is None and not center_given:  # a resumed run has its centre in the checkpoint
        init_center(cfg, data, net, ema.net, fe, privacy, _shard(data.private) if private_center else None, log)
    if projection_of(net) is not None and ckpt is None:  # a resumed run has its basis in the checkpoint
        init_subspace(cfg, data, net, ema.net, fe, log)

    for si in range(st["stage_index"], len(cfg.stages)):
        stage = cfg.stages[si]
        if si != st["stage_index"]:
            st.update(stage=stage, stage_index=si, epoch=0, stage_step=0, best_val_acc=-1.0)
            ckpt = None
            ema.updates = 0
        if stage == "public":
            _run_public(cfg, data, net, ema, aug, rng, st, ckpt, out, progress, log, t_start, device)
        else:
            _run_private(cfg, data, net, ema, aug, rng, st, ckpt, privacy, out, progress, log, t_start, device)
        ckpt = None

    if main:
        _finish(cfg, data, net, ema, privacy, st, out, time.time() - t_start, log, initialised)
    distributed.barrier()
    return out


def _rank_seed(seed: int, rank: int) -> int:
    """Torch seed of rank > 0 (rank 0 keeps ``seed``, as a single process does)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _shard(fs: FaceSet) -> FaceSet:
    """The examples this rank owns: global index i with i % world_size == rank (all of them for one process)."""
    world = distributed.world_size()
    return fs if world == 1 else fs.subset(np.arange(distributed.rank(), len(fs), world))


def _own(rows: torch.Tensor) -> torch.Tensor:
    """Of the global indices ``rows``, those this rank owns, as indices into its :func:`_shard`."""
    world = distributed.world_size()
    return rows if world == 1 else rows[rows % world == distributed.rank()] // world


def _rng_states(device: torch.device) -> list[dict] | None:
    """Every rank's torch RNG states (CPU, and CUDA when used), for exact resume; None for one CPU process
    (its state is the checkpoint's ``rng.torch``). A collective: all ranks call it."""
    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.cpu().numpy().tobytes()).decode()

    if distributed.world_size() == 1 and device.type == "cpu":
        return None
    mine = {"cpu": b64(torch.get_rng_state()),
            "cuda": b64(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None}
    return distributed.all_gather_object(mine)


def _restore_rank_rng(saved: dict, cfg: TrainConfig, device: torch.device) -> None:
    """After :func:`restore` (which sets rank 0's CPU state): this rank's own saved states."""
    def unb64(s: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())

    states, r = saved.get("rank_rng") or [], distributed.rank()
    if r < len(states):
        torch.set_rng_state(unb64(states[r]["cpu"]))
        if device.type == "cuda" and states[r].get("cuda"):
            torch.cuda.set_rng_state(unb64(states[r]["cuda"]), device)
    elif r > 0:  # more processes than when the checkpoint was written
        torch.manual_seed(_rank_seed(cfg.seed, r) + saved["global_step"])


def _truncate_lines(path: Path, n: int) -> None:
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)[:n]
        path.write_text("".join(lines))


def _end_epoch(cfg, data, net, ema, opt, rng, st, out, stage, sums, privacy, lr, log, t_start, device):
    """Validate the EMA weights, log metrics, keep the best weights, and checkpoint (rank 0 only).

    ``sums`` = (loss sum, correct, views seen) of this rank's examples; summed over ranks here."""
    loss_sum, correct, seen = distributed.all_sum(list(sums))
    train_loss, train_acc = loss_sum / max(seen, 1), correct / max(seen, 1)
    rank_rng = _rng_states(device)
    st["epoch"] += 1
    st["elapsed_s"] = round(time.time() - t_start, 1)
    st["metrics_lines"] += 1
    if not distributed.is_main():
        return
    m = {"stage": stage, "epoch": st["epoch"], "step": st["global_step"], "train_loss": train_loss,
         "train_acc": train_acc, **val_metrics(ema.net, data),
         "epsilon": privacy.epsilon() if (privacy is not None and stage == "private") else None,
         "lr": lr, "time_s": st["elapsed_s"]}
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(m) + "\n")
    if m["val_acc"] is not None and m["val_acc"] > st["best_val_acc"]:
        st["best_val_acc"] = m["val_acc"]
        save_weights(ema.net.state_dict(), out / "best.safetensors")
    eps = "" if m["epsilon"] is None else f" eps={m['epsilon']:.3f}"
    va = "" if m["val_acc"] is None else f" val_loss={m['val_loss']:.4f} val_acc={m['val_acc']:.4f}"
    save_checkpoint(out / "checkpoint", net, ema.net, opt, {
        **st, "privacy": privacy.to_dict() if privacy is not None else None, "ema_updates": ema.updates,
        **({"rank_rng": rank_rng} if rank_rng is not None else {}),
    }, rng)
    log(f"[{stage}] epoch {st['epoch']}: train_loss={train_loss:.4f} train_acc={train_acc:.4f}{va}{eps} ({m['time_s']}s)")


def _feature_views(cfg, fe, fs, device) -> FeatureViews | None:
    """The cached features of training set ``fs`` when the model has a fixed front-end and the cache is on."""
    if fe is None or not cfg.feature_cache:
        return None
    return FeatureViews(fe, fs, mirror=mirror_views(fe, cfg.augment), device=device, aug_views=cfg.aug_views)


def _run_public(cfg, data, net, ema, aug, rng, st, ckpt, out, progress, log, t_start, device):
    n = len(data.public)
    fs = _shard(data.public)
    world = distributed.world_size()
    x = torch.from_numpy(fs.pixels)
    fe = frontend_of(net)
    fv = _feature_views(cfg, fe, fs, device)
    obj = _objective(cfg, fs, device)
    opt = make_optimizer(cfg.public_optimizer, net.parameters(), cfg.public_lr, cfg.momentum, cfg.public_weight_decay)
    if ckpt is not None:
        restore(ckpt[1], ckpt[0], net, ema.net, opt, rng)
        _restore_rank_rng(ckpt[0], cfg, device)
    spe = math.ceil(n / cfg.public_batch_size)
    total = spe * cfg.public_epochs
    net.train()
    while st["epoch"] < cfg.public_epochs:
        perm = torch.from_numpy(rng.permutation(n))
        loss_sum = correct = seen = 0
        bar = _tqdm(spe, f"public {st['epoch'] + 1}/{cfg.public_epochs}", progress)
        for b in range(spe):
            batch = perm[b * cfg.public_batch_size:(b + 1) * cfg.public_batch_size]  # the global batch
            rows = _own(batch)
            lr = lr_at(st["stage_step"], total, cfg.public_lr, cfg.warmup_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            if len(rows):
                if fv is not None:  # fixed front-end: its cached features, a random mirror image as augmentation
                    forward, inputs = net.head, fv.views(rows)
                else:
                    forward, inputs = net, aug(to_input(x[rows])).to(device)
                if cfg.public_mixup:
                    logits, loss = _mixup(forward, inputs, rows, obj, rng, cfg.public_mixup)
                else:
                    logits = forward(inputs)
                    loss = obj(logits, rows)
                # several ranks: each back-propagates its share of the global mean; the shares are summed below
                (loss * (len(rows) / len(batch)) if world > 1 else loss).backward()
                loss_sum += loss.item() * len(rows)
                correct += obj.correct(logits, rows)
                seen += len(rows)
            if world > 1:
                _sum_grads(net)
            opt.step()
            ema.update(net)
            st["stage_step"] += 1
            st["global_step"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{correct / max(seen, 1):.3f}")
        bar.close()
        _end_epoch(cfg, data, net, ema, opt, rng, st, out, "public", (loss_sum, correct, seen), None, lr, log,
                   t_start, device)


def _mixup(forward, inputs: torch.Tensor, rows: torch.Tensor, obj: Objective, rng, alpha: float):
    """Mixup (Zhang et al. 2018) of one non-private batch: the logits of ``lam * inputs + (1 - lam) * inputs[pair]``
    (``pair`` a random permutation of the batch, ``lam`` drawn from Beta(alpha, alpha)) and the same mixture of the
    two examples' losses. Returns (logits, loss)."""
    lam = float(rng.beta(alpha, alpha))
    pair = torch.from_numpy(rng.permutation(len(rows)))
    logits = forward(lam * inputs + (1 - lam) * inputs[pair.to(inputs.device)])
    return logits, lam * obj(logits, rows) + (1 - lam) * obj(logits, rows[pair])


def _objective(cfg, fs: FaceSet, device) -> Objective:
    """The training loss on ``fs``'s labels (or votes), with the config's label smoothing and negative term."""
    return Objective(torch.from_numpy(fs.labels).to(device),
                     torch.from_numpy(fs.votes).to(device) if fs.votes is not None else None, cfg.label_smoothing,
                     torch.tensor(negative_mask(fs.classes)), cfg.negative_weight)


def _sum_grads(net: nn.Module) -> None:
    """All-reduce (sum) the gradients over ranks; a rank with no examples in the batch contributes zeros."""
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    distributed.all_reduce_sum_([p.grad for p in params])


def _run_private(cfg, data, net, ema, aug, rng, st, ckpt, privacy, out, progress, log, t_start, device):
    n = len(data.private)
    fs = _shard(data.private)
    x = torch.from_numpy(fs.pixels)
    obj = _objective(cfg, fs, device)
    base = make_optimizer(cfg.optimizer, net.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    k = cfg.aug_mult
    fe = frontend_of(net)
    fv = _feature_views(cfg, fe, fs, device)
    stepper = DPStepper(net.head if fe is not None else net, base, privacy.noise_multiplier, privacy.max_grad_norm,
                        expected_batch_size=max(1, round(privacy.sample_rate * n)),  # of the global batch
                        physical_batch_size=cfg.physical_batch_size, aug_mult=k,
                        distributed=distributed.world_size() > 1, ghost=cfg.clipping == "ghost")
    if ckpt is not None:
        restore(ckpt[1], ckpt[0], net, ema.net, base, rng)
        _restore_rank_rng(ckpt[0], cfg, device)

    inputs = _inputs_of(fv, fe, x, aug, device)

    def views(rows: torch.Tensor) -> torch.Tensor:
        return inputs(rows, k)

    mix = _public_mix(cfg, data, stepper, fe, aug, rng, device, privacy.max_grad_norm)
    spe = steps_per_epoch(privacy.sample_rate)
    epochs = math.ceil(privacy.planned_steps / spe)
    net.train()
    while privacy.steps < privacy.planned_steps:
        loss_sum = correct = seen = 0
        steps_now = min(spe, privacy.planned_steps - privacy.steps)
        bar = _tqdm(steps_now, f"private {st['epoch'] + 1}/{epochs} eps={privacy.epsilon():.2f}", progress)
        for _ in range(steps_now):
            lr = lr_at(privacy.steps, privacy.planned_steps, cfg.lr, cfg.warmup_frac)
            for g in base.param_groups:
                g["lr"] = lr
            # the global Poisson batch (every rank draws the same), then this rank's examples of it
            idx = _own(torch.from_numpy(np.flatnonzero(rng.random(n) < privacy.sample_rate)))
            ls, c, s = stepper.step(obj, idx, views, mix)
            privacy.record_step()
            ema.update(net)
            st["stage_step"] += 1
            st["global_step"] += 1
            loss_sum += ls
            correct += c
            seen += s
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{correct / max(seen, 1):.3f}")
        bar.close()
        _end_epoch(cfg, data, net, ema, base, rng, st, out, "private", (loss_sum, correct, seen), privacy, lr, log,
                   t_start, device)
    stepper.gsm._close()


def _inputs_of(fv, fe, x: torch.Tensor, aug, device):
    """``inputs(rows, k=1)``: the DP-trained module's inputs for K views of each example of ``rows``
    (example-major): the fixed front-end's cached features (``fv``), or freshly transformed faces ``x[rows]``,
    through the fixed front-end ``fe`` when there is one (nothing to learn there, so no gradient)."""
    def inputs(rows: torch.Tensor, k: int = 1) -> torch.Tensor:
        if fv is not None:
            return fv.views(rows, k)
        faces = aug(to_input(x[rows]).repeat_interleave(k, dim=0)).to(device)
        if fe is not None:
            with torch.no_grad():
                return fe(faces)
        return faces

    return inputs


def _public_mix(cfg, data, stepper, fe, aug, rng, device, clip: float):
    """``public_mix``: a function giving, at each DP step, the gradient of the loss on a fresh batch of the public
    data (``public_batch_size`` faces, drawn by the run's generator), rescaled to ``public_mix`` times the
    clipping norm, to add to the released gradient; None without it. Public data only, so no privacy cost."""
    if not cfg.public_mix:
        return None
    fs = data.public
    inputs = _inputs_of(_feature_views(cfg, fe, fs, device), fe, torch.from_numpy(fs.pixels), aug, device)
    obj = _objective(cfg, fs, device)

    def gradient() -> list[torch.Tensor]:
        rows = torch.from_numpy(np.sort(rng.choice(len(fs), size=min(cfg.public_batch_size, len(fs)), replace=False)))
        batch = inputs(rows)
        return stepper.public_gradient(lambda model: obj(model(batch), rows), cfg.public_mix * clip)

    return gradient


def _finish(cfg, data, net, ema, privacy, st, out, elapsed, log, initialised=None) -> Path:
    """Select weights (validation only), calibrate temperature, class offsets and threshold on validation, write the card."""
    from safetensors.torch import load_file

    final = ema.net
    selected = "last epoch"
    if cfg.select == "best" and (out / "best.safetensors").is_file():
        final = copy.deepcopy(ema.net)
        final.load_state_dict(load_file(str(out / "best.safetensors")))
        selected = f"best validation accuracy ({st['best_val_acc']:.4f}) on {data.val.spec}"
    if cfg.weights_dtype != "float32":  # calibrate what will be stored: the folded, rounded weights
        final = round_to_stored(fold_projection(final), cfg.weights_dtype)
    calib = {"temperature": 1.0, "class_bias": None, "class_bias_objective": None, "negative_threshold": 0.5,
             "calibration_version": CALIBRATION_VERSION, "calibrated_on": None}
    if data.val is not None:
        from ..eval.calibrate import fit_calibration

        calib = {**fit_calibration(val_logits(final, data), data.val.labels, data.classes, cfg.class_bias,
                                   cfg.negative_recall, cfg.min_recall), "calibrated_on": data.val.spec}
    fe = frontend_of(final)
    final = fold_projection(final)  # the saved model has the public subspace folded into its first layer
    card = model_card(cfg, data, privacy, calib, selected, elapsed, st, world_size=distributed.world_size(),
                      feature_center=describe_center(cfg, data, fe) if fe is not None else None,
                      feature_subspace=describe_subspace(cfg, data), initialised_from=initialised)
    save_weights(final.state_dict(), out / "model.safetensors", cfg.weights_dtype)
    write_json_atomic(out / "model_card.json", card)
    eps = "" if privacy is None else f", epsilon spent {card['epsilon_spent']:.3f} (target {privacy.epsilon_target})"
    log(f"saved {out}/model.safetensors ({selected}){eps}")
    return out
