"""Membership-inference audit: how much a model leaks about who was in its training set.

Read top to bottom:

1. :func:`load_sides` loads the members and non-members and checks them against the model card:
   the card's training recipe (``card["config"]``) is re-run through
   :func:`privfer.train.loop.prepare_data` (public split by content hash, ``limit``), the reloaded
   sets must match the card's ``data_hash``, every member's content hash must be training data and
   no non-member's may be. ``limit`` then draws a fixed-seed sample of the same size per side.
2. Attack scores, higher = "member":

   * ``loss`` (Yeom et al. 2018): minus the cross-entropy of the true class (temperature 1).
   * ``confidence``: the true-class softmax probability (temperature 1). It orders examples exactly
     as the loss does (p = exp(-loss)), so its ROC is the loss attack's; it is offered because it is
     the statistic users know.
   * ``lira`` (Carlini et al. 2022, "Membership Inference Attacks From First Principles"): shadow
     models trained with the model's own recipe on random halves of a population that contains the
     audited examples (:func:`lira_scores`). Per example, the logit-scaled true-class confidence
     ``phi = log(p / (1 - p)) = z_y - logsumexp_{j != y} z_j`` of the target is compared with Gaussians
     fitted to the shadows' ``phi``: online (IN and OUT shadows) score = ``log N(phi; mu_in, s_in^2) -
     log N(phi; mu_out, s_out^2)``; offline (OUT only) score = ``(phi - mu_out) / s_out``, which orders
     examples as the paper's one-sided ``Pr[Z < phi]`` does without its saturation at 1.
3. :func:`attack_metrics`: ROC AUC, TPR at 1% and 0.1% FPR, balanced attack accuracy, and the
   empirical lower bound on epsilon (:func:`epsilon_lower_bound`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.cache import FaceSet, cache_dir, load_faces
from ..errors import PrivferError
from ..infer.outputs import save_figure
from ..models.io import LoadedModel, load_model, write_json_atomic
from . import metrics as M

ATTACKS = ("loss", "confidence", "lira")
#: FPRs at which the TPR is reported (JSON keys are ``str(fpr)``: "0.01", "0.001").
FPR_POINTS = (0.01, 0.001)
#: Confidence of the Clopper-Pearson intervals behind the epsilon lower bound.
CONFIDENCE = 0.95
#: Seed of the ``limit`` sample and of the shadow models' data halves.
SAMPLE_SEED = 0
#: Below this many shadow models, LiRA falls back to a variance shared by all examples (Carlini et al.).
PER_EXAMPLE_VARIANCE_MIN = 64
#: Fields of a shadow's training config that do not change what it learns (left out of the cache key; the
#: data fields stay in: :func:`shadow_recipe` fills them with fixed placeholders that name the stage trained).
#: The calibration fields are fit on validation data after training, which shadows do not have.
_NOT_RECIPE = ("out", "threads", "device", "seed", "class_bias", "min_recall", "negative_recall")


# ---------------------------------------------------------------- members, non-members, and the card

@dataclass
class Sides:
    """The audited examples: members first, then non-members, labels indexing the model's classes."""

    members: FaceSet
    non_members: FaceSet
    check: dict = field(default_factory=dict)
    #: all checked (members, non-members) before the ``limit`` sample: the reservoir for LiRA's population
    pool: tuple[FaceSet, FaceSet] | None = None


def to_classes(fs: FaceSet, classes: tuple[str, ...]) -> tuple[FaceSet, int]:
    """``fs`` with labels re-indexed to ``classes``; rows of unknown or other classes dropped (counted)."""
    lut = np.array([classes.index(c) if c in classes else -1 for c in fs.classes] + [-1], np.int64)
    lab = lut[np.where(fs.labels >= 0, fs.labels, len(fs.classes))]
    keep = lab >= 0
    out = fs.subset(keep)
    out.labels = lab[keep]
    out.classes = tuple(classes)
    return out, int((~keep).sum())


def training_hashes(card: dict, source: str = "model card", progress: bool = False) -> dict[str, set[str]]:
    """Content hashes of the data the card says the model was trained on: ``{"private": ..., "public": ...}``.

    The card's config is re-run through :func:`privfer.train.loop.prepare_data`, so the public split
    by content hash and ``limit`` are honoured exactly as in training; each reloaded set must have the
    ``data_hash`` the card records, else the data on disk is not what the model saw.
    """
    from ..train.config import TrainConfig
    from ..train.loop import prepare_data

    if not isinstance(card.get("config"), dict):
        raise PrivferError(f"{source}: the model card records no training config, so membership cannot be checked")
    # cards written before privfer deduplicated private data record no `dedupe`: they trained on every record
    cfg = TrainConfig.from_dict({"dedupe": False, **card["config"]}, source=f"{source} (config)")
    data = prepare_data(cfg, progress=progress)
    out = {}
    for name, fs in (("private", data.private), ("public", data.public)):
        rec = card.get(f"{name}_data")
        if fs is None and not rec:
            out[name] = set()
            continue
        if fs is None or not rec or fs.data_hash() != rec.get("data_hash"):
            spec = fs.spec if fs is not None else (rec or {}).get("spec")
            raise PrivferError(f"{source}: the {name} training data {spec} on disk is not the data the model card "
                               "records (data_hash differs), so membership cannot be checked")
        out[name] = set(fs.hashes.tolist())
    return out


def _sample(fs: FaceSet, n: int, seed: int) -> FaceSet:
    """A fixed-seed sample of ``n`` rows of ``fs`` (kept in file order)."""
    if n >= len(fs):
        return fs
    return fs.subset(np.sort(np.random.default_rng(seed).choice(len(fs), n, replace=False)))


def load_sides(model: LoadedModel, members: str, non_members: str, *, limit: int | None = None,
               drop_overlap: bool = False, private_only: bool = False, progress: bool = False) -> Sides:
    """Load and check the audited examples (see the module docstring, step 1).

    ``drop_overlap`` drops non-members whose image is training data (FER2013 has such duplicates
    between its splits) instead of refusing; ``private_only`` keeps only the members trained on with
    DP-SGD (the data the card's epsilon covers). ``limit`` samples ``min(limit, |members|,
    |non-members|)`` from each side with a fixed seed.
    """
    classes = model.classes
    size = model.input_size
    m_fs, m_drop = to_classes(load_faces(members, size=size, progress=progress), classes)
    n_fs, n_drop = to_classes(load_faces(non_members, size=size, progress=progress), classes)
    train = training_hashes(model.card, source=model.name, progress=progress)
    seen = train["private"] | train["public"]
    not_in = ~np.isin(m_fs.hashes, list(seen))
    if not_in.any():
        raise PrivferError(f"{int(not_in.sum())} of {len(m_fs)} members ({members}) are not training data of "
                           f"{model.name} according to its model card (content hashes)")
    overlap = np.isin(n_fs.hashes, list(seen))
    if overlap.any() and not drop_overlap:
        raise PrivferError(f"{int(overlap.sum())} of {len(n_fs)} non-members ({non_members}) are training data of "
                           f"{model.name} according to its model card (content hashes); --drop-overlap leaves them out")
    n_fs = n_fs.subset(~overlap)
    in_private = np.isin(m_fs.hashes, list(train["private"]))
    public_dropped = 0
    if private_only:
        public_dropped = int((~in_private).sum())
        m_fs = m_fs.subset(in_private)
        in_private = in_private[in_private]
    if len(m_fs) == 0 or len(n_fs) == 0:
        raise PrivferError(f"nothing to audit: {len(m_fs)} members and {len(n_fs)} non-members left")
    pool = (m_fs, n_fs)
    if limit is not None:
        if limit < 1:
            raise PrivferError(f"--limit must be >= 1, got {limit}")
        n = min(limit, len(m_fs), len(n_fs))
        m_idx = np.arange(len(m_fs))
        if n < len(m_fs):
            m_idx = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(m_fs), n, replace=False))
        m_fs, in_private = m_fs.subset(m_idx), in_private[m_idx]
        n_fs = _sample(n_fs, n, SAMPLE_SEED + 1)
    check = {
        "members_in_private_data": int(in_private.sum()),
        "members_in_public_data": int((~in_private).sum()),
        "non_members_dropped_as_training_data": int(overlap.sum()),
        "members_dropped_as_public_data": public_dropped,
        "dropped_classes_unknown_to_model": {"members": m_drop, "non_members": n_drop},
    }
    return Sides(m_fs, n_fs, check, pool)


# ---------------------------------------------------------------- per-example statistics

def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of the true class per example (nats, temperature 1)."""
    return -_log_softmax(logits)[np.arange(len(labels)), labels]


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log(p_y / (1 - p_y))`` per example, computed stably as ``z_y - logsumexp_{j != y} z_j``."""
    z = np.asarray(logits, np.float64)
    rows = np.arange(len(labels))
    zy = z[rows, labels]
    others = z.copy()
    others[rows, labels] = -np.inf
    m = others.max(axis=1)
    return zy - (m + np.log(np.exp(others - m[:, None]).sum(axis=1)))


def simple_scores(model: LoadedModel, fs: FaceSet, attack: str, batch_size: int = 512) -> np.ndarray:
    """Scores of the ``loss`` or ``confidence`` attack (higher = more likely a member)."""
    loss = example_loss(model.logits(fs.pixels, batch_size), fs.labels)
    if attack == "loss":
        return -loss
    if attack == "confidence":
        return np.exp(-loss)
    raise PrivferError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")


# ---------------------------------------------------------------- LiRA shadow models

def concat(a: FaceSet, b: FaceSet) -> FaceSet:
    """Rows of ``a`` then ``b`` (same classes) as one FaceSet."""
    def cat(x, y):
        return None if x is None or y is None else np.concatenate([x, y])

    return FaceSet(np.concatenate([a.pixels, b.pixels]), np.concatenate([a.labels, b.labels]),
                   np.concatenate([a.split, b.split]), np.concatenate([a.hashes, b.hashes]),
                   np.concatenate([a.sources, b.sources]), a.classes, None, cat(a.subjects, b.subjects), {},
                   f"{a.spec} + {b.spec}", cat(a.orig_sizes, b.orig_sizes))


def shadow_recipe(card: dict, n_train: int, epochs: int | None = None) -> tuple[dict, str]:
    """The training config of a shadow model trained on ``n_train`` examples, and a note saying how it
    differs from the model's own recipe (``card["config"]``).

    DP recipes (a private stage) keep the sampling rate (so the expected batch is scaled to the shadow's
    data), steps per epoch, epsilon target, delta and clipping, hence the same noise multiplier; a public
    pretraining stage is skipped. Non-private recipes train their (public) stage on the shadow data.
    Shadows have no validation data: the last weights are kept and not calibrated. ``epochs`` overrides
    the number of epochs of the stage trained.
    """
    from ..models.registry import kwargs_of_card
    from ..train.config import TrainConfig

    if not isinstance(card.get("config"), dict):
        raise PrivferError("the model card records no training config: no recipe for shadow models")
    cfg = TrainConfig.from_dict(card["config"], source="model card (config)").to_dict()
    # the network the card rebuilds (a card from before an option's default changed: the old default)
    cfg["model_kwargs"] = kwargs_of_card({"model": cfg["model"], "model_kwargs": cfg["model_kwargs"], **card})
    notes = []
    dp = bool(cfg.get("private"))
    if dp:
        n_target = (card.get("private_data") or {}).get("n") or n_train
        q = card.get("sample_rate") or cfg["batch_size"] / n_target
        cfg["batch_size"] = max(1, min(n_train, round(q * n_train)))
        stage, key = "DP-SGD", "epochs"
        if cfg.get("public") or cfg.get("public_split"):
            notes.append("public pretraining stage skipped")
            if (card["config"].get("model_kwargs") or {}).get("project"):
                notes.append("no public feature subspace (project): the head learns on all features")
        notes.append(f"sampling rate {q:.4g} kept (expected batch {cfg['batch_size']})")
    else:
        stage, key = "non-private", "public_epochs"
    if epochs is not None:
        if epochs < 1:
            raise PrivferError(f"--shadow-epochs must be >= 1, got {epochs}")
        notes.append(f"{epochs} epochs instead of the recipe's {cfg[key]}")
        cfg[key] = epochs
    notes.append("no validation data (last weights, uncalibrated)")
    placeholder = "shadow population (in memory)"
    # no validation data, so no calibration: offsets, recall floors and the negative threshold are fit on it
    cfg.update(public=None if dp else placeholder, private=placeholder if dp else None, public_split=None,
               val=None, limit=None, select="last", class_bias="off", min_recall=None, negative_recall=None)
    return cfg, f"{stage} stage of the model's recipe ({cfg['model']}); " + "; ".join(notes)


@contextlib.contextmanager
def _given_data(data):
    """Make :func:`privfer.train.loop.train` train on ``data`` (in memory) instead of loading its specs.

    Shadow models must be trained on subsets no spec can name; this reuses the training loop as is.
    """
    from ..train import loop

    original = loop.prepare_data
    loop.prepare_data = lambda *args, **kwargs: data
    try:
        yield
    finally:
        loop.prepare_data = original


def _train_shadow(recipe: dict, fs: FaceSet, out: Path, seed: int, progress: bool) -> None:
    """Train one shadow model on ``fs`` into ``out`` (written under a temporary name, then renamed)."""
    from ..train.config import TrainConfig
    from ..train.loop import Data, train

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cfg = TrainConfig.from_dict({**recipe, "out": str(partial), "seed": seed}, source="shadow recipe")
    dp = bool(recipe.get("private"))
    data = Data(public=None if dp else fs, private=fs if dp else None, val=None, classes=fs.classes)
    with _given_data(data):
        train(cfg, progress=progress, log=lambda *_: None)
    shutil.rmtree(partial / "checkpoint", ignore_errors=True)  # only needed to resume; the cache keeps weights + card
    os.replace(partial, out)


def _prime_features(recipe: dict, pop: FaceSet) -> None:
    """Compute (or read) the recipe's fixed front-end features of the whole population once, as its training
    asks for them, so that each shadow's half is gathered from them (``privfer.train.features.cached``) instead of
    computed again and cached as a file of its own."""
    from ..models.registry import build_model
    from ..train.config import TrainConfig
    from ..train.features import FeatureViews, frontend_of, mirror_views

    cfg = TrainConfig.from_dict({**recipe, "out": "unused"}, source="shadow recipe")
    fe = frontend_of(build_model(cfg.model, len(pop.classes), **cfg.model_kwargs)) if cfg.feature_cache else None
    if fe is not None:
        FeatureViews(fe, pop, mirror=mirror_views(fe, cfg.augment), aug_views=cfg.aug_views)


def _cache_key(recipe: dict, population: FaceSet, seed: int) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps({"v": 1, "recipe": {k: v for k, v in recipe.items() if k not in _NOT_RECIPE},
                         "population": population.data_hash(), "classes": population.classes, "seed": seed},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def shadow_masks(n_population: int, n_shadows: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """bool [n_shadows, n_population]: the training half of each shadow model.

    Shadows come in pairs: shadow 2k trains on a random half (seeded by ``(seed, k)``), shadow 2k+1 on
    the other half. Every example is IN exactly half of the shadows, and asking for more shadows later
    keeps the earlier ones (and their cache entries)."""
    if n_shadows < 2 or n_shadows % 2:
        raise PrivferError(f"--shadows must be an even number >= 2 (IN/OUT pairs), got {n_shadows}")
    masks = np.zeros((n_shadows, n_population), bool)
    for k in range(n_shadows // 2):
        perm = np.random.default_rng([seed, k]).permutation(n_population)
        masks[2 * k, perm[:n_population // 2]] = True
        masks[2 * k + 1] = ~masks[2 * k]
    return masks


@dataclass
class ShadowResult:
    phi: np.ndarray        # float [n_shadows, n_audited]: logit-scaled true-class confidence of each shadow
    inside: np.ndarray     # bool [n_shadows, n_audited]: the example was in the shadow's training half
    info: dict


def shadow_models(card: dict, audited: FaceSet, *, n_shadows: int = 4, epochs: int | None = None,
                  population: FaceSet | None = None, cache: str | Path | None = None, seed: int = SAMPLE_SEED,
                  progress: bool = False, batch_size: int = 512) -> ShadowResult:
    """Train (or reuse from ``cache``) ``n_shadows`` shadow models and measure them on ``audited``.

    The population is ``audited`` followed by ``population`` (extra examples, optional). The cache
    folder is keyed by the recipe, the population (its data hash) and the seed; each shadow lives in
    ``<cache>/<key>/shadow-<i>`` and is reused when present.
    """
    from tqdm import tqdm

    pop = audited if population is None or len(population) == 0 else concat(audited, population)
    masks = shadow_masks(len(pop), n_shadows, seed)
    recipe, note = shadow_recipe(card, len(pop) // 2, epochs)
    root = Path(cache) if cache else cache_dir() / "shadows"
    key = _cache_key(recipe, pop, seed)
    folder = root / key
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "shadows.json", {"recipe": recipe, "note": note, "population": len(pop),
                                                "population_data_hash": pop.data_hash(), "seed": seed})
    if not all((folder / f"shadow-{i:03d}" / "model.safetensors").is_file() for i in range(n_shadows)):
        _prime_features(recipe, pop)
    phi = np.zeros((n_shadows, len(audited)))
    reused = out_correct = out_seen = 0
    bar = tqdm(range(n_shadows), desc="shadow models", unit="model", disable=not progress, leave=False,
               dynamic_ncols=True)
    for i in bar:
        out = folder / f"shadow-{i:03d}"
        if (out / "model.safetensors").is_file():
            reused += 1
        else:
            _train_shadow(recipe, pop.subset(masks[i]), out, seed * 100003 + i, progress)
        bar.set_postfix(reused=reused)
        logits = load_model(out).logits(audited.pixels, batch_size)
        phi[i] = logit_confidence(logits, audited.labels)
        outside = ~masks[i, :len(audited)]
        out_correct += int((logits.argmax(1)[outside] == audited.labels[outside]).sum())
        out_seen += int(outside.sum())
    bar.close()
    info = {"n": n_shadows, "trained": n_shadows - reused, "reused": reused, "population": len(pop),
            "train_size": len(pop) // 2, "recipe": note, "epochs": recipe["epochs" if recipe.get("private") else "public_epochs"],
            "cache": str(folder), "accuracy_outside": out_correct / max(out_seen, 1)}
    return ShadowResult(phi, masks[:, :len(audited)], info)


#: shadows this much less accurate than the model (on examples neither trained on) do not mimic it
SHADOW_FIT_GAP = 0.05


def shadow_fit_warning(shadow_accuracy: float, model_accuracy: float) -> str | None:
    """A warning when the shadows fit far worse than the audited model, else None.

    LiRA compares the model's confidence on an example with the shadows' confidences with and without it; shadows
    that learnt much less than the model (a DP recipe whose expected batch, scaled to a small shadow population,
    drowns its gradients in noise) give distributions the model does not follow, so the attack understates the
    leak. Measured as the shadows' accuracy on the audited examples outside their training half against the
    model's on its non-members.
    """
    if shadow_accuracy >= model_accuracy - SHADOW_FIT_GAP:
        return None
    return (f"the shadows reach {shadow_accuracy:.1%} on audited examples they did not train on, the model "
            f"{model_accuracy:.1%} on its non-members: they do not mimic it, so LiRA understates what it leaks; "
            f"train them on more data (--population, up to about the model's training-set size)")


def _sigma(values: np.ndarray, inside: np.ndarray) -> float:
    """One standard deviation for all examples: pooled within-example when every example has >= 2
    values, else the spread of all values (Carlini et al.'s global variance)."""
    counts = inside.sum(axis=0)
    if counts.min() >= 2:
        means = np.where(inside, values, 0).sum(axis=0) / counts
        resid = np.where(inside, values - means, 0.0)
        var = (resid ** 2).sum() / max(1, counts.sum() - len(counts))
    else:
        var = values[inside].var()
    return float(np.sqrt(var) + 1e-6)


def lira_scores(target_phi: np.ndarray, shadows: ShadowResult, offline: bool = False) -> tuple[np.ndarray, str]:
    """LiRA scores (higher = member) and the variant used ("online" or "offline")."""
    from scipy.stats import norm

    phi, inside = shadows.phi, shadows.inside
    n_in, n_out = inside.sum(axis=0), (~inside).sum(axis=0)
    if n_out.min() == 0:
        raise PrivferError("LiRA: some audited example has no OUT shadow model; use more shadows")
    per_example = len(phi) >= PER_EXAMPLE_VARIANCE_MIN

    def fit(mask):
        mu = np.where(mask, phi, 0).sum(axis=0) / mask.sum(axis=0)
        if per_example:
            sd = np.sqrt(np.where(mask, (phi - mu) ** 2, 0).sum(axis=0) / np.maximum(mask.sum(axis=0) - 1, 1)) + 1e-6
        else:
            sd = _sigma(phi, mask)
        return mu, sd

    mu_out, sd_out = fit(~inside)
    if offline or n_in.min() == 0:
        return (target_phi - mu_out) / sd_out, "offline"
    mu_in, sd_in = fit(inside)
    return norm.logpdf(target_phi, mu_in, sd_in) - norm.logpdf(target_phi, mu_out, sd_out), "online"


# ---------------------------------------------------------------- metrics

def clopper_pearson(k, n, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper-Pearson interval (lo, hi) for ``k`` successes in ``n`` trials (arrays allowed)."""
    from scipy.stats import beta

    k = np.asarray(k, np.float64)
    a = (1 - confidence) / 2
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
    return lo, hi


def epsilon_lower_bound(tp, fp, n_pos: int, n_neg: int, delta: float = 0.0,
                        confidence: float = CONFIDENCE) -> dict:
    """Empirical lower bound on epsilon implied by an attack (Jagielski et al. 2020; Nasr et al. 2021).

    An (epsilon, delta)-DP mechanism forces every membership test to satisfy ``TPR <= e^eps FPR + delta``
    and ``TNR <= e^eps FNR + delta``. At each threshold (``tp``/``fp``: members/non-members flagged,
    out of ``n_pos``/``n_neg``) take two-sided ``confidence`` Clopper-Pearson intervals
    ``[TPR_lo, TPR_hi]``, ``[FPR_lo, FPR_hi]`` and the conservative ends, ``FNR_hi = 1 - TPR_lo``,
    ``TNR_lo = 1 - FPR_hi``::

        eps_lb = max(0, max over thresholds of max(log((TPR_lo - delta) / FPR_hi),
                                                   log((1 - FPR_hi - delta) / (1 - TPR_lo))))

    where a term whose numerator or denominator is not positive is skipped. (The second term is
    Jagielski et al.'s ``log((1 - delta - FPR) / FNR)``; using ``FPR_lo`` and ``TPR_hi`` there instead
    would not be a lower bound.) The threshold is chosen on the same data, as in those papers, so the
    bound is slightly optimistic; with ``n`` examples per side it cannot exceed about ``log(n)``.
    Returns ``epsilon`` and the threshold index and rates that attain it.
    """
    tp = np.atleast_1d(np.asarray(tp, np.float64))
    fp = np.atleast_1d(np.asarray(fp, np.float64))
    tpr_lo, _ = clopper_pearson(tp, n_pos, confidence)
    _, fpr_hi = clopper_pearson(fp, n_neg, confidence)

    def term(num, den):
        ok = (num > 0) & (den > 0)
        out = np.full(num.shape, -np.inf)
        out[ok] = np.log(num[ok] / den[ok])
        return out

    best = np.maximum(term(tpr_lo - delta, fpr_hi), term(1 - fpr_hi - delta, 1 - tpr_lo))
    i = int(np.argmax(best)) if best.size else 0
    eps = float(max(0.0, best[i])) if best.size else 0.0
    return {"epsilon": eps, "index": i, "tpr_lo": float(tpr_lo[i]), "fpr_hi": float(fpr_hi[i]),
            "confidence": confidence, "delta": delta}


def roc_points(member_scores: np.ndarray, non_member_scores: np.ndarray):
    """(fpr, tpr, tp, fp) at every distinct threshold, from "flag nobody" (0, 0) to "flag everybody" (1, 1)."""
    y = np.r_[np.ones(len(member_scores), bool), np.zeros(len(non_member_scores), bool)]
    _, tp, fp = M.binary_curve(y, np.r_[member_scores, non_member_scores])
    tp, fp = np.r_[0, tp], np.r_[0, fp]
    return fp / len(non_member_scores), tp / len(member_scores), tp, fp


def attack_metrics(member_scores, non_member_scores, delta: float = 0.0, confidence: float = CONFIDENCE) -> dict:
    """AUC, TPR at the FPRs of :data:`FPR_POINTS` (the best TPR with FPR <= that value), balanced attack
    accuracy (best threshold), and :func:`epsilon_lower_bound`."""
    sm = np.asarray(member_scores, np.float64)
    sn = np.asarray(non_member_scores, np.float64)
    if len(sm) == 0 or len(sn) == 0:
        raise PrivferError("an attack needs at least one member and one non-member")
    fpr, tpr, tp, fp = roc_points(sm, sn)
    y = np.r_[np.ones(len(sm), bool), np.zeros(len(sn), bool)]
    lb = epsilon_lower_bound(tp, fp, len(sm), len(sn), delta, confidence)
    return {
        "auc": M.auroc(y, np.r_[sm, sn]),
        "auc_ci": M.auroc_ci(y, np.r_[sm, sn], confidence),
        "tpr_at_fpr": {str(a): float(tpr[fpr <= a].max()) for a in FPR_POINTS},
        "fpr_resolution": 1.0 / len(sn),
        "balanced_accuracy": float(((tpr + 1 - fpr) / 2).max()),
        "epsilon_lower_bound": lb["epsilon"],
        "epsilon_lower_bound_at": {"tpr": float(tpr[lb["index"]]), "fpr": float(fpr[lb["index"]]),
                                   "tpr_lo": lb["tpr_lo"], "fpr_hi": lb["fpr_hi"]},
        "confidence": confidence,
        "n_members": int(len(sm)),
        "n_non_members": int(len(sn)),
    }


def plot_roc(member_scores, non_member_scores, path: Path, title: str = "") -> Path:
    """Log-log ROC curve with the chance line (PNG, matplotlib's Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fpr, tpr, _, _ = roc_points(np.asarray(member_scores), np.asarray(non_member_scores))
    floor = 0.5 / max(len(member_scores), len(non_member_scores))
    fig = Figure(figsize=(4.2, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), drawstyle="steps-post", label="attack")
    ax.plot([floor, 1], [floor, 1], ls="--", color="grey", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------- the audit

def claimed_epsilon(card: dict, check: dict) -> tuple[float | None, str]:
    """The epsilon the card claims for the audited members, with a note; None where no claim covers them."""
    eps = card.get("epsilon_spent")
    if eps is None or not card.get("private_data"):
        return None, "no differential privacy: the model card claims no epsilon"
    if check.get("members_in_public_data"):
        return None, (f"{check['members_in_public_data']} members are public data, trained on without DP: no epsilon "
                      "covers them (use --private-only)")
    return float(eps), f"epsilon spent according to the model card (target {card.get('epsilon_target')})"


def audit(model: str | Path | LoadedModel, members: str, non_members: str, *, attack: str = "loss",
          limit: int | None = None, drop_overlap: bool = False, private_only: bool = False, n_shadows: int = 4,
          shadow_epochs: int | None = None, population: int | None = None, shadow_cache: str | Path | None = None,
          offline: bool = False, batch_size: int = 512, progress: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    """Run one attack; returns (the JSON-ready result, member scores, non-member scores).

    ``population`` (LiRA): total size of the shadow population; beyond the audited examples it is
    filled with a fixed-seed sample of the other members and non-members.
    """
    if attack not in ATTACKS:
        raise PrivferError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    sides = load_sides(lm, members, non_members, limit=limit, drop_overlap=drop_overlap, private_only=private_only,
                       progress=progress)
    m, n = sides.members, sides.non_members
    extra = {}
    if attack == "lira":
        audited = concat(m, n)
        pool = None
        if population is not None and population > len(audited):
            both = concat(*sides.pool)
            rest = both.subset(~np.isin(both.hashes, audited.hashes))
            if len(rest):
                pool = _sample(rest, population - len(audited), SAMPLE_SEED + 2)
        sh = shadow_models(lm.card, audited, n_shadows=n_shadows, epochs=shadow_epochs, population=pool,
                           cache=shadow_cache, progress=progress, batch_size=batch_size)
        target_logits = lm.logits(audited.pixels, batch_size)
        target_phi = logit_confidence(target_logits, audited.labels)
        scores, variant = lira_scores(target_phi, sh, offline)
        sm, sn = scores[:len(m)], scores[len(m):]
        model_acc = float((target_logits[len(m):].argmax(1) == n.labels).mean()) if len(n) else 0.0
        extra = {"variant": variant, "shadows": {**sh.info, "model_non_member_accuracy": model_acc,
                                                 "fit_warning": shadow_fit_warning(sh.info["accuracy_outside"], model_acc)}}
    else:
        sm, sn = simple_scores(lm, m, attack, batch_size), simple_scores(lm, n, attack, batch_size)
    card = lm.card
    delta = float(card["delta"]) if card.get("delta") is not None else 0.0
    eps, note = claimed_epsilon(card, sides.check)
    result = {
        "model": lm.name, "attack": attack, **extra,
        "members": members, "non_members": non_members, "limit": limit,
        **attack_metrics(sm, sn, delta),
        "delta": delta,
        "epsilon_claimed": eps, "epsilon_claimed_note": note, "epsilon_target": card.get("epsilon_target"),
        "membership_check": sides.check,
    }
    return result, sm, sn


def write_audit(result: dict, member_scores, non_member_scores, out: str | Path) -> list[Path]:
    """Write ``audit.json`` and ``roc.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "audit.json", result)
    title = f"{result['attack']}" + (f" ({result['variant']})" if result.get("variant") else "") + \
            f": AUC {result['auc']:.3f}"
    plot_roc(member_scores, non_member_scores, out / "roc.png", title)
    return [out / "audit.json", out / "roc.png"]


def find_audits(run_dir: str | Path) -> list[tuple[str, dict]]:
    """(name, result) of every ``audit.json`` under ``<run_dir>/audit/`` (name: its folder relative to ``audit/``)."""
    root = Path(run_dir) / "audit"
    found = []
    if root.is_dir():
        for p in sorted(root.rglob("audit.json")):
            try:
                found.append((str(p.parent.relative_to(root)) if p.parent != root else ".", json.loads(p.read_text())))
            except (OSError, json.JSONDecodeError) as e:
                raise PrivferError(f"{p}: not an audit result ({e.__class__.__name__})") from None
    return found


def format_summary(r: dict) -> str:
    """A readable multi-line summary of an audit result."""
    def num(x, fmt=".3f"):
        return "n/a" if x is None else format(x, fmt)

    t = r["tpr_at_fpr"]
    lines = [
        f"model     {r['model']}",
        f"attack    {r['attack']}" + (f" ({r['variant']})" if r.get("variant") else ""),
        f"members   {r['n_members']} of {r['members']}",
        f"non-members {r['n_non_members']} of {r['non_members']}",
    ]
    if r.get("shadows"):
        s = r["shadows"]
        lines.append(f"shadows   {s['n']} ({s['reused']} reused, {s['trained']} trained) on halves of a population of "
                     f"{s['population']}: {s['recipe']}; cache {s['cache']}")
        if "accuracy_outside" in s and "model_non_member_accuracy" in s:
            lines.append(f"shadow fit {s['accuracy_outside']:.1%} accuracy on the audited examples outside each "
                         f"shadow's half; the model {s['model_non_member_accuracy']:.1%} on its non-members")
        if s.get("fit_warning"):
            lines.append(f"warning   {s['fit_warning']}")
    lines += [
        f"AUC       {num(r['auc'])}" + (f" ({r['confidence']:.0%} CI {r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f}, DeLong)"
                                         if r.get("auc_ci") else "")
        + f"   balanced attack accuracy {r['balanced_accuracy']:.3f}",
        f"TPR       {t['0.01']:.2%} at 1% FPR, {t['0.001']:.2%} at 0.1% FPR"
        f"  (FPR resolution {r['fpr_resolution']:.2g})",
        f"epsilon   >= {r['epsilon_lower_bound']:.3f} measured ({r['confidence']:.0%} Clopper-Pearson, delta={r['delta']:g});"
        f" claimed {num(r['epsilon_claimed'])} ({r['epsilon_claimed_note']})",
    ]
    return "\n".join(lines)
