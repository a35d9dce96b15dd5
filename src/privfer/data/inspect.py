"""Summarise a dataset for ``privfer data inspect``: rows, kept faces per split and class, sizes, drops, duplicates.

Counting conventions:

- ``rows``/``total``: entries the reader listed (label rows or image files), including those it dropped
  (e.g. FER+ faces where unknown or not-a-face wins) and unreadable images. For FER+ that is the
  number of ``label.csv`` rows; for image folders, the number of image files.
- ``splits``: faces actually kept (decodable, with a label) per split and class.
- ``dropped``: reader and cache drop reasons with counts, except unreadable images, reported as
  ``unreadable``. ("no face detected (whole image used)" faces are kept, and still listed.)
- ``duplicates``: groups of identical decoded images (content hash), within a split and across splits.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ..taxonomy import CLASSES
from .cache import load_faces
from .readers import read_dataset
from .spec import DatasetSpec, parse_spec

UNREADABLE = "unreadable image"
SPLIT_ORDER = ("train", "val", "test", "all")
MAX_EXAMPLES = 5
MAX_SOURCES = 4


def _rows_per_split(spec: DatasetSpec, labels: str) -> dict[str, int]:
    """Reader entries (kept by the reader + dropped by it) per split; one cheap re-read per split if needed."""
    res = read_dataset(spec, labels=labels)
    listed = Counter(s.split for s in res.samples)
    splits = sorted(listed, key=SPLIT_ORDER.index)
    if not res.dropped:
        return {s: listed[s] for s in splits}
    if len(splits) <= 1:  # one split: every drop belongs to it
        return {splits[0] if splits else spec.split: len(res.samples) + sum(res.dropped.values())}
    rows = {}
    for s in splits:  # the reader's drop counts are per read, so read each split for its own
        r = read_dataset(spec.with_split(s), labels=labels)
        rows[s] = len(r.samples) + sum(r.dropped.values())
    return rows


def _example_sources(idx: list[int], splits, sources) -> list[str]:
    """Up to MAX_SOURCES sources of a duplicate group, the first of each split first."""
    firsts: dict[str, int] = {}
    for i in idx:
        firsts.setdefault(splits[i], i)
    order = list(firsts.values()) + [i for i in idx if i not in firsts.values()]
    return [str(sources[i]) for i in order[:MAX_SOURCES]]


def _duplicates(hashes, splits, sources) -> dict:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        groups[h].append(i)
    within = images = 0
    across = 0
    examples: list[tuple[int, dict]] = []
    for h, idx in groups.items():
        if len(idx) < 2:
            continue
        by_split = Counter(splits[i] for i in idx)
        dup_splits = [s for s, n in by_split.items() if n > 1]
        within += len(dup_splits)
        images += sum(by_split[s] for s in dup_splits)
        if len(by_split) > 1:
            across += 1
        examples.append((len(by_split) > 1, {
            "hash": h, "splits": dict(sorted(by_split.items(), key=lambda kv: SPLIT_ORDER.index(kv[0]))),
            "sources": _example_sources(idx, splits, sources),
        }))
    # Cross-split groups first (they leak between train and evaluation), then the biggest groups.
    examples.sort(key=lambda e: (not e[0], -sum(e[1]["splits"].values()), e[1]["hash"]))
    return {"groups_within_split": within, "images_in_groups": images, "groups_across_splits": across,
            "examples": [e for _, e in examples[:MAX_EXAMPLES]]}


def inspect_dataset(spec: str | DatasetSpec, strict: bool = False, labels: str = "majority",
                    progress: bool = False) -> dict:
    """Inspect ``spec`` (``KIND:PATH[@SPLIT]``; without ``@SPLIT`` every split). Returns a JSON-ready dict.

    Builds (or reuses) the preprocessing cache; ``strict`` fails on the first unreadable image.
    """
    ds = parse_spec(spec, default_split="all")
    fs = load_faces(ds, labels=labels, strict=strict, progress=progress)
    rows = _rows_per_split(ds, labels)
    split_names = sorted(set(rows) | set(fs.split.tolist()), key=SPLIT_ORDER.index)
    per_split: dict[str, dict[str, int]] = {}
    for s in split_names:
        lab = fs.labels[(fs.split == s) & (fs.labels >= 0)]
        per_split[s] = {c: int(n) for c, n in zip(fs.classes, np.bincount(lab, minlength=len(fs.classes)))}
    sizes: Counter = Counter()
    if fs.orig_sizes is not None:
        sizes = Counter(f"{h}x{w}" for h, w in fs.orig_sizes.tolist())
    dropped = {k: int(v) for k, v in sorted(fs.dropped.items(), key=lambda kv: -kv[1]) if k != UNREADABLE}
    return {
        "spec": str(ds),
        "classes": list(fs.classes),
        "total": int(sum(rows.values())),
        "kept": int(len(fs)),
        "rows": {s: int(rows.get(s, 0)) for s in split_names},
        "splits": per_split,
        "image_sizes": dict(sizes.most_common()),
        "unreadable": int(fs.dropped.get(UNREADABLE, 0)),
        "dropped": dropped,
        "duplicates": _duplicates(fs.hashes.tolist(), fs.split.tolist(), fs.sources),
    }


def render_text(report: dict) -> str:
    """The report as an aligned, human-readable table."""
    classes = [c for c in CLASSES if c in report["classes"]]
    head = ["split", "rows", "kept", *classes]
    table = [head]
    for s, counts in report["splits"].items():
        table.append([s, f"{report['rows'].get(s, 0):,}", f"{sum(counts.values()):,}",
                      *(f"{counts.get(c, 0):,}" for c in classes)])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = [report["spec"],
             f"  rows read: {report['total']:,}   faces kept: {report['kept']:,}   unreadable: {report['unreadable']:,}",
             ""]
    for r in table:
        lines.append("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    lines.append("")
    dropped = report["dropped"]
    lines.append("  dropped: " + (", ".join(f"{k}: {v:,}" for k, v in dropped.items()) if dropped else "none"))
    sizes = report["image_sizes"]
    shown = ", ".join(f"{k}: {v:,}" for k, v in list(sizes.items())[:5])
    more = f" (+{len(sizes) - 5} more sizes)" if len(sizes) > 5 else ""
    lines.append(f"  image sizes: {shown or 'unknown'}{more}")
    d = report["duplicates"]
    lines.append(f"  duplicates (identical pixels): {d['groups_within_split']:,} groups within a split "
                 f"({d['images_in_groups']:,} images), {d['groups_across_splits']:,} groups spanning several splits")
    for e in d["examples"]:
        where = ", ".join(f"{s}: {n}" for s, n in e["splits"].items())
        lines.append(f"    {e['hash'][:12]} [{where}]: {', '.join(e['sources'])}")
    return "\n".join(lines)
