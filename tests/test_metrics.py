"""Metric functions and calibration: hand-computed values, scikit-learn agreement, edge cases."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from privfer.errors import PrivferError
from privfer.eval import metrics as M
from privfer.eval.calibrate import fit_temperature, fit_threshold

# class 2 has no support and is never predicted; class 3 has support but is never predicted
Y_TRUE = np.array([0, 0, 1, 1, 1, 3])
Y_PRED = np.array([0, 1, 1, 1, 0, 1])

# binary example with tied scores
IS_POS = np.array([1, 0, 1, 0, 1], bool)
SCORES = np.array([0.9, 0.9, 0.7, 0.3, 0.2])


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_confusion_and_class_metrics_by_hand():
    cm = M.confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    pc = M.per_class(cm)
    assert pc["support"].tolist() == [2, 3, 0, 1]
    np.testing.assert_allclose(pc["precision"], [0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(pc["recall"], [0.5, 2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(pc["f1"], [0.5, 4 / 7, 0.0, 0.0])
    assert M.accuracy(cm) == 0.5
    assert M.macro_f1(cm) == pytest.approx(5 / 14)          # over classes 0, 1, 3 (with support)
    assert M.balanced_accuracy(cm) == pytest.approx(7 / 18)
    assert M.majority_baseline(cm) == 0.5
    np.testing.assert_allclose(M.normalize_rows(cm)[1], [1 / 3, 2 / 3, 0, 0])
    assert M.normalize_rows(cm)[2].tolist() == [0, 0, 0, 0]


def test_empty_and_bad_input():
    cm = M.confusion_matrix([], [], 3)
    assert cm.sum() == 0
    assert (M.accuracy(cm), M.macro_f1(cm), M.balanced_accuracy(cm), M.majority_baseline(cm)) == (0.0,) * 4
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 3], [0, 1], 3)


def test_cross_entropy_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.0, 1.0, 0.0]])
    expected = (-math.log(0.7) - math.log(0.8) - math.log(1e-12)) / 3
    assert M.cross_entropy(probs, [0, 2, 0]) == pytest.approx(expected)
    assert M.cross_entropy(np.zeros((0, 3)), []) == 0.0


def test_binary_metrics_by_hand():
    # pairs (pos, neg): 0.9 vs 0.9 tie = 1/2, 0.9 > 0.3, 0.7 > 0.3, others lose: 2.5 / 6
    assert M.auroc(IS_POS, SCORES) == pytest.approx(5 / 12)
    # (R, P) at 0.9, 0.7, 0.3, 0.2: (1/3, 1/2), (2/3, 2/3), (2/3, 1/2), (1, 3/5)
    assert M.average_precision(IS_POS, SCORES) == pytest.approx(53 / 90)
    at = M.binary_at_threshold(IS_POS, SCORES, 0.7)  # score == threshold counts as positive
    assert at == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert M.binary_at_threshold(IS_POS, SCORES, 2.0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_binary_metrics_undefined_with_one_class():
    assert M.auroc([1, 1], [0.2, 0.4]) is None
    assert M.auroc([0, 0], [0.2, 0.4]) is None
    assert M.average_precision([0, 0], [0.2, 0.4]) is None
    assert M.average_precision([1, 1], [0.2, 0.4]) == 1.0


def test_agrees_with_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    n = 5
    y_true = rng.choice([0, 1, 3, 4], 300, p=[0.5, 0.3, 0.15, 0.05])  # class 2 absent from y_true
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.integers(0, n, 300))
    cm = M.confusion_matrix(y_true, y_pred, n)
    np.testing.assert_array_equal(cm, sk.confusion_matrix(y_true, y_pred, labels=range(n)))
    p, r, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=range(n), zero_division=0)
    pc = M.per_class(cm)
    np.testing.assert_allclose(pc["precision"], p)
    np.testing.assert_allclose(pc["recall"], r)
    np.testing.assert_allclose(pc["f1"], f)
    np.testing.assert_array_equal(pc["support"], s)
    present = np.unique(y_true)
    assert M.macro_f1(cm) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the predicted-only class; we do not
        assert M.balanced_accuracy(cm) == pytest.approx(sk.balanced_accuracy_score(y_true, y_pred))
    assert M.accuracy(cm) == pytest.approx(sk.accuracy_score(y_true, y_pred))

    is_pos = rng.random(400) < 0.3
    scores = np.round(np.where(is_pos, 0.3, 0.0) + rng.random(400), 1)  # many ties
    assert M.auroc(is_pos, scores) == pytest.approx(sk.roc_auc_score(is_pos, scores))
    assert M.average_precision(is_pos, scores) == pytest.approx(sk.average_precision_score(is_pos, scores))
    assert M.auroc(IS_POS, SCORES) == pytest.approx(sk.roc_auc_score(IS_POS, SCORES))
    assert M.average_precision(IS_POS, SCORES) == pytest.approx(sk.average_precision_score(IS_POS, SCORES))


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.0, (20000, 5))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (rng.random((len(z), 1)) > p.cumsum(1)).sum(1)  # sample each label from softmax(z)
    for true_t in (0.5, 2.5):
        t = fit_temperature(z * true_t, labels)
        assert t == pytest.approx(true_t, rel=0.05)
        assert fit_temperature(z * true_t, labels) == t  # deterministic


def test_fit_temperature_bounds_and_errors():
    z = np.array([[10.0, 0.0], [0.0, 10.0]])
    assert fit_temperature(z, [0, 1]) == pytest.approx(0.05, rel=1e-3)   # perfect and confident: lower bound
    assert fit_temperature(z, [1, 0]) == pytest.approx(20.0, rel=1e-3)   # always wrong: upper bound
    with pytest.raises(PrivferError):
        fit_temperature(np.zeros((0, 3)), [])
    with pytest.raises(PrivferError):
        fit_temperature(z, [0, 2])


NEG_SCORES = np.array([0.95, 0.9, 0.8, 0.6, 0.55, 0.4, 0.3, 0.1])
IS_NEG = np.array([1, 1, 0, 1, 0, 1, 0, 0], bool)


def test_fit_threshold_max_f1():
    # F1 at each score, high to low: 2/5, 4/6, 4/7, 6/8, 6/9, 8/10, 8/11, 8/12 -> best at 0.4
    assert fit_threshold(NEG_SCORES, IS_NEG) == 0.4
    best = max(M.binary_at_threshold(IS_NEG, NEG_SCORES, t)["f1"] for t in NEG_SCORES)
    assert M.binary_at_threshold(IS_NEG, NEG_SCORES, 0.4)["f1"] == pytest.approx(best)


@pytest.mark.parametrize("target, expected", [(0.5, 0.9), (0.75, 0.6), (0.7, 0.6), (1.0, 0.4)])
def test_fit_threshold_recall_target(target, expected):
    t = fit_threshold(NEG_SCORES, IS_NEG, recall_target=target)
    assert t == expected
    assert M.binary_at_threshold(IS_NEG, NEG_SCORES, t)["recall"] >= target
    higher = NEG_SCORES[NEG_SCORES > t]
    assert all(M.binary_at_threshold(IS_NEG, NEG_SCORES, h)["recall"] < target for h in higher)


def test_fit_threshold_errors():
    with pytest.raises(PrivferError):
        fit_threshold([0.2, 0.3], [False, False])
    with pytest.raises(PrivferError):
        fit_threshold(NEG_SCORES, IS_NEG, recall_target=1.5)
    with pytest.raises(PrivferError):
        fit_threshold([], [])


def test_fit_class_bias_lifts_a_rare_class_and_keeps_accuracy():
    from privfer.eval.calibrate import fit_class_bias
    from privfer.models.io import softmax

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(900, int), np.ones(900, int), np.full(60, 2)]  # class 2 is rare
    z = rng.normal(0, 1, (len(y), 3))
    z[np.arange(len(y)), y] += 1.5
    z[:, 2] -= 1.5  # a model that learnt the rare class's low prior: seldom predicts it
    rec = lambda p: [(p[y == c] == c).mean() for c in range(3)]  # noqa: E731
    before = z.argmax(1)
    for objective in ("mixed", "balanced"):
        b = fit_class_bias(z, y, objective)
        assert b.shape == (3,) and abs(b.mean()) < 1e-9 and b[2] > b[0]
        after = (z + b).argmax(1)
        assert rec(after)[2] > rec(before)[2] + 0.1
        assert np.mean(rec(after)) > np.mean(rec(before))
        np.testing.assert_array_equal(b, fit_class_bias(z, y, objective))  # deterministic
    mixed = (z + fit_class_bias(z, y, "mixed")).argmax(1)
    assert (mixed == y).mean() >= (before == y).mean() - 0.02
    np.testing.assert_allclose(softmax(z, 2.0, b), softmax(z / 2.0 + b))
    with pytest.raises(PrivferError, match="objective"):
        fit_class_bias(z, y, "accuracy")
    with pytest.raises(PrivferError, match="labels"):
        fit_class_bias(z, y[:-1])


def test_raise_to_recall_meets_each_floor_with_the_smallest_raise():
    from privfer.eval.calibrate import fit_class_bias, raise_to_recall

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(600, int), np.ones(600, int), np.full(200, 2), np.full(40, 3)]
    z = rng.normal(0, 1, (len(y), 4))
    z[np.arange(len(y)), y] += 1.0
    z[:, 2:] -= 1.0  # two under-predicted classes that steal from each other
    rec = lambda b: np.array([((z + b).argmax(1)[y == c] == c).mean() for c in range(4)])  # noqa: E731
    b0 = fit_class_bias(z, y, "mixed")
    before = rec(b0)
    assert before[2] < 0.5 and before[3] < 0.5
    b = raise_to_recall(z, y, b0, {2: 0.5, 3: 0.5})
    after = rec(b)
    assert after[2] >= 0.5 and after[3] >= 0.5 and abs(b.mean()) < 1e-9
    assert (after[:2] <= before[:2]).all()  # only the floored classes gain
    # the smallest raise: a hair less and a floor fails (offsets only matter relative to each other)
    for c in (2, 3):
        less = b.copy()
        less[c] -= 1e-4
        assert rec(less)[c] < 0.5
    # floors already met: nothing moves
    np.testing.assert_allclose(raise_to_recall(z, y, b0, {0: 0.1}), b0 - b0.mean())
    np.testing.assert_array_equal(b, raise_to_recall(z, y, b0, {2: 0.5, 3: 0.5}))  # deterministic
    with pytest.raises(PrivferError, match="no example"):
        raise_to_recall(z[y != 3], y[y != 3], b0, {3: 0.5})
    twins = np.repeat(z[:50], 2, axis=0)  # two classes the logits cannot tell apart: not both at 90%
    with pytest.raises(PrivferError, match="could not be met together"):
        raise_to_recall(twins, np.tile([2, 3], 50), b0, {2: 0.9, 3: 0.9})


def test_min_recall_is_parsed_checked_and_recorded_by_fit_calibration():
    from privfer.eval.calibrate import fit_calibration, parse_min_recall

    assert parse_min_recall("Disgust=0.45, fear=0.4") == {"disgust": 0.45, "fear": 0.4}  # canonical names
    assert parse_min_recall({"scared": 0.3}) == {"fear": 0.3}
    assert parse_min_recall(None) == {} and parse_min_recall("") == {}
    for bad, match in (("disgust", "CLASS=FLOOR"), ("disgust=high", "not a number"), ("fear=1.2", r"\(0, 1\)"),
                       ("fear=0", r"\(0, 1\)"), ("boredom=0.3", "unknown class name"), (["fear"], "mapping")):
        with pytest.raises(PrivferError, match=match):
            parse_min_recall(bad)
    rng = np.random.default_rng(1)
    classes = ("neutral", "happiness", "sadness", "disgust")
    y = rng.choice(4, 600, p=[0.4, 0.4, 0.15, 0.05])
    z = 2.0 * np.eye(4)[y] + rng.normal(0, 1.5, (600, 4))
    z[:, 3] -= 1.0
    c = fit_calibration(z, y, classes, "mixed", min_recall={"disgust": 0.6})
    assert c["class_bias_min_recall"] == {"disgust": 0.6}
    decided = (z / c["temperature"] + np.array(c["class_bias"])).argmax(1)
    assert (decided[y == 3] == 3).mean() >= 0.6
    assert fit_calibration(z, y, classes, "mixed")["class_bias_min_recall"] is None
    off = fit_calibration(z, y, classes, "off", min_recall={"disgust": 0.6})  # the floors alone, from no offsets
    assert off["class_bias_objective"] == "off" and off["class_bias_min_recall"] == {"disgust": 0.6}
    moved = np.array(off["class_bias"])
    assert (moved[:3] == moved[0]).all() and moved[3] > moved[0]  # only disgust's offset was raised
    decided = (z / off["temperature"] + moved).argmax(1)
    assert (decided[y == 3] == 3).mean() >= 0.6 > (z[y == 3].argmax(1) == 3).mean()  # met, and not met before
    changed = decided != z.argmax(1)
    assert changed.any() and (decided[changed] == 3).all()  # every decision it moved went to disgust
    with pytest.raises(PrivferError, match="not a class of the model"):
        fit_calibration(z, y, classes, "mixed", min_recall={"fear": 0.6})
    with pytest.raises(PrivferError, match="no example of disgust"):
        fit_calibration(z[y != 3], y[y != 3], classes, "mixed", min_recall={"disgust": 0.6})


def test_auroc_ci_is_delong_on_pairwise_comparisons():
    """The interval's variance equals DeLong's, computed here by brute force over all (positive, negative) pairs."""
    from statistics import NormalDist

    rng = np.random.default_rng(1)
    y = rng.random(60) < 0.4
    s = np.round(rng.normal(0, 1, 60) + 0.8 * y, 1)  # rounded: ties across and within classes
    psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    se = np.sqrt(v10.var(ddof=1) / y.sum() + v01.var(ddof=1) / (~y).sum())
    lo, hi = M.auroc_ci(y, s, 0.9)
    assert (lo + hi) / 2 == pytest.approx(M.auroc(y, s)) == pytest.approx(psi.mean())
    assert hi - lo == pytest.approx(2 * NormalDist().inv_cdf(0.95) * se)
    assert M.auroc_ci(np.r_[True, False, False], [1.0, 0.0, 0.5]) is None  # one positive: no variance
    lo, hi = M.auroc_ci(np.r_[np.ones(5, bool), np.zeros(5, bool)], np.arange(10.0)[::-1])
    assert hi == 1.0 and lo == 1.0  # perfect separation: zero variance, clipped


def test_calibration_error_by_hand():
    # two bins, (0, .5] and (.5, 1]: means .15 and .925, frequencies 0 and .5 -> (2 * .15 + 2 * .425) / 4
    prob, outcome = [0.1, 0.2, 0.9, 0.95], [False, False, True, False]
    r = M.reliability(prob, outcome, n_bins=2)
    assert r["edges"] == [0.0, 0.5, 1.0] and r["count"] == [2, 2]
    assert r["mean_prob"] == pytest.approx([0.15, 0.925]) and r["frequency"] == [0.0, 0.5]
    assert M.calibration_error(prob, outcome, n_bins=2) == pytest.approx(0.2875)
    # bins are right-closed and 0 falls in the first: 0.5 and 0.0 share bin 0, 1.0 is in the last
    assert M.reliability([0.0, 0.5, 1.0], [0, 1, 1], n_bins=2)["count"] == [2, 1]
    # a quarter of the events at probability 0.25 (one bin) is perfectly calibrated
    assert M.calibration_error([0.25] * 4, [1, 0, 0, 0]) == 0.0
    # an empty bin contributes nothing and stays 0.0 in the diagram
    assert M.reliability([0.9], [1], n_bins=3)["mean_prob"][0] == 0.0


def test_top_label_ece_and_brier_by_hand():
    probs = np.array([[0.8, 0.2], [0.6, 0.4]])
    # confidences .8 (right) and .6 (wrong) in different bins: (|1 - .8| + |0 - .6|) / 2
    assert M.top_label_ece(probs, [0, 1]) == pytest.approx(0.4)
    assert M.brier_score([[1.0, 0.0], [0.5, 0.5]], [0, 0]) == pytest.approx(0.25)
    assert M.brier_score(np.eye(3), [0, 1, 2]) == 0.0


def test_calibration_metrics_undefined_and_bad_input():
    assert M.calibration_error([], []) is None and M.top_label_ece(np.zeros((0, 3)), []) is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.reliability([1.5], [True])
    with pytest.raises(ValueError, match="2 probabilities but 1 outcomes"):
        M.reliability([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="n_bins"):
        M.reliability([0.1], [True], n_bins=0)


def test_fit_calibration_fits_the_threshold_on_the_calibrated_probabilities():
    from privfer.eval.calibrate import fit_calibration
    from privfer.models.io import CALIBRATION_VERSION, softmax

    rng = np.random.default_rng(0)
    classes = ("neutral", "happiness", "sadness", "disgust")
    y = rng.choice(4, 400, p=[0.4, 0.4, 0.17, 0.03])
    z = 3.0 * np.eye(4)[y] + rng.normal(0, 1.5, (400, 4))
    c = fit_calibration(z, y, classes, "mixed", negative_recall=0.8)
    assert c["calibration_version"] == CALIBRATION_VERSION and c["class_bias_objective"] == "mixed"
    assert c["temperature"] == pytest.approx(fit_temperature(z, y))
    neg = softmax(z, c["temperature"])[:, 2:].sum(axis=1)  # sadness + disgust, without the offsets
    assert c["negative_threshold"] == fit_threshold(neg, y >= 2, 0.8)
    off = fit_calibration(z, y, classes)
    assert off["class_bias"] is None and off["class_bias_objective"] is None
    with pytest.raises(PrivferError, match="class bias"):
        fit_calibration(z, y, classes, "sideways")
