"""Classification metrics in plain NumPy, computed the way scikit-learn computes them.

Conventions (each function repeats the one it uses):

* Class metrics work on a confusion matrix ``cm`` from :func:`confusion_matrix`: rows are true
  classes, columns predicted classes.
* A ratio with a zero denominator is 0.0: a class with no support has recall 0.0, a class never
  predicted has precision 0.0, and F1 is 0.0 when precision + recall is 0. No NaN, no warnings
  (scikit-learn's ``zero_division=0``).
* Averages over classes (macro F1, balanced accuracy) use only the classes with support, i.e.
  classes present in ``y_true``. This equals ``f1_score(average="macro", labels=present)`` and
  ``balanced_accuracy_score``.
* Binary metrics take scores where higher means "positive"; a sample is predicted positive when
  ``score >= threshold``. AUROC and average precision are ``None`` when only one class is present
  (they are undefined there, and ``None`` stays valid JSON).
* Calibration metrics compare predicted probabilities with observed frequencies in equal-width bins
  of [0, 1] (Guo et al. 2017, "On Calibration of Modern Neural Networks"); ECE is ``None`` for an
  empty set.
"""
from __future__ import annotations

import numpy as np

#: Probabilities are clipped to this before the log in :func:`cross_entropy`.
EPS = 1e-12


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num / den, 0.0 where den == 0."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.zeros(np.broadcast(num, den).shape, np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(y_true, y_pred, n: int) -> np.ndarray:
    """int64 [n, n] counts: ``cm[i, j]`` = samples of true class i predicted as j."""
    y_true = np.asarray(y_true, np.int64).ravel()
    y_pred = np.asarray(y_pred, np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n):
        raise ValueError(f"labels must lie in [0, {n})")
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n).astype(np.int64)


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix (each true class sums to 1); rows without support stay 0."""
    return _ratio(cm, cm.sum(axis=1, keepdims=True))


def accuracy(cm: np.ndarray) -> float:
    """Fraction of samples on the diagonal (0.0 for an empty matrix)."""
    return float(_ratio(np.trace(cm), cm.sum()))


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class ``precision``, ``recall``, ``f1`` (float64) and ``support`` (int64), zero where undefined."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes with support (present in y_true); 0.0 when there are none.

    Equals scikit-learn's ``f1_score(y_true, y_pred, average="macro", labels=present,
    zero_division=0)`` with ``present`` the classes in ``y_true``: a class that is only predicted,
    never true, does not enter the average, while a true class never predicted counts as F1 = 0.
    """
    pc = per_class(cm)
    present = pc["support"] > 0
    return float(pc["f1"][present].mean()) if present.any() else 0.0


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes with support (scikit-learn's ``balanced_accuracy_score``)."""
    pc = per_class(cm)
    present = pc["support"] > 0
    return float(pc["recall"][present].mean()) if present.any() else 0.0


def majority_baseline(cm: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent true class of this set."""
    support = cm.sum(axis=1)
    return float(_ratio(support.max(initial=0), support.sum()))


def cross_entropy(probs: np.ndarray, labels) -> float:
    """Mean cross-entropy per example in nats: ``mean(-log(clip(probs[i, labels[i]], 1e-12, 1)))``.

    ``probs`` rows are taken as given (already normalised); a loss, never a percentage.
    """
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return 0.0
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, EPS, 1.0)).mean())


def binary_curve(is_pos, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative counts at each distinct score, highest first: ``(thresholds, tp, fp)``.

    ``tp[k]``/``fp[k]`` count positives/negatives with ``score >= thresholds[k]`` (scikit-learn's
    ``_binary_clf_curve``). The basis of AUROC, average precision and threshold fitting.
    """
    y = np.asarray(is_pos, bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, np.int64)
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return s[last], tp.astype(np.int64), fp.astype(np.int64)


def auroc(is_pos, scores) -> float | None:
    """Area under the ROC curve; tied scores count half (trapezoid rule, as scikit-learn's
    ``roc_auc_score``). ``None`` when only one class is present."""
    _, tp, fp = binary_curve(is_pos, scores)
    if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
        return None
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing the mean of their ranks."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inv.ravel()]


def auroc_ci(is_pos, scores, confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided confidence interval for :func:`auroc` (DeLong et al. 1988: the variance of the
    Mann-Whitney statistic from its per-example components, normal approximation), clipped to [0, 1].
    ``None`` when only one class is present or either class has a single example."""
    from statistics import NormalDist

    y = np.asarray(is_pos, bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return None
    r = _midranks(s)
    v10 = (r[y] - _midranks(s[y])) / n         # per positive: share of negatives scored below it (ties 1/2)
    v01 = 1.0 - (r[~y] - _midranks(s[~y])) / m  # per negative: share of positives scored above it
    auc = float(v10.mean())
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * float(np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n))
    return max(0.0, auc - half), min(1.0, auc + half)


def average_precision(is_pos, scores) -> float | None:
    """scikit-learn's step-wise average precision: ``sum_k (R_k - R_{k-1}) * P_k`` over distinct
    thresholds from high to low, ``R_0 = 0`` (no interpolation). ``None`` when there is no positive."""
    _, tp, fp = binary_curve(is_pos, scores)
    if tp.size == 0 or tp[-1] == 0:
        return None
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_at_threshold(is_pos, scores, threshold: float) -> dict[str, float]:
    """``precision``, ``recall``, ``f1`` of predicting positive where ``score >= threshold`` (0.0 where undefined)."""
    y = np.asarray(is_pos, bool).ravel()
    pred = np.asarray(scores, np.float64).ravel() >= threshold
    tp = float(np.sum(pred & y))
    precision = float(_ratio(tp, pred.sum()))
    recall = float(_ratio(tp, y.sum()))
    f1 = float(_ratio(2 * precision * recall, precision + recall))
    return {"precision": precision, "recall": recall, "f1": f1}


#: Equal-width probability bins of the calibration metrics (Guo et al. 2017 use 15).
CALIBRATION_BINS = 15


def reliability(prob, outcome, n_bins: int = CALIBRATION_BINS) -> dict:
    """Reliability diagram data: predicted probabilities ``prob`` of events ``outcome`` (bool) in ``n_bins``
    equal-width bins ``(k/n, (k+1)/n]`` (the first also holds 0).

    Returns ``edges`` (n_bins + 1 floats) and, per bin, ``count``, ``mean_prob`` (mean predicted probability)
    and ``frequency`` (fraction of events); the two are 0.0 in an empty bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = np.asarray(prob, np.float64).ravel()
    y = np.asarray(outcome, bool).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities but {y.size} outcomes")
    if p.size and (p.min() < -1e-9 or p.max() > 1.0 + 1e-9):
        raise ValueError("probabilities must lie in [0, 1]")
    p = np.clip(p, 0.0, 1.0)  # sums of a row's probabilities may exceed 1 by rounding
    idx = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
            "count": count.tolist(),
            "mean_prob": _ratio(np.bincount(idx, weights=p, minlength=n_bins), count).tolist(),
            "frequency": _ratio(np.bincount(idx, weights=y, minlength=n_bins), count).tolist()}


def calibration_error(prob, outcome, n_bins: int = CALIBRATION_BINS) -> float | None:
    """Expected calibration error: ``sum_b (n_b / n) |frequency_b - mean_prob_b|`` over the bins of
    :func:`reliability`. ``None`` for an empty set."""
    r = reliability(prob, outcome, n_bins)
    count = np.asarray(r["count"], np.float64)
    if count.sum() == 0:
        return None
    gap = np.abs(np.asarray(r["frequency"]) - np.asarray(r["mean_prob"]))
    return float((count * gap).sum() / count.sum())


def top_label_ece(probs: np.ndarray, labels, n_bins: int = CALIBRATION_BINS) -> float | None:
    """ECE of the predicted class's probability (Guo et al.'s "confidence") against being right."""
    p = np.asarray(probs, np.float64)
    if len(p) == 0:
        return None
    return calibration_error(p.max(axis=1), p.argmax(axis=1) == np.asarray(labels, np.int64), n_bins)


def brier_score(probs: np.ndarray, labels) -> float:
    """Multi-class Brier score: mean over examples of ``sum_k (p_k - [k == label])^2`` (0 is perfect, at most 2)."""
    p = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return 0.0
    onehot = np.zeros_like(p)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())
