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
from ..taxonomy import canonical, negative_mask
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


def parse_min_recall(value) -> dict[str, float]:
    """Recall floors as ``{class name: floor}`` from a mapping (a config's ``min_recall``) or a
    ``"disgust=0.4,fear=0.4"`` string (the command line); class names are canonicalised ("Angry" -> anger)
    and each floor must lie in (0, 1). None or an empty value gives ``{}``."""
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, str):
        pairs = []
        for part in value.split(","):
            name, sep, floor = part.partition("=")
            if not sep or not name.strip() or not floor.strip():
                raise PrivferError(f"min_recall: expected CLASS=FLOOR[,CLASS=FLOOR...], got {value!r}")
            pairs.append((name, floor))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise PrivferError(f"min_recall must be a mapping of class names to floors, got {type(value).__name__}")
    floors = {}
    for name, floor in pairs:
        try:
            f = float(floor)
        except (TypeError, ValueError):
            raise PrivferError(f"min_recall: floor of {name!r} is not a number: {floor!r}") from None
        if not 0 < f < 1:
            raise PrivferError(f"min_recall: floor of {name!r} must be in (0, 1), got {f}")
        floors[canonical(name)] = f
    return floors


def check_min_recall(min_recall, classes, labels=None) -> dict[str, float]:
    """The floors of ``min_recall`` (:func:`parse_min_recall`), checked against the other settings: they need
    classes of the model, and (when ``labels`` are given) at least one example of each floored class in the data
    they are fit on. Raises :class:`PrivferError` naming the problem. Any ``class_bias`` takes floors: with ``off``
    they alone raise offsets from 0."""
    floors = parse_min_recall(min_recall)
    if not floors:
        return floors
    missing = [c for c in floors if c not in classes]
    if missing:
        raise PrivferError(f"min_recall names {', '.join(missing)}, not a class of the model ({', '.join(classes)})")
    if labels is not None:
        counts = np.bincount(np.asarray(labels, np.int64).ravel(), minlength=len(classes))
        absent = [c for c in floors if counts[list(classes).index(c)] == 0]
        if absent:
            raise PrivferError(f"min_recall: the calibration data has no example of {', '.join(absent)}")
    return floors


def raise_to_recall(logits, labels, bias, floors: dict[int, float], max_rounds: int = 100) -> np.ndarray:
    """Class offsets ``bias`` raised, as little as needed, until each class ``c`` of ``floors`` has a recall of
    at least ``floors[c]`` on (``logits``, ``labels``) under ``argmax(logits + bias)``.

    Raising one class's offset only moves decisions *to* that class, so its recall rises and every other class's
    can only fall; the classes are raised in turn, each by the smallest step that meets its floor, until all
    floors hold at once (a floor of one class can undo another's: then the next round raises that one again).
    Deterministic. Raises :class:`PrivferError` when a floored class has no example, or when the floors cannot
    be met together within ``max_rounds`` rounds. Returns the offsets with mean 0.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64).ravel()
    b = np.array(bias, np.float64, copy=True)
    need = {}
    for c, floor in floors.items():
        n_c = int((y == c).sum())
        if n_c == 0:
            raise PrivferError(f"min_recall: no example of class index {c} to fit its recall floor on")
        need[c] = math.ceil(floor * n_c - 1e-9)  # correct decisions the floor asks for
    for _ in range(max_rounds):
        met = True
        for c, k in need.items():
            s = z[y == c] + b
            margin = s[:, c] - np.delete(s, c, axis=1).max(axis=1)  # > 0: decided as c
            kth = np.sort(margin)[::-1][k - 1]  # the k-th best margin must be > 0
            if kth <= 0:
                b[c] += -kth + 1e-6 * max(1.0, abs(kth))
                met = False
        if met:
            return b - b.mean()
    raise PrivferError(f"min_recall: the recall floors could not be met together in {max_rounds} rounds")


def fit_calibration(logits, labels, classes, class_bias: str = "off", negative_recall: float | None = None,
                    min_recall: dict[str, float] | None = None) -> dict:
    """Temperature, class offsets (objective ``class_bias``: ``off``, ``mixed`` or ``balanced``) and negative
    threshold for a model's ``logits`` [N, C] on labelled data (``labels`` index ``classes``), as model card
    fields: ``temperature``, ``class_bias`` (None when off), ``class_bias_objective``, ``class_bias_min_recall``,
    ``negative_threshold`` (on the negative score of the calibrated probabilities; see :func:`fit_threshold` for
    ``negative_recall``) and ``calibration_version``.

    ``min_recall`` (``{class name: floor}``, see :func:`parse_min_recall`) then raises the offsets of those
    classes until each decided label meets its recall floor on this data (:func:`raise_to_recall`), starting from
    no offsets when ``class_bias`` is off (``class_bias_objective`` is then ``off``: the floors alone). The floors are met in sample; ``benchmarks/class_bias_crossfit.py`` measures them out of
    sample."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64).ravel()
    if class_bias != "off" and class_bias not in BIAS_OBJECTIVES:
        raise PrivferError(f"class bias must be off or one of {', '.join(BIAS_OBJECTIVES)}, got {class_bias!r}")
    floors = check_min_recall(min_recall, classes, y)
    t = fit_temperature(z, y)
    bias = None if class_bias == "off" else fit_class_bias(z / t, y, class_bias)
    if floors:
        bias = raise_to_recall(z / t, y, np.zeros(z.shape[1]) if bias is None else bias,
                               {list(classes).index(c): f for c, f in floors.items()})
    neg_mask = np.array(negative_mask(classes))
    neg_score = softmax(z, t)[:, neg_mask].sum(axis=1)
    return {"temperature": float(t), "class_bias": None if bias is None else [float(v) for v in bias],
            "class_bias_objective": None if bias is None else class_bias,
            "class_bias_min_recall": floors or None,
            "negative_threshold": float(fit_threshold(neg_score, neg_mask[y], negative_recall)),
            "calibration_version": CALIBRATION_VERSION}


def recalibrate(model, spec, out, class_bias: str | None = None, negative_recall: float | None = None,
                batch_size: int = 512, log=print, min_recall=None) -> dict:
    """Refit a model's calibration (:func:`fit_calibration`) on the labelled data ``spec`` and write the model
    with its new card to ``out`` (a run directory; the weights are copied unless they are already there).

    ``class_bias`` defaults to the card's objective (``off`` without one), ``negative_recall`` to the card's
    target and ``min_recall`` to the card's recall floors (``{}``: none). Samples of classes the model lacks are dropped, and so are images of the model's DP-protected
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
    floors = min_recall if min_recall is not None else lm.card.get("class_bias_min_recall")
    check_min_recall(floors, lm.classes, fs.labels)  # before the model is run
    calib = fit_calibration(lm.logits(fs.pixels, batch_size=batch_size), fs.labels, lm.classes, objective, recall,
                            floors)
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
