"""Post-hoc calibration on a validation split: softmax temperature, per-class logit offsets and the
negative-score threshold.

Training calls them at its end and stores ``temperature``, ``class_bias`` and ``negative_threshold`` in
the model card; probabilities are then ``softmax(logits / temperature + class_bias)``.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import PrivferError
from ..models.io import softmax
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
