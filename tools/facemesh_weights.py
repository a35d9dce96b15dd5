"""Convert MediaPipe's Face Mesh landmark model (``face_landmark.tflite``) into the safetensors file that
privfer ships for its FaceMesh front-end (``src/privfer/weights/facemesh.safetensors``).

Run once by a maintainer, never at run time. It needs what privfer itself does not: the ``ai-edge-litert``
TFLite interpreter, and the model file from the mediapipe 0.10.21 wheel (Apache-2.0; newer wheels no longer
bundle it)::

    pip download mediapipe==0.10.21 --no-deps -d /tmp/mp && cd /tmp/mp && unzip -o mediapipe-*.whl \\
        'mediapipe/modules/face_landmark/face_landmark.tflite'
    pip install ai-edge-litert
    python tools/facemesh_weights.py /tmp/mp/mediapipe/modules/face_landmark/face_landmark.tflite

The file holds the weights (float16, as stored in the .tflite) of every layer up to the tensors named in
``TAPS``, and, in its metadata, the layer list that ``privfer.models.facemesh`` runs and the SHA-256 of the
source model. Finally the script saves the interpreter's tap tensors for a fixed input as a test fixture
(``tests/data/facemesh_tflite_reference.npz``) and checks that privfer's torch network gives the interpreter's own tensors.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SOURCE_SHA256 = "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"
TAPS = ["p_re_lu_17", "p_re_lu_20"]
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/privfer/weights/facemesh.safetensors"
#: The interpreter's own tap tensors for the input ``reference_input()``: tests check privfer's network on them.
REFERENCE = ROOT / "tests/data/facemesh_tflite_reference.npz"


def reference_input() -> np.ndarray:
    """A fixed [1, 192, 192, 3] input in [0, 1] (NHWC, as TFLite takes it)."""
    return np.random.default_rng(0).random((1, 192, 192, 3), dtype=np.float32)


def layer_list(it, taps) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The layers (in order) that an invoked interpreter ``it`` runs to compute the tensors named ``taps`` from
    its inputs, as the list privfer's torch interpreter reads (``op``, ``in``, ``out`` and each op's settings),
    and their weights (dequantized, float16, in torch's layout) by the name of the stored tensor."""
    name = {d["index"]: d["name"] for d in it.get_tensor_details()}
    shape = {d["index"]: tuple(int(s) for s in d["shape"]) for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    # constants: the dequantized weights, under the name of the stored tensor
    const = {o["outputs"][0]: o["inputs"][0] for o in ops if o["op_name"] == "DEQUANTIZE"}
    made = {d["index"] for d in it.get_input_details()} | {o["outputs"][0] for o in ops if o["op_name"] != "DEQUANTIZE"}
    # keep only the layers the taps depend on
    need, keep = {i for i, n in name.items() if n in taps}, []
    for o in reversed(ops):
        if o["op_name"] != "DEQUANTIZE" and o["outputs"][0] in need:
            keep.append(o)
            need |= {i for i in o["inputs"] if i in made}
    weights, layers = {}, []
    for o in reversed(keep):
        op, ins, out = o["op_name"], [i for i in o["inputs"] if i >= 0], o["outputs"][0]
        layer = {"op": op, "in": [name[i] for i in ins if i in made], "out": name[out]}
        if op in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D"):
            layer["stride"] = shape[ins[0]][1] // shape[out][1]
        for i in ins:
            if i in const:
                w = it.get_tensor(i)  # dequantized value
                if op == "CONV_2D" and w.ndim == 4:
                    w = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
                elif op == "DEPTHWISE_CONV_2D" and w.ndim == 4:
                    w = w.transpose(3, 0, 1, 2)  # 1HWC -> C1HW
                elif op == "PRELU":
                    w = w.reshape(-1)
                weights[name[const[i]]] = np.ascontiguousarray(w.astype(np.float16))
                layer.setdefault("weights", []).append(name[const[i]])
            elif op == "PAD" and i != ins[0]:
                layer["channels"] = int(it.get_tensor(i)[3][1])  # zero channels appended
        layers.append(layer)
    return layers, weights


def interpreter(tflite: str):
    """The TFLite interpreter of a model file, without the XNNPACK delegate (which would replace the layers by
    opaque DELEGATE nodes), keeping every tensor for reading after ``invoke``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=tflite, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def main(tflite: str) -> None:
    import torch
    from safetensors.numpy import save_file

    digest = hashlib.sha256(Path(tflite).read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"{tflite}: SHA-256 {digest}, expected {SOURCE_SHA256} (face_landmark.tflite of mediapipe 0.10.21)")
    it = interpreter(tflite)
    x = reference_input()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    name = {d["index"]: d["name"] for d in it.get_tensor_details()}
    layers, weights = layer_list(it, TAPS)
    save_file(weights, str(OUT), metadata={"layers": json.dumps(layers), "taps": json.dumps(TAPS),
                                           "source_sha256": digest, "source": "face_landmark.tflite, mediapipe 0.10.21"})
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(layers)} layers, {len(weights)} tensors")

    from safetensors import safe_open

    from privfer.models.facemesh import WEIGHTS_SHA256, FaceMeshNet, content_digest

    with safe_open(str(OUT), framework="pt") as f:
        digest = content_digest(f)
    print(f"content SHA-256 {digest}" + ("" if digest == WEIGHTS_SHA256 else
                                          " (differs from privfer.models.facemesh.WEIGHTS_SHA256: update it)"))
    net = FaceMeshNet(OUT, sha256=None)
    with torch.no_grad():
        ours = net.maps(torch.from_numpy(x).permute(0, 3, 1, 2))
    refs = {t: it.get_tensor([i for i, n in name.items() if n == t][0]).transpose(0, 3, 1, 2) for t in TAPS}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, **refs)
    for t, a in zip(TAPS, ours):
        ref = refs[t]
        err = float(np.abs(a.numpy() - ref).max())
        print(f"{t}: max |torch - tflite| = {err:.2e} (scale {np.abs(ref).max():.2f})")
        if err > 1e-3 * max(1.0, float(np.abs(ref).max())):
            sys.exit(f"{t}: torch network does not reproduce the interpreter")


if __name__ == "__main__":
    main(*sys.argv[1:])
