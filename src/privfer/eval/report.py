"""Render training runs into a Markdown report with figures, and a compact results table for the README.

A run is a run directory (``model.safetensors``, ``model_card.json``, ``metrics.jsonl``) or any model
reference :func:`privfer.models.io.load_model` accepts (a shipped model has no training curves).
Train/validation loss and accuracy come from the final epoch in ``metrics.jsonl``; everything else
is measured here by :func:`privfer.eval.evaluate.evaluate` on the fixed validation and test splits.
Dataset specs in model cards are resolved relative to the current directory, as at training time.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.readers import read_dataset
from ..data.spec import parse_spec
from ..errors import PrivferError
from ..infer.outputs import atomic_path, save_figure
from ..models.io import LoadedModel, load_model
from .audit import find_audits
from .evaluate import evaluate, write_outputs

#: Classes whose recall the tables single out: the rare and hard ones.
FOCUS_CLASSES = ("disgust", "fear", "contempt")
NA = "n/a"
#: Marks a calibration error measured on the very split the calibration was fit on.
IN_SAMPLE = " ¹"


@dataclass
class RunSummary:
    """One run: its card, per-epoch metrics, and evaluations (``None`` with a note when not possible)."""

    ref: str
    name: str
    model: LoadedModel
    metrics: list[dict] = field(default_factory=list)
    audits: list[tuple[str, dict]] = field(default_factory=list)  # (name, audit.json) from RUN/audit/
    val: dict | None = None
    val_note: str = NA
    test: dict | None = None
    test_note: str = NA

    @property
    def card(self) -> dict:
        return self.model.card


# ---------------------------------------------------------------- loading and evaluating runs

def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrivferError(f"{path}:{i}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise PrivferError(f"{path}:{i}: not a JSON object")
        rows.append(row)
    return rows


def _entries(value) -> list[str]:
    """Spec strings of a card's data entry: a spec string, a ``{"spec": ...}`` description
    (what training writes), a list of those, or null."""
    values = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in values:
        if isinstance(v, dict):
            v = v.get("spec")
        if v:
            out.append(str(v))
    return out


def _spec_text(value) -> str | None:
    """A card's data entry as one display string (None when empty)."""
    return " + ".join(_entries(value)) or None


def train_data_text(card: dict) -> str | None:
    """The spec the run was trained on: ``train_data``, else ``private_data``, else ``public_data``
    (the first entry where a card lists several)."""
    for key in ("train_data", "private_data", "public_data"):
        entries = _entries(card.get(key))
        if entries:
            return entries[0]
    return None


def dataset_key(card: dict) -> str:
    """The group a run belongs to in the report: its training dataset (kind and path, no split)."""
    text = train_data_text(card)
    if text is None:
        return "unknown training data"
    try:
        spec = parse_spec(text)
    except PrivferError:
        return text.rsplit("@", 1)[0]
    return f"{spec.kind}:{spec.path}"


def _try_evaluate(model: LoadedModel, text: str | None, split: str | None,
                  batch_size: int) -> tuple[dict | None, str]:
    """Evaluate on spec ``text`` (at ``split`` when given), or give (None, reason) where the data is
    absent here or the split is held back."""
    if text is None:
        return None, f"{NA} (no dataset spec in the model card)"
    try:
        spec = parse_spec(text)
        spec = spec.with_split(split) if split else spec
        if not read_dataset(spec).samples:
            return None, f"{NA} (held back)"
        return evaluate(model, spec, batch_size=batch_size), ""
    except PrivferError as e:
        return None, f"{NA} ({e})"


def summarise(ref: str | Path, *, test: bool = True, batch_size: int = 512) -> RunSummary:
    """Load a run and evaluate it on its validation split (the card's ``val_data``, else the ``val``
    split of its training dataset) and, with ``test``, on the ``test`` split of its training dataset."""
    model = load_model(ref)
    p = Path(ref)
    run = RunSummary(str(ref), p.name if p.exists() else str(ref), model)
    if p.is_dir():
        run.metrics = read_metrics(p / "metrics.jsonl")
        run.audits = find_audits(p)
    trained_on = train_data_text(model.card)
    val = _entries(model.card.get("val_data"))
    run.val, run.val_note = _try_evaluate(model, *((val[0], None) if val else (trained_on, "val")), batch_size)
    if test:
        run.test, run.test_note = _try_evaluate(model, trained_on, "test", batch_size)
    return run


# ---------------------------------------------------------------- formatting

def _pct(x) -> str:
    return NA if x is None else f"{100 * float(x):.1f}%"


def _num(x, fmt: str = ".4f") -> str:
    return NA if x is None else format(float(x), fmt)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _duration(seconds) -> str:
    if seconds is None:
        return NA
    s = int(round(float(seconds)))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _epsilon(card: dict):
    """The ε the accountant reports as spent (the target is only an upper bound asked for)."""
    return card.get("epsilon_spent")


def privacy_statement(card: dict) -> str:
    """What the model's differential-privacy guarantee covers, in one sentence."""
    def described(entry):  # spec text plus the subset it names (e.g. a content-hash split)
        text = _spec_text(entry)
        sub = entry.get("subset") if isinstance(entry, dict) else None
        return f"{text} ({sub})" if text and sub else text

    private, public = described(card.get("private_data")), described(card.get("public_data"))
    eps, delta = _epsilon(card), card.get("delta")
    if private and eps is not None and math.isfinite(float(eps)):
        target = card.get("epsilon_target")
        text = (f"(ε={float(eps):.2f}, δ={_num(delta, 'g')}" + (f"; target ε={float(target):g}" if target else "")
                + f") covers {private}")
    elif private:
        text = f"private data {private}, but the card records no finite ε spent: no guarantee stated"
    else:
        text = "no differential-privacy guarantee (no DP-SGD stage)"
    if public:
        text += f"; no guarantee for public data {public} (trained on without DP)"
    val = _spec_text(card.get("val_data"))
    if val:
        text += f"; validation data {val} is not covered"
    return text


def _recall(result: dict | None, cls: str) -> str:
    if result is None or cls not in result["per_class"]:
        return NA
    return _num(result["per_class"][cls]["recall"], ".3f")


def weakest_classes(result: dict, k: int = 2) -> list[tuple[str, float]]:
    """The ``k`` classes with the lowest recall among those with support (ties: class order)."""
    pcs = [(c, v["recall"]) for c, v in result["per_class"].items() if v["support"] > 0]
    return sorted(pcs, key=lambda cv: cv[1])[:k]


def audit_markdown(runs: list[tuple[str, list[tuple[str, dict]]]]) -> str:
    """Table of audit results, one row per ``audit.json`` of each (run name, audits), then how well each LiRA
    audit's shadow models fit beside the model (where the audit measured it)."""
    rows, fits = [], []
    for run, audits in runs:
        for name, a in audits:
            sh = a.get("shadows") or {}
            if "accuracy_outside" in sh and "model_non_member_accuracy" in sh:
                fits.append(f"- {run} {name}: shadows {_pct(sh['accuracy_outside'])} on the audited examples outside "
                            f"their halves of {sh.get('population', NA)}, the model {_pct(sh['model_non_member_accuracy'])} "
                            f"on its non-members" + ("; **the shadows do not mimic the model, so this LiRA row "
                                                     "understates the leak**" if sh.get("fit_warning") else ""))
            tpr = a.get("tpr_at_fpr", {})
            rows.append([run, name, a.get("attack", NA) + (f" ({a['variant']})" if a.get("variant") else ""),
                         f"{a.get('n_members', NA)} / {a.get('n_non_members', NA)}",
                         _num(a.get("auc"), ".3f") + (f" ({a['auc_ci'][0]:.3f}-{a['auc_ci'][1]:.3f})"
                                                      if a.get("auc_ci") else ""),
                         _pct(tpr.get("0.01")), _pct(tpr.get("0.001")), _pct(a.get("balanced_accuracy")),
                         _num(a.get("epsilon_lower_bound"), ".2f"), _num(a.get("epsilon_claimed"), ".2f")])
    table = _table(["run", "audit", "attack", "members / non-members", "AUC (95% CI)", "TPR at 1% FPR",
                    "TPR at 0.1% FPR", "balanced attack accuracy", "ε lower bound (95%)", "ε claimed"], rows)
    if not fits:
        return table
    return "\n".join([table, "", "LiRA's shadow models against the model (accuracy on examples neither trained on; "
                                  "shadows far below the model do not mimic it):", "", *fits])


def _command(run: RunSummary) -> str:
    if run.card.get("command"):
        return f"`{run.card['command']}`"
    shared = Path("configs") / f"{Path(str(run.ref)).name}.yaml"  # the repository's config for a shipped run
    cfg = shared if shared.is_file() else Path(run.ref) / "config.json"
    return f"`privfer train --config {cfg}`" if cfg.is_file() else NA


def _results_markdown(runs: list[RunSummary]) -> str:
    header = ["model", "validation accuracy", "without class offsets", "macro-F1", "negative AUROC",
              *[f"{c} recall" for c in FOCUS_CLASSES], "ε", "δ", "training time", "command"]
    rows = []
    for r in runs:
        v, card = r.val, r.card
        dp = bool(_spec_text(card.get("private_data"))) and _epsilon(card) is not None
        rows.append([
            r.name,
            _pct(v["accuracy"]) if v else r.val_note,
            _pct(v["accuracy_without_class_bias"]) if v and any(v.get("class_bias") or []) else NA,
            _num(v["macro_f1"], ".3f") if v else NA,
            _num(v["negative"]["auroc"], ".3f") if v else NA,
            *[_recall(v, c) for c in FOCUS_CLASSES],
            _num(_epsilon(card), ".2f") if dp else "none (no DP)",
            _num(card.get("delta"), "g") if dp else NA,
            _duration(card.get("training_time_s")),
            _command(r),
        ])
    return _table(header, rows)


def results_table(refs: list[str | Path], batch_size: int = 512) -> str:
    """Markdown table for the README: validation accuracy, macro-F1, negative AUROC, disgust/fear/contempt
    recall, ε, δ, training time and command, one row per run directory or shipped model name."""
    if not refs:
        raise PrivferError("no runs given")
    return _results_markdown([summarise(r, test=False, batch_size=batch_size) for r in refs])


# ---------------------------------------------------------------- figures

def _figure(ncols: int, width: float = 4.2, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_curves(rows: list[dict], path: Path, title: str = "") -> Path:
    """Loss, accuracy and ε against epoch (epochs of all stages in order; a dotted line at each stage change)."""
    fig, (ax_loss, ax_acc, ax_eps) = _figure(3)
    x = np.arange(1, len(rows) + 1)

    def series(key):
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])

    for ax, key, label in ((ax_loss, "loss", "cross-entropy per example"), (ax_acc, "acc", "accuracy")):
        ax.plot(x, series(f"train_{key}"), "o-", ms=3, label="train")
        ax.plot(x, series(f"val_{key}"), "s-", ms=3, label="validation")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    eps = series("epsilon")
    if np.isfinite(eps).any():
        ax_eps.plot(x, eps, "o-", ms=3, color="tab:red")
    else:
        ax_eps.text(0.5, 0.5, "no DP stage", ha="center", va="center", transform=ax_eps.transAxes)
    ax_eps.set_ylabel("ε spent")
    from matplotlib.ticker import MaxNLocator

    stages = [r.get("stage") for r in rows]
    for ax in (ax_loss, ax_acc, ax_eps):
        ax.set_xlabel("epoch (all stages)")
        ax.set_xlim(0.5, len(rows) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for i, stage in enumerate(stages):
            if i == 0 or stage != stages[i - 1]:
                if i:
                    ax.axvline(i + 0.5, ls=":", color="grey")
                ax.text(i + 0.6, 0.97, str(stage), transform=ax.get_xaxis_transform(), fontsize=7,
                        va="top", color="grey")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_recall(runs: list[RunSummary], path: Path, title: str = "") -> Path:
    """Grouped bars: per-class validation recall of each run."""
    runs = [r for r in runs if r.val is not None]
    classes = list(dict.fromkeys(c for r in runs for c in r.val["per_class"]))
    fig, (ax,) = _figure(1, width=max(5.0, 0.9 * len(classes) + 2), height=3.4)
    w = 0.8 / max(len(runs), 1)
    for i, r in enumerate(runs):
        pc = r.val["per_class"]
        ax.bar(np.arange(len(classes)) + (i - (len(runs) - 1) / 2) * w,
               [pc[c]["recall"] if c in pc else 0.0 for c in classes], w, label=r.name)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("validation recall")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------- the report

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def _final(rows: list[dict], key: str):
    for r in reversed(rows):
        if r.get(key) is not None:
            return r[key]
    return None


def make_report(run_dirs: list[str | Path], out_dir: str | Path, batch_size: int = 512) -> Path:
    """Write ``report.md`` with tables and PNG figures for ``run_dirs`` into ``out_dir``; returns its path.

    Runs are grouped by training dataset. Per dataset: the seed paper's table (train/validation
    accuracy and loss at the final epoch, test loss and accuracy where the test split is available),
    a validation evaluation table, the privacy guarantee of each model, per-class recall with the
    two weakest classes named, training curves, validation reliability diagrams and confusion matrices.
    """
    if not run_dirs:
        raise PrivferError("no runs given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [summarise(r, batch_size=batch_size) for r in run_dirs]
    slugs = [f"{i + 1:02d}-{_slug(r.name)}" for i, r in enumerate(runs)]
    for r, slug in zip(runs, slugs):
        for split, result in (("val", r.val), ("test", r.test)):
            if result is not None:
                write_outputs(result, out / slug / split)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(dataset_key(r.card), []).append(i)

    md = ["# privfer report", "",
          "Losses are mean cross-entropy per example (natural log). Train and validation accuracy and loss "
          "are the final epoch's values from `metrics.jsonl`, as logged during training; "
          "all other numbers are measured on the fixed, un-augmented split with the model in eval mode. "
          "Test loss uses temperature 1, like the training-time losses; the evaluation JSON files also "
          "give the calibrated loss.", "",
          "## Summary", "", _results_markdown(runs), ""]
    for g, (key, idx) in enumerate(groups.items(), 1):
        group = [runs[i] for i in idx]
        md += [f"## Trained on {key}", "", "### Accuracy and loss", ""]
        rows = []
        for i in idx:
            r = runs[i]
            t = r.test
            rows.append([r.name, _pct(_final(r.metrics, "train_acc")), _pct(_final(r.metrics, "val_acc")),
                         _num(_final(r.metrics, "train_loss")), _num(_final(r.metrics, "val_loss")),
                         _num(t["loss_uncalibrated"]) if t else r.test_note, _pct(t["accuracy"]) if t else r.test_note])
        md += [_table(["run", "train accuracy", "validation accuracy", "train loss", "validation loss",
                       "test loss", "test accuracy"], rows), ""]

        md += ["### Validation evaluation", ""]
        rows = []
        for i in idx:
            r, v = runs[i], runs[i].val
            if v is None:
                rows.append([r.name, r.val_note, *[NA] * (9 + len(FOCUS_CLASSES))])
                continue
            cal = v["calibration"]
            rows.append([r.name, v["data"], v["n"], _pct(v["accuracy"]), _num(v["loss"]), _num(v["macro_f1"], ".3f"),
                         _pct(v["balanced_accuracy"]), _pct(v["majority_baseline"]),
                         _num(v["negative"]["auroc"], ".3f"), *[_recall(v, c) for c in FOCUS_CLASSES],
                         _num(cal["ece"], ".3f") + IN_SAMPLE * cal["fit_on_this_data"],
                         _num(cal["negative_ece"], ".3f") + IN_SAMPLE * cal["fit_on_this_data"]])
        md += [_table(["run", "data", "n", "accuracy", "loss (calibrated)", "macro-F1", "balanced accuracy",
                       "majority baseline", "negative AUROC", *[f"{c} recall" for c in FOCUS_CLASSES],
                       "ECE", "negative-score ECE"], rows), ""]
        if any(runs[i].val and runs[i].val["calibration"]["fit_on_this_data"] for i in idx):
            md += [f"{IN_SAMPLE.strip()} In sample: the run's temperature and class offsets were fit on this split "
                   "(less any images that are also its private training data); "
                   "`benchmarks/class_bias_crossfit.py` measures them cross-fitted.", ""]
        floored = [f"- {runs[i].name}: " + ", ".join(f"{c} {f:g}" for c, f in floors.items())
                   for i in idx if runs[i].val and (floors := runs[i].card.get("class_bias_min_recall"))]
        if floored:
            md += ["Recall floors (`min_recall`): these runs' class offsets were raised until these classes' recall "
                   "on their calibration split met the floor, so on that split the recall is at least the floor by "
                   "construction (up to the rounding of cached features); `benchmarks/class_bias_crossfit.py` "
                   "measures it out of sample:", "", *floored, ""]
        dropped = [f"- {runs[i].name}: dropped {runs[i].val['dropped']} (classes the model lacks)"
                   for i in idx if runs[i].val and any(runs[i].val["dropped"].values())]
        md += dropped + ([""] if dropped else [])

        md += ["### Privacy", ""]
        md += [f"- {runs[i].name}: {privacy_statement(runs[i].card)}" for i in idx] + [""]
        audited = [(runs[i].name, runs[i].audits) for i in idx if runs[i].audits]
        if audited:
            md += ["### Membership-inference audits (`privfer audit`)", "", audit_markdown(audited), ""]

        md += ["### Per-class recall (validation)", ""]
        if any(r.val for r in group):
            name = f"recall-{g:02d}.png"
            plot_recall(group, out / name, title=key)
            md += [f"![per-class recall]({name})", ""]
        for i in idx:
            v = runs[i].val
            weak = ", ".join(f"{c} ({rec:.3f})" for c, rec in weakest_classes(v)) if v else runs[i].val_note
            md.append(f"- {runs[i].name}: weakest {weak}")
        md.append("")

        md += ["### Training curves", ""]
        for i in idx:
            r = runs[i]
            if not r.metrics:
                md += [f"- {r.name}: no metrics.jsonl", ""]
                continue
            name = f"{slugs[i]}/curves.png"
            (out / slugs[i]).mkdir(exist_ok=True)
            plot_curves(r.metrics, out / name, title=r.name)
            md += [f"![training curves of {r.name}]({name})", ""]

        md += ["### Reliability diagrams (validation)", ""]
        md += [f"![reliability diagrams of {runs[i].name}]({slugs[i]}/val/reliability.png)" for i in idx if runs[i].val]
        md.append("")

        md += ["### Confusion matrices (validation)", ""]
        md += [f"![confusion matrix of {runs[i].name}]({slugs[i]}/val/confusion.png)" for i in idx if runs[i].val]
        md.append("")
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(md).rstrip() + "\n")
    return path
