"""Post-hoc calibration on a validation split: softmax temperature, per-class logit offsets and the
negative-score threshold.

:func:`fit_calibration` fits all three; training calls it at its end, ``privfer calibrate`` on any labelled
data, and both store ``temperature``, ``class_bias`` and ``negative_threshold`` in the model card.
Probabilities (and the negative score, their mass on the negative classes) are then
``softmax(logits / temperature)``, and the label is ``argmax(logits / temperature + class_bias)`` (see
``LoadedModel.calibrated``).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import PrivferError
from ..models.io import CALIBRATION_VERSION, softmax
from ..taxonomy import negative_mask
from .metrics import binary_curve

#: Search range for the temperature.
T_MIN, T_MAX = 0.05, 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature), via log-sum-exp."""
    z = logits / temperature
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, t_min: float = T_MIN, t_max: float = T_MAX, tol: float = 1e-6) -> float:
    """Temperature T in [t_min, t_max] minimising the NLL of softmax(logits / T).

    Golden-section search over log T (deterministic). The NLL is convex in 1/T, hence unimodal in
    log T, so the search finds the global minimum on the interval (an end point when the optimum lies
    outside it).
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64).ravel()
    if z.ndim != 2 or len(z) == 0:
        raise PrivferError(f"fit_temperature needs logits of shape [N, C] with N > 0, got {z.shape}")
    if len(y) != len(z):
        raise PrivferError(f"fit_temperature: {len(z)} logit rows but {len(y)} labels")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise PrivferError(f"fit_temperature: labels must lie in [0, {z.shape[1]})")
    if not np.isfinite(z).all():
        raise PrivferError("fit_temperature: logits contain NaN or infinity")
    if not 0 < t_min < t_max:
        raise PrivferError(f"fit_temperature: need 0 < t_min < t_max, got {t_min}, {t_max}")

    def f(u: float) -> float:
        return _nll(z, y, math.exp(u))

    a, b = math.log(t_min), math.log(t_max)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    return float(math.exp((a + b) / 2))


def fit_threshold(neg_scores, is_negative, recall_target: float | None = None) -> float:
    """Threshold on the negative score (predict negative where ``score >= threshold``).

    Without ``recall_target``: the threshold maximising F1 of negative-vs-rest (the highest one on
    ties). With ``recall_target`` in (0, 1]: the highest threshold whose recall is >= the target.
    The threshold is always one of the observed scores.
    """
    s = np.asarray(neg_scores, np.float64).ravel()
    y = np.asarray(is_negative, bool).ravel()
    if s.size == 0 or s.size != y.size:
        raise PrivferError(f"fit_threshold needs as many labels as scores (> 0), got {y.size} and {s.size}")
    if not np.isfinite(s).all():
        raise PrivferError("fit_threshold: scores contain NaN or infinity")
    thresholds, tp, fp = binary_curve(y, s)
    positives = tp[-1]
    if positives == 0:
        raise PrivferError("fit_threshold: no negative-class example to fit the threshold on")
    if recall_target is None:
        f1 = 2 * tp / (tp + fp + positives)
        return float(thresholds[int(np.argmax(f1))])
    if not 0 < recall_target <= 1:
        raise PrivferError(f"negative recall target must be in (0, 1], got {recall_target}")
    # recall grows as the threshold falls: take the first (highest) threshold that reaches the target
    return float(thresholds[int(np.argmax(tp / positives >= recall_target))])


#: Objectives of :func:`fit_class_bias` and the weight each puts on balancing the classes.
BIAS_OBJECTIVES = {"mixed": 0.5, "balanced": 1.0}


def fit_class_bias(logits, labels, objective: str = "mixed", iters: int = 50) -> np.ndarray:
    """Per-class offsets ``b`` (mean 0) added to calibrated logits, fit on validation data.

    A model learns the class frequencies of its training data, so rare classes (FER2013's disgust is 1.5%
    of it) are seldom predicted. ``b`` minimises a class-weighted cross-entropy of ``softmax(logits + b)``:
    each example weighs ``(1 - a) / N + a / (K * N_c)`` (``N_c`` examples of its class, ``K`` classes),
    with ``a`` = 1 for ``balanced`` (every class counts the same) and 0.5 for ``mixed`` (half the usual
    loss, half the balanced one; it keeps accuracy close to the unshifted model's). The loss is convex
    in ``b``; Newton's method finds its minimum deterministically. With only K numbers to fit it barely
    overfits the validation set (``benchmarks/class_bias_crossfit.py`` measures it by cross-fitting).
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64).ravel()
    if z.ndim != 2 or len(z) == 0 or len(y) != len(z):
        raise PrivferError(f"fit_class_bias needs logits [N, C] with N > 0 and N labels, got {z.shape} and {len(y)}")
    if objective not in BIAS_OBJECTIVES:
        raise PrivferError(f"class bias objective must be one of {', '.join(BIAS_OBJECTIVES)}, got {objective!r}")
    if not np.isfinite(z).all():
        raise PrivferError("fit_class_bias: logits contain NaN or infinity")
    k, a = z.shape[1], BIAS_OBJECTIVES[objective]
    counts = np.bincount(y, minlength=k)
    w = ((1 - a) / len(y) + a / (np.count_nonzero(counts) * np.maximum(counts, 1)))[y]
    onehot = np.eye(k)[y]
    b = np.zeros(k)
    for _ in range(iters):
        p = softmax(z, 1.0, b)
        grad = w @ (p - onehot)
        hess = np.diag(w @ p) - (p * w[:, None]).T @ p + 1e-9 * np.eye(k)
        step = np.clip(np.linalg.solve(hess, grad), -1.0, 1.0)  # damped: a class absent from `labels` drifts down
        b = b - step
        if np.abs(step).max() < 1e-10:
            break
    return b - b.mean()


def fit_calibration(logits, labels, classes, class_bias: str = "off", negative_recall: float | None = None) -> dict:
    """Temperature, class offsets (objective ``class_bias``: ``off``, ``mixed`` or ``balanced``) and negative
    threshold for a model's ``logits`` [N, C] on labelled data (``labels`` index ``classes``), as model card
    fields: ``temperature``, ``class_bias`` (None when off), ``class_bias_objective``, ``negative_threshold``
    (on the negative score of the calibrated probabilities; see :func:`fit_threshold` for ``negative_recall``)
    and ``calibration_version``."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64).ravel()
    if class_bias != "off" and class_bias not in BIAS_OBJECTIVES:
        raise PrivferError(f"class bias must be off or one of {', '.join(BIAS_OBJECTIVES)}, got {class_bias!r}")
    t = fit_temperature(z, y)
    bias = None if class_bias == "off" else fit_class_bias(z / t, y, class_bias)
    neg_mask = np.array(negative_mask(classes))
    neg_score = softmax(z, t)[:, neg_mask].sum(axis=1)
    return {"temperature": float(t), "class_bias": None if bias is None else [float(v) for v in bias],
            "class_bias_objective": None if bias is None else class_bias,
            "negative_threshold": float(fit_threshold(neg_score, neg_mask[y], negative_recall)),
            "calibration_version": CALIBRATION_VERSION}


def recalibrate(model, spec, out, class_bias: str | None = None, negative_recall: float | None = None,
                batch_size: int = 512, log=print) -> dict:
    """Refit a model's calibration (:func:`fit_calibration`) on the labelled data ``spec`` and write the model
    with its new card to ``out`` (a run directory; the weights are copied unless they are already there).

    ``class_bias`` defaults to the card's objective (``off`` without one) and ``negative_recall`` to the card's
    target. Samples of classes the model lacks are dropped, and so are images of the model's DP-protected
    training data (by content hash, where that data can be read): the calibration is released without
    privacy. Returns the new card.
    """
    import shutil
    from pathlib import Path

    from ..data.cache import load_faces
    from ..infer.outputs import atomic_path
    from ..models.io import load_model, resolve, write_json_atomic
    from ..train.card import describe_data
    from ..train.data import IN_PRIVATE, without_private
    from .audit import to_classes, training_hashes

    lm = load_model(model)
    fs, dropped = to_classes(load_faces(spec, size=lm.input_size), lm.classes)
    if len(fs) == 0:
        raise PrivferError(f"{spec}: no sample belongs to a class of the model ({', '.join(lm.classes)})")
    try:
        private = training_hashes(lm.card, source=lm.name or str(model))["private"]
    except PrivferError as e:
        private = None
        log(f"privfer calibrate: warning: overlap with the DP-protected training data not checked ({e})")
    fs = without_private(fs, private or ())
    if fs.dropped.get(IN_PRIVATE):
        log(f"privfer calibrate: {fs.dropped[IN_PRIVATE]} images of {spec} are DP-protected training data of the "
            "model: not used")
        if len(fs) == 0:
            raise PrivferError(f"{spec}: every image is DP-protected training data of the model; calibrating on them "
                               "without privacy would void its guarantee")
    objective = class_bias or lm.card.get("class_bias_objective") or "off"
    recall = negative_recall if negative_recall is not None else lm.card.get("negative_recall_target")
    calib = fit_calibration(lm.logits(fs.pixels, batch_size=batch_size), fs.labels, lm.classes, objective, recall)
    weights, _ = resolve(model)
    target = Path(out) / "model.safetensors"
    if target.exists() and target.read_bytes() != weights.read_bytes():
        raise PrivferError(f"{out}: holds another model's weights; give a new directory or the model's own")
    described = describe_data(fs)
    card = {**lm.card, **calib, "negative_recall_target": recall, "calibrated_on": described["spec"],
            "calibration_data": {**described, "other_classes_dropped": dropped},
            "calibration_use": (f"calibration data ({described['spec']}) was used, without privacy, only to fit the "
                                "temperature, class offsets and negative threshold")}
    if not target.exists():
        with atomic_path(target) as tmp:
            shutil.copyfile(weights, tmp)
    write_json_atomic(target.parent / "model_card.json", card)
    return card
