"""Save and safely load privfer models: safetensors weights plus a JSON model card, never pickles.

A model reference is a run directory (``model.safetensors`` + ``model_card.json``), a ``.safetensors``
file with its card beside it (``<stem>.json`` or ``model_card.json``), or the name of a model shipped
in ``privfer/weights``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PrivferError
from ..taxonomy import negative_mask, validate_classes
from .registry import build_model, kwargs_of_card

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_SHIPPED = "ferplus-dp8"


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if p.with_suffix(".json").is_file())


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` via a temporary file and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; cards are meant to be shared
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_weights(state: dict[str, torch.Tensor], path: Path, dtype: str = "float32") -> None:
    """Write a state dict as safetensors, atomically; floating tensors stored as ``dtype``: float32, float16, or
    int8 (each floating tensor of two or more dimensions as int8 with one float32 scale per row, under the key
    ``NAME`` + :data:`INT8_SCALE`; the others as float16). :func:`widen` turns what was stored back into float32,
    which :func:`load_model` does."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    stored = {}
    for k, v in state.items():
        v = v.detach()
        if _quantized(v, dtype):
            stored[k], stored[k + INT8_SCALE] = quantize_int8(v)
        else:
            stored[k] = _stored(v, dtype)
    save_file({k: v.contiguous().cpu() for k, v in stored.items()}, str(tmp))
    os.replace(tmp, path)


#: Key suffix of an int8 tensor's per-row scales in a weights file (``weights_dtype: int8``).
INT8_SCALE = ".int8_scale"


def _quantized(t: torch.Tensor, dtype: str) -> bool:
    """Whether ``save_weights(..., dtype)`` stores ``t`` as int8 with per-row scales."""
    return dtype == "int8" and t.is_floating_point() and t.dim() >= 2


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (``q`` int8 of ``t``'s shape, ``scale`` float32 [rows]) with ``t`` close to
    ``q * scale`` row by row; each row's largest magnitude maps to 127 (an all-zero row gets scale 1)."""
    rows = t.detach().float().reshape(t.shape[0], -1)
    peak = rows.abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(t.shape), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``q * scale``, one scale per row of ``q`` (the inverse of :func:`quantize_int8` up to rounding)."""
    return q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))


def widen(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stored state dict as the model's tensors: each int8 tensor with its :data:`INT8_SCALE` scales turned
    back into float32 (other tensors as they are; ``load_state_dict`` widens float16 itself). RuntimeError for
    an int8 tensor without one scale per row: privfer stores no other int8 tensors."""
    out = {}
    for k, v in state.items():
        if k.endswith(INT8_SCALE) and k[:-len(INT8_SCALE)] in state:
            continue
        if v.dtype != torch.int8:
            out[k] = v
            continue
        scale = state.get(k + INT8_SCALE)
        if scale is None or scale.shape != (v.shape[0] if v.dim() else -1,):
            raise RuntimeError(f"int8 tensor {k} without one {INT8_SCALE} scale per row")
        out[k] = dequantize_int8(v, scale)
    return out


def _stored(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """``t`` as stored when it is not quantised: floating tensors in ``dtype`` (float16 for ``int8`` runs)."""
    return t.to(getattr(torch, "float16" if dtype == "int8" else dtype)) if t.is_floating_point() else t


def round_to_stored(net: nn.Module, dtype: str) -> nn.Module:
    """``net`` with every floating tensor of its state dict rounded through ``dtype``, in place: the function its
    weights compute once saved with :func:`save_weights` (``dtype``) and loaded again. Unchanged for float32.
    Tensors outside the state dict (a fixed front-end's non-persistent weights) are left alone: they are never
    stored."""
    with torch.no_grad():
        for t in net.state_dict(keep_vars=True).values():
            if _quantized(t, dtype):
                t.copy_(dequantize_int8(*quantize_int8(t)))
            elif t.is_floating_point():
                t.copy_(_stored(t, dtype))
    return net


def save_model(net: nn.Module, card: dict, out: Path, stem: str = "model") -> None:
    """Save ``<out>/<stem>.safetensors`` and its card (``model_card.json`` for ``stem='model'``, else ``<stem>.json``)."""
    out = Path(out)
    save_weights(net.state_dict(), out / f"{stem}.safetensors")
    write_json_atomic(out / ("model_card.json" if stem == "model" else f"{stem}.json"), card)


def resolve(ref: str | Path | None) -> tuple[Path, Path]:
    """(weights file, card file) for a model reference; PrivferError when it is not a privfer model."""
    if ref is None or str(ref) == "":
        ref = DEFAULT_SHIPPED
    p = Path(ref)
    if p.is_dir():
        w, c = p / "model.safetensors", p / "model_card.json"
    elif p.suffix == ".safetensors" and p.is_file():
        w = p
        c = p.with_suffix(".json") if p.with_suffix(".json").is_file() else p.parent / "model_card.json"
    elif p.suffix == ".json" and p.is_file():
        c, w = p, (p.parent / "model.safetensors" if p.name == "model_card.json" else p.with_suffix(".safetensors"))
    elif (WEIGHTS_DIR / f"{ref}.safetensors").is_file():
        w, c = WEIGHTS_DIR / f"{ref}.safetensors", WEIGHTS_DIR / f"{ref}.json"
    else:
        known = ", ".join(shipped_models()) or "none shipped"
        raise PrivferError(f"{ref}: not a run directory, a .safetensors file or a shipped model ({known})")
    if not w.is_file():
        raise PrivferError(f"{ref}: no weights file {w.name}")
    if not c.is_file():
        raise PrivferError(f"{ref}: no model card beside the weights ({c.name})")
    return w, c


#: Calibration written into new model cards. Version 2: probabilities (and so the negative score) are
#: ``softmax(logits / temperature)``, and the class offsets only move the decided label. Version 1 (cards
#: without ``calibration_version``) also put the offsets into the probabilities, which made them
#: over-predict the rare classes the offsets favour.
CALIBRATION_VERSION = 2


@dataclass
class LoadedModel:
    """A model in eval mode with its card; the one place that turns face crops into probabilities."""

    net: nn.Module
    card: dict
    name: str = ""

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card["classes"])

    @property
    def input_size(self) -> int:
        return int(self.card.get("input_size", 48))

    @property
    def temperature(self) -> float:
        return float(self.card.get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        return float(self.card.get("negative_threshold", 0.5))

    def logits(self, pixels: np.ndarray, batch_size: int = 512, tta: bool = False) -> np.ndarray:
        """Logits for uint8 faces [N, S, S] (or [N, 1, S, S]); ``tta`` averages with the mirrored face."""
        from ..train.data import to_input

        out = []
        self.net.eval()
        device = next(self.net.parameters()).device
        with torch.inference_mode():
            for i in range(0, len(pixels), batch_size):
                x = to_input(pixels[i:i + batch_size]).to(device)
                z = self.net(x)
                if tta:
                    z = (z + self.net(torch.flip(x, dims=[3]))) / 2
                out.append(z.float().cpu().numpy())
        n = len(self.classes)
        return np.concatenate(out) if out else np.zeros((0, n), np.float32)

    @property
    def class_bias(self) -> np.ndarray:
        """Per-class logit offsets fit on validation data (zeros for a card without them)."""
        b = self.card.get("class_bias")
        return np.zeros(len(self.classes)) if b is None else np.asarray(b, np.float64)

    @property
    def calibration_version(self) -> int:
        """How the card's class offsets are used (see :data:`CALIBRATION_VERSION`); 1 for cards without the key."""
        return int(self.card.get("calibration_version", 1))

    def calibrated(self, logits: np.ndarray, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and the decided class index for each row of ``logits``.

        The label is ``argmax(logits / temperature + class_bias)``. The probabilities are
        ``softmax(logits / temperature)``: the class offsets shift decisions towards rare classes but not the
        probabilities, which stay calibrated (cards of calibration version 1 add the offsets to them too).
        ``cols`` restricts both to those of the model's classes (``logits`` then has only their columns).
        """
        bias = self.class_bias if cols is None else self.class_bias[cols]
        z = np.asarray(logits, np.float64) / max(self.temperature, 1e-6)
        labels = (z + bias).argmax(axis=1)
        return softmax(z, 1.0, bias if self.calibration_version == 1 else None), labels

    def predict(self, pixels: np.ndarray, batch_size: int = 512, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and decided class indices for uint8 faces (see :meth:`calibrated`)."""
        return self.calibrated(self.logits(pixels, batch_size, tta))

    def probs(self, pixels: np.ndarray, batch_size: int = 512, tta: bool = False, calibrated: bool = True) -> np.ndarray:
        """Class probabilities: calibrated (see :meth:`calibrated`), or ``softmax(logits)`` without ``calibrated``."""
        z = self.logits(pixels, batch_size, tta)
        return self.calibrated(z)[0] if calibrated else softmax(z)

    def negative_score(self, probs: np.ndarray) -> np.ndarray:
        """Probability mass on the negative classes (anger, disgust, fear, sadness, contempt)."""
        return probs[:, np.array(negative_mask(self.classes))].sum(axis=1)


def softmax(logits: np.ndarray, temperature: float = 1.0, bias: np.ndarray | None = None) -> np.ndarray:
    """``softmax(logits / temperature + bias)`` over the last axis, in float64 (float32 sums of a row's
    probabilities can exceed 1)."""
    z = np.asarray(logits, np.float64) / max(temperature, 1e-6)
    if bias is not None:
        z = z + bias
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_model(ref: str | Path | None = None, device: str = "cpu") -> LoadedModel:
    """Load a model by reference (see module docstring) with safetensors; the net is in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    w, c = resolve(ref)
    try:
        card = json.loads(c.read_text())
        classes = validate_classes(card["classes"])
        net = build_model(card["model"], len(classes), **kwargs_of_card(card))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PrivferError(f"{c}: not a privfer model card ({e.__class__.__name__}: {e})") from None
    try:
        state = widen(load_file(str(w), device=device))
        net.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise PrivferError(f"{w}: weights do not fit the model card ({msg})") from None
    net.to(device).eval()
    return LoadedModel(net, card, name=str(ref or DEFAULT_SHIPPED))


def init_weights(net: nn.Module, ref: str | Path, classes) -> dict:
    """Copy every tensor of model ``ref`` (run directory, weights file or shipped name) into the tensor of ``net``
    with the same name and shape, so that training starts from it; ``net`` may have more (e.g. a front-end
    that the saved model keeps fixed and does not save). The two must have the same ``classes``, and every
    tensor of ``ref`` must find its place, else PrivferError. Returns what the model card records."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    w, c = resolve(ref)
    try:
        card = json.loads(c.read_text())
        theirs = list(card["classes"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PrivferError(f"{c}: not a privfer model card ({e.__class__.__name__}: {e})") from None
    if theirs != list(classes):
        raise PrivferError(f"init_from {ref}: its classes {', '.join(theirs)} are not this run's {', '.join(classes)}")
    try:
        state = widen(load_file(str(w)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise PrivferError(f"{w}: not a safetensors weights file ({str(e).splitlines()[0] if str(e) else e})") from None
    own = net.state_dict()
    for k, v in state.items():
        if k not in own or own[k].shape != v.shape:
            where = "no tensor of that name" if k not in own else f"shape {tuple(own[k].shape)} there"
            raise PrivferError(f"init_from {ref}: its tensor {k} {tuple(v.shape)} does not fit this model ({where})")
    net.load_state_dict(state, strict=False)
    return {"model": str(ref), "weights_sha256": hashlib.sha256(w.read_bytes()).hexdigest(),
            "tensors": sorted(state), "its_model": card.get("model"), "its_public_data": card.get("public_data"),
            "its_private_data": card.get("private_data"), "its_guarantee": card.get("guarantee")}
