"""Convert MTCNN's ONet (``onet.pt`` of the facenet-pytorch 2.6.0 wheel, MIT licence) into the safetensors file that
privfer ships for its ONet front-end (``src/privfer/weights/onet.safetensors``).

Run once by a maintainer, never at run time. The wheel is only unpacked, not installed (facenet-pytorch would pull
torchvision)::

    pip download facenet-pytorch==2.6.0 --no-deps -d /tmp/fp && cd /tmp/fp && unzip -o facenet_pytorch-*.whl
    python tools/onet_weights.py /tmp/fp

The file holds ONet's four convolutions and their PReLUs (float32; the dense layers after them are not used), and
the source file's SHA-256 in its metadata. The script then runs facenet-pytorch's own ``ONet`` class on a fixed
input, saves its fourth convolution's output (after the PReLU) as a test fixture
(``tests/data/onet_reference.npz``) and checks that privfer's network gives the same tensor.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

SOURCE_SHA256 = "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"
KEEP = ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/privfer/weights/onet.safetensors"
#: facenet-pytorch's own ONet's fourth-layer tensor for the input ``reference_input()``: tests check privfer's network on it.
REFERENCE = ROOT / "tests/data/onet_reference.npz"


def reference_input() -> np.ndarray:
    """A fixed [2, 3, 48, 48] input, normalised as MTCNN's (pixel - 127.5) / 128."""
    return (np.random.default_rng(0).random((2, 3, 48, 48), dtype=np.float32) * 255 - 127.5) / 128


def facenet_onet(root: Path):
    """facenet-pytorch's ``ONet`` class, imported from the unpacked wheel without its package (whose imports
    need torchvision): ``models/mtcnn.py`` with a stand-in for the detection helpers it imports."""
    pkg = root / "facenet_pytorch"
    stub = types.ModuleType("facenet_pytorch.models.utils.detect_face")
    stub.detect_face = stub.extract_face = None
    for name in ("facenet_pytorch", "facenet_pytorch.models", "facenet_pytorch.models.utils"):
        sys.modules.setdefault(name, types.ModuleType(name)).__path__ = []
    sys.modules["facenet_pytorch.models.utils.detect_face"] = stub
    spec = importlib.util.spec_from_file_location("facenet_pytorch.models.mtcnn", pkg / "models" / "mtcnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ONet


def main(root: str) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = Path(root) / "facenet_pytorch" / "data" / "onet.pt"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"{src}: SHA-256 {digest}, expected {SOURCE_SHA256} (onet.pt of facenet-pytorch 2.6.0)")
    state = torch.load(src, weights_only=True)
    weights = {k: v.float().contiguous() for k, v in state.items() if k.split(".")[0] in KEEP}
    save_file(weights, str(OUT), metadata={"source_sha256": digest, "source": "data/onet.pt, facenet-pytorch 2.6.0"})
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(weights)} tensors")

    from privfer.models.facemesh import content_digest
    from privfer.models.onet import WEIGHTS_SHA256, ONetNet

    with safe_open(str(OUT), framework="pt") as f:
        ours_digest = content_digest(f)
    print(f"content SHA-256 {ours_digest}" + ("" if ours_digest == WEIGHTS_SHA256 else
                                               " (differs from privfer.models.onet.WEIGHTS_SHA256: update it)"))
    ref_net = facenet_onet(Path(root))(pretrained=False)
    ref_net.load_state_dict(state)
    x = torch.from_numpy(reference_input())
    with torch.no_grad():
        h = ref_net.pool3(ref_net.prelu3(ref_net.conv3(ref_net.pool2(ref_net.prelu2(ref_net.conv2(
            ref_net.pool1(ref_net.prelu1(ref_net.conv1(x)))))))))
        ref = ref_net.prelu4(ref_net.conv4(h)).numpy()
        ours = ONetNet(OUT, sha256=None).maps(x)[-1].numpy()
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, input=x.numpy(), prelu4=ref)
    err = float(np.abs(ours - ref).max())
    print(f"prelu4: max |privfer - facenet-pytorch| = {err:.2e} (scale {np.abs(ref).max():.2f})")
    if err > 1e-4 * max(1.0, float(np.abs(ref).max())):
        sys.exit("privfer's ONet does not reproduce facenet-pytorch's")


if __name__ == "__main__":
    main(*sys.argv[1:])
