"""Evaluate a model on a fixed dataset split: metrics as one JSON-ready dict, plus files for it.

Every image of the split is used exactly once, un-augmented, with the model in eval mode, so two
runs give identical results. When the dataset's classes differ from the model's, only samples of
classes the model knows are kept (the others are counted in ``dropped``) and the model's prediction
is restricted to the shared classes (softmax over their logits, i.e. probabilities renormalised
over them).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..data.cache import load_faces
from ..data.spec import SPLITS, DatasetSpec, parse_spec
from ..errors import PrivferError
from ..infer.outputs import atomic_path, save_figure
from ..models.io import LoadedModel, load_model, softmax, write_json_atomic
from ..taxonomy import negative_mask
from . import metrics as M

#: Split evaluated when neither the spec (``@SPLIT``) nor the caller names one.
DEFAULT_SPLIT = "test"
TTA_MODES = ("none", "flip")


def _tta_mode(tta: bool | str | None) -> str:
    """``True``/``"flip"`` -> ``"flip"``; ``False``/``None``/``"none"`` -> ``"none"``."""
    mode = ("flip" if tta else "none") if tta is None or isinstance(tta, bool) else tta
    if mode not in TTA_MODES:
        raise PrivferError(f"unknown test-time augmentation {tta!r}; known: {', '.join(TTA_MODES)}")
    return mode


def resolve_spec(spec: str | DatasetSpec, split: str | None = None) -> DatasetSpec:
    """The dataset spec to evaluate: ``split`` overrides the spec's ``@SPLIT`` (default ``test``)."""
    ds = parse_spec(spec, default_split=DEFAULT_SPLIT)
    if split is not None:
        if split not in SPLITS:
            raise PrivferError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        ds = ds.with_split(split)
    return ds


def evaluate(model: str | Path | LoadedModel | None, spec: str | DatasetSpec, split: str | None = None,
             tta: bool | str = False, batch_size: int = 512, drop_overlap: bool = False) -> dict:
    """Evaluate ``model`` (a reference for :func:`load_model` or a :class:`LoadedModel`) on ``spec``.

    Faces are loaded at the model's input size. Predictions and probabilities are the card's calibrated ones
    (:meth:`LoadedModel.calibrated`: labels with the class offsets, probabilities without them from
    calibration version 2 on). Returns ``accuracy``, ``loss`` (mean cross-entropy per example, nats, of the
    calibrated probabilities), ``loss_uncalibrated`` (temperature 1, no offsets), ``class_bias`` and
    ``accuracy_without_class_bias``, ``macro_f1``, ``balanced_accuracy``, ``majority_baseline``,
    ``per_class``, ``confusion``, ``negative`` (negative-vs-rest: AUROC, average precision, and
    precision/recall/F1 at the card's threshold), ``calibration`` (top-label ECE of the calibrated
    probabilities and at temperature 1, Brier score, ECE of the negative score as the probability of a
    negative expression, both reliability diagrams' bins, the card's ``version``, and ``fit_on_this_data``:
    whether the card's calibration was fit on this very data), ``dropped`` (samples per dataset class the
    model lacks), ``n``, ``model``, ``data``, ``tta`` and more; see :mod:`privfer.eval.metrics` for the
    metric conventions. With ``drop_overlap``, images that are the model's training data (by content hash,
    as its card records it; the data must be on disk) are left out and counted in ``training_overlap_dropped``.
    """
    if batch_size < 1:
        raise PrivferError(f"batch size must be >= 1, got {batch_size}")
    mode = _tta_mode(tta)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    ds = resolve_spec(spec, split)
    fs = load_faces(ds, size=lm.input_size)

    shared = [c for c in lm.classes if c in fs.classes]
    if not shared:
        raise PrivferError(f"{lm.name}: the model's classes ({', '.join(lm.classes)}) share none with "
                           f"{ds} ({', '.join(fs.classes)})")
    model_col = {c: i for i, c in enumerate(lm.classes)}
    cols = np.array([model_col[c] for c in shared])
    # dataset label index -> shared index, -1 for classes the model lacks
    to_shared = np.array([shared.index(c) if c in shared else -1 for c in fs.classes] + [-1], np.int64)
    y_all = to_shared[np.where(fs.labels >= 0, fs.labels, len(fs.classes))]
    keep = y_all >= 0
    counts = fs.class_counts()
    dropped = {c: counts[c] for c in fs.classes if c not in shared}
    data_dropped = dict(fs.dropped)
    if (fs.labels < 0).any():
        data_dropped["no label"] = data_dropped.get("no label", 0) + int((fs.labels < 0).sum())
    if not keep.any():
        raise PrivferError(f"{ds}: no sample belongs to a class of the model ({', '.join(lm.classes)})")
    overlap_dropped = None
    if drop_overlap:  # FER2013's PublicTest holds 280 training images: without them the numbers are out of sample
        from .audit import training_hashes

        seen = set().union(*training_hashes(lm.card, source=lm.name or str(model)).values())
        inside = keep & np.isin(fs.hashes, list(seen))
        overlap_dropped = int(inside.sum())
        keep = keep & ~inside
        if not keep.any():
            raise PrivferError(f"{ds}: every sample is training data of {lm.name}")
    y = y_all[keep]
    pixels = fs.pixels[keep]

    logits = lm.logits(pixels, batch_size=batch_size, tta=mode == "flip")[:, cols].astype(np.float64)
    bias = lm.class_bias[cols]
    probs, pred = lm.calibrated(logits, cols)
    cm = M.confusion_matrix(y, pred, len(shared))
    pc = M.per_class(cm)

    full = np.zeros((len(y), len(lm.classes)))
    full[:, cols] = probs
    neg_score = lm.negative_score(full)
    neg_mask = negative_mask(shared)
    is_neg = np.array(neg_mask)[y]
    support = cm.sum(axis=1)
    data_hash = fs.subset(keep).data_hash()

    return {
        "model": lm.name,
        "data": str(ds),
        "split": ds.split,
        "tta": mode,
        "n": int(len(y)),
        "classes": shared,
        "accuracy": M.accuracy(cm),
        "loss": M.cross_entropy(probs, y),
        "loss_uncalibrated": M.cross_entropy(softmax(logits, 1.0), y),
        "temperature": lm.temperature,
        "class_bias": bias.tolist(),
        "accuracy_without_class_bias": float((logits.argmax(axis=1) == y).mean()),
        "macro_f1": M.macro_f1(cm),
        "balanced_accuracy": M.balanced_accuracy(cm),
        "majority_baseline": M.majority_baseline(cm),
        "majority_class": shared[int(support.argmax())],
        "per_class": {c: {"precision": float(pc["precision"][i]), "recall": float(pc["recall"][i]),
                          "f1": float(pc["f1"][i]), "support": int(pc["support"][i])}
                      for i, c in enumerate(shared)},
        "confusion": {"classes": shared, "counts": cm.tolist(), "normalized": M.normalize_rows(cm).tolist()},
        "negative": {
            "classes": [c for c, m in zip(shared, neg_mask) if m],
            "support": int(is_neg.sum()),
            "auroc": M.auroc(is_neg, neg_score),
            "average_precision": M.average_precision(is_neg, neg_score),
            **M.binary_at_threshold(is_neg, neg_score, lm.threshold),
            "threshold": lm.threshold,
        },
        "calibration": {
            "version": lm.calibration_version,
            "n_bins": M.CALIBRATION_BINS,
            "ece": M.top_label_ece(probs, y),
            "ece_uncalibrated": M.top_label_ece(softmax(logits, 1.0), y),
            "brier": M.brier_score(probs, y),
            "negative_ece": M.calibration_error(neg_score, is_neg),
            "reliability": M.reliability(probs.max(axis=1), probs.argmax(axis=1) == y),
            "negative_reliability": M.reliability(neg_score, is_neg),
            "fit_on_this_data": _calibrated_on(lm.card, ds, data_hash),
        },
        "dropped": dropped,
        "model_only_classes": [c for c in lm.classes if c not in shared],
        "data_dropped": data_dropped,
        "training_overlap_dropped": overlap_dropped,
        "data_hash": data_hash,
    }


def _calibrated_on(card: dict, ds: DatasetSpec, data_hash: str) -> bool:
    """Whether the card's temperature, offsets and threshold were fit on this data (then its calibration metrics
    are in-sample): the same data hash, or the same split of the same dataset (training leaves out validation
    images that are private training data, so the hashes can differ)."""
    rec = card.get("calibration_data") or card.get("val_data")
    if not isinstance(rec, dict):
        return False
    if rec.get("data_hash") == data_hash:
        return True
    try:
        fit = parse_spec(str(rec.get("spec")))
    except PrivferError:
        return False
    return (fit.kind, fit.path.resolve(), fit.split) == (ds.kind, ds.path.resolve(), ds.split)


def plot_confusion(classes: list[str], counts, path: Path, title: str = "") -> Path:
    """Confusion matrix PNG: colour = row-normalised share, text = share and count; rows are true classes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(counts, np.int64)
    norm = M.normalize_rows(cm)
    k = len(classes)
    fig = Figure(figsize=(1.0 + 0.75 * k, 0.8 + 0.7 * k), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(calibration: dict, path: Path, title: str = "") -> Path:
    """Reliability diagrams PNG: the predicted class's probability against how often it is right, and the
    negative score against how often the face is negative; bar width shows the bin, the dot its mean
    prediction, the diagonal perfect calibration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    panels = [("reliability", "ece", "probability of the predicted class", "fraction right"),
              ("negative_reliability", "negative_ece", "negative score", "fraction negative")]
    for k, (key, ece, xlabel, ylabel) in enumerate(panels, 1):
        ax = fig.add_subplot(1, 2, k)
        r = calibration[key]
        edges, count = np.asarray(r["edges"]), np.asarray(r["count"])
        used = count > 0
        ax.bar(edges[:-1][used], np.asarray(r["frequency"])[used], width=np.diff(edges)[used], align="edge",
               color="tab:blue", alpha=0.6, edgecolor="white")
        ax.plot(np.asarray(r["mean_prob"])[used], np.asarray(r["frequency"])[used], "o", color="tab:blue", ms=3)
        ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        value = calibration.get(ece)
        ax.set_title(f"ECE {value:.3f}" if value is not None else "ECE n/a", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _write_matrix_csv(path: Path, classes: list[str], rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["true\\predicted", *classes])
        for c, row in zip(classes, rows):
            w.writerow([c, *row])


def write_outputs(result: dict, out_dir: str | Path) -> list[Path]:
    """Write ``evaluation.json``, ``confusion_counts.csv``, ``confusion_normalized.csv``, ``confusion.png``
    and ``reliability.png`` for an :func:`evaluate` result, each atomically; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = result["confusion"]
    paths = [out / "evaluation.json", out / "confusion_counts.csv", out / "confusion_normalized.csv",
             out / "confusion.png", out / "reliability.png"]
    write_json_atomic(paths[0], result)
    _write_matrix_csv(paths[1], conf["classes"], conf["counts"])
    _write_matrix_csv(paths[2], conf["classes"], [[f"{v:.4f}" for v in row] for row in conf["normalized"]])
    plot_confusion(conf["classes"], conf["counts"], paths[3],
                   title=f"{result['model']} on {result['data']} (n={result['n']})")
    plot_reliability(result["calibration"], paths[4],
                     title=f"{result['model']} on {result['data']} (n={result['n']})"
                     + (", calibrated on this data" if result["calibration"]["fit_on_this_data"] else ""))
    return paths
