"""Convert MediaPipe's attention mesh (``face_landmark_with_attention.tflite``) into the safetensors file that privfer
ships for its attention-mesh front-end (``src/privfer/weights/attnmesh.safetensors``).

Run once by a maintainer, never at run time. It needs what privfer itself does not: the ``ai-edge-litert`` TFLite
interpreter (and its flatbuffers schema), and the model file from the mediapipe 0.10.21 wheel (Apache-2.0)::

    pip download mediapipe==0.10.21 --no-deps -d /tmp/mp && cd /tmp/mp && unzip -o mediapipe-*.whl \\
        'mediapipe/modules/face_landmark/face_landmark_with_attention.tflite'
    pip install ai-edge-litert
    python tools/attnmesh_weights.py /tmp/mp/mediapipe/modules/face_landmark/face_landmark_with_attention.tflite

The interpreter cannot run the whole model: MediaPipe implements its region crops as custom ops that the
interpreter lacks. So the script cuts the model in two plain ones and converts each as ``tools/facemesh_weights.py``
does: the trunk, from the face to the 48x48 map the regions are cut from and to the layer the landmarks come from,
and the three sub-networks, from their 16x16 crops to privfer's feature taps. The file holds both layer lists, their
weights and the landmark layer's (float16, as stored in the .tflite), and the custom ops' settings (each region's
landmarks, rotation landmarks, size and scale), which privfer reimplements (``privfer.models.attnmesh``).

Checks: privfer's trunk and sub-networks must give the interpreter's own tensors (trunk on a fixed input, the
sub-networks on fixed random crops; saved as the test fixture ``tests/data/attnmesh_tflite_reference.npz``); and
privfer's crops must be the regions MediaPipe cuts: on scikit-image's astronaut photograph, the lips' sub-network,
run by the interpreter on privfer's crop of the lips, places its 80 points (mapped back as MediaPipe's
``TransformLandmarks`` does) within a few pixels of the trunk's own lip points.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facemesh_weights import interpreter, layer_list, reference_input  # noqa: E402

SOURCE_SHA256 = "e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4"
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/privfer/weights/attnmesh.safetensors"
REFERENCE = ROOT / "tests/data/attnmesh_tflite_reference.npz"
REGIONS = ("lips", "left_eye", "right_eye")  # the order of the model's Landmarks2TransformMatrix ops


def reference_crops() -> dict[str, np.ndarray]:
    """Fixed random [1, 32, 16, 16] inputs of the three sub-networks (NCHW), by crop tensor name."""
    from privfer.models.attnmesh import CROPS

    rng = np.random.default_rng(1)
    return {c: rng.standard_normal((1, 32, 16, 16)).astype(np.float32) for c in CROPS}


def cut(model, ops: list, inputs: list[str], outputs: list[str]) -> str:
    """A copy of the .tflite ``model`` (its ``ModelT``) running ``ops`` from tensors ``inputs`` to ``outputs``,
    written to a temporary file whose path is returned."""
    import copy

    import flatbuffers

    m = copy.deepcopy(model)
    sg = m.subgraphs[0]
    names = [t.name.decode() for t in sg.tensors]
    sg.operators = ops
    sg.inputs = [names.index(n) for n in inputs]
    sg.outputs = [names.index(n) for n in outputs]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    fd, path = tempfile.mkstemp(suffix=".tflite")
    Path(path).write_bytes(b.Output())
    return path


def main(tflite: str) -> None:
    import torch
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import flexbuffers
    from safetensors.numpy import save_file

    from privfer.models.attnmesh import CROPS, TAPS, TRUNK

    digest = hashlib.sha256(Path(tflite).read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"{tflite}: SHA-256 {digest}, expected {SOURCE_SHA256} "
                 "(face_landmark_with_attention.tflite of mediapipe 0.10.21)")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(Path(tflite).read_bytes(), 0))
    sg = model.subgraphs[0]
    tname = lambda i: sg.tensors[i].name.decode()  # noqa: E731
    custom = {i: model.operatorCodes[op.opcodeIndex].customCode.decode() for i, op in enumerate(sg.operators)
              if model.operatorCodes[op.opcodeIndex].customCode}
    matrices = [i for i, c in custom.items() if c == "Landmarks2TransformMatrix"]
    samplers = [i for i, c in custom.items() if c == "TransformTensorBilinear"]
    first, last = min(custom), max(samplers)
    refined = min(i for i, c in custom.items() if c == "TransformLandmarks")
    # each region: the custom op's settings, checked to be what privfer reimplements
    regions = []
    for name, m, s in zip(REGIONS, matrices, samplers):
        opts = flexbuffers.Loads(bytes(sg.operators[m].customOptions))
        src = tname(sg.operators[m].inputs[0])  # the landmarks, scaled from input to map pixels
        fmap, mat = (tname(i) for i in sg.operators[s].inputs)
        if fmap != "p_re_lu_3" or mat != tname(sg.operators[m].outputs[0]) or opts["target_rotation_radians"] != 0:
            sys.exit(f"{tflite}: region {name} is not cut as privfer expects")
        regions.append({"name": name, "crop": tname(sg.operators[s].outputs[0]), "landmarks": src,
                        "left_rotation_idx": int(opts["left_rotation_idx"]),
                        "right_rotation_idx": int(opts["right_rotation_idx"]),
                        "subset_idxs": [int(i) for i in opts["subset_idxs"]],
                        "output_width": int(opts["output_width"]), "output_height": int(opts["output_height"]),
                        "scale_x": float(opts["scale_x"]), "scale_y": float(opts["scale_y"])})
    if [r["crop"] for r in regions] != list(CROPS):
        sys.exit(f"{tflite}: crops {[r['crop'] for r in regions]}, expected {list(CROPS)}")

    # the trunk: face -> the 48x48 map and the landmark layer (run up to its landmarks, checked below)
    trunk = interpreter(cut(model, sg.operators[:first], ["input_1"], [*TRUNK, "output_mesh"]))
    x = reference_input()
    trunk.set_tensor(trunk.get_input_details()[0]["index"], x)
    trunk.invoke()
    layers, weights = layer_list(trunk, TRUNK)
    by_name = {d["name"]: d["index"] for d in trunk.get_tensor_details()}
    for suffix in ("Kernel", "Bias"):  # the landmark layer: a 3x3 convolution without padding, run by privfer itself
        w = trunk.get_tensor(by_name[f"output_mesh/{suffix}_dequantize"])
        weights[f"output_mesh/{suffix}"] = np.ascontiguousarray(
            (w.transpose(0, 3, 1, 2) if w.ndim == 4 else w).astype(np.float16))
    # the sub-networks: their crops -> the taps (and the lips' points, for the check below)
    stored = lambda i: model.buffers[sg.tensors[i].buffer].data is not None  # noqa: E731  (a constant)
    ops, have = [], {tname(i) for i in range(len(sg.tensors)) if stored(i)} | set(CROPS)
    for op in sg.operators[last + 1:refined]:  # the ops that run on the crops alone (not the matrices' rescaling)
        if all(tname(i) in have for i in op.inputs if i >= 0):
            ops.append(op)
            have |= {tname(i) for i in op.outputs}
    branch = interpreter(cut(model, ops, list(CROPS), [*TAPS, "conv_lips"]))
    crops = reference_crops()
    for d in branch.get_input_details():
        branch.set_tensor(d["index"], crops[d["name"]].transpose(0, 2, 3, 1))
    branch.invoke()
    branch_layers, branch_weights = layer_list(branch, TAPS)
    if set(weights) & set(branch_weights):
        sys.exit(f"{tflite}: trunk and sub-networks share weight names {sorted(set(weights) & set(branch_weights))}")
    weights.update(branch_weights)
    save_file(weights, str(OUT), metadata={
        "layers": json.dumps(layers), "taps": json.dumps(list(TRUNK)), "branch_layers": json.dumps(branch_layers),
        "branch_taps": json.dumps(list(TAPS)), "regions": json.dumps(regions), "source_sha256": digest,
        "source": "face_landmark_with_attention.tflite, mediapipe 0.10.21"})
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(layers)} + {len(branch_layers)} layers, "
          f"{len(weights)} tensors")

    from safetensors import safe_open

    from privfer.models.attnmesh import WEIGHTS_SHA256, AttentionMeshNet, crop, region_transform
    from privfer.models.facemesh import content_digest

    with safe_open(str(OUT), framework="pt") as f:
        content = content_digest(f)
    print(f"content SHA-256 {content}" + ("" if content == WEIGHTS_SHA256 else
                                           " (differs from privfer.models.attnmesh.WEIGHTS_SHA256: update it)"))
    net = AttentionMeshNet(OUT, sha256=None)
    get = lambda it, n: it.get_tensor({d["name"]: d["index"] for d in it.get_tensor_details()}[n])  # noqa: E731
    refs = {"landmarks": get(trunk, "output_mesh").reshape(1, 468, 3)}
    refs.update({t: get(branch, t).transpose(0, 3, 1, 2) for t in TAPS})
    with torch.no_grad():
        trunk_maps = net.trunk(torch.from_numpy(x).permute(0, 3, 1, 2))
        ours = {"landmarks": net.landmarks(trunk_maps[1])}
        env = net.run(net.branch_layers, net._branch_release, {k: torch.from_numpy(v) for k, v in crops.items()})
        ours.update({t: env[t] for t in TAPS})
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, **refs)
    for t, ref in refs.items():
        err = float(np.abs(ours[t].numpy() - ref).max())
        print(f"{t}: max |torch - tflite| = {err:.2e} (scale {np.abs(ref).max():.2f})")
        if err > 1e-3 * max(1.0, float(np.abs(ref).max())):
            sys.exit(f"{t}: torch network does not reproduce the interpreter")

    # the crops: the lips' sub-network on privfer's crop of the astronaut's lips must find the trunk's lips
    from skimage import data

    face = data.astronaut()[30:230, 140:300]  # her face, with the margin Face Mesh expects around it
    img = torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)[None].float() / 255
    img = torch.nn.functional.interpolate(img, size=(192, 192), mode="bilinear", align_corners=False)
    with torch.no_grad():
        fmap, p19 = net.trunk(img)
        points = net.landmarks(p19)[..., :2]
        a, b, t = region_transform(points * (fmap.shape[-1] / 192), regions[0])
        lips_crop = crop(fmap.contiguous(), a, b, t, 16, 16)
    for d in branch.get_input_details():
        branch.set_tensor(d["index"], lips_crop.numpy().transpose(0, 2, 3, 1))
    branch.invoke()
    q = torch.from_numpy(get(branch, "conv_lips").reshape(1, 80, 2).copy())
    # TransformLandmarks: points in a 4x finer grid of the crop, mapped back to input pixels
    q = q[..., :1] * a[:, None] + q[..., 1:] * b[:, None] + 4 * t[:, None]
    lips = points[:, regions[0]["subset_idxs"]]
    gap = float(torch.cdist(q, lips).amin(-1).mean())
    spread = float((lips - lips.mean(1, keepdim=True)).norm(dim=-1).mean())
    print(f"lips: refined points {gap:.2f} px from the trunk's nearest lip point (lip points spread {spread:.1f} px)")
    if gap > spread / 4:
        sys.exit("the lips' crop is not the region the sub-network expects")


if __name__ == "__main__":
    main(*sys.argv[1:])
