"""Face detectors (privfer.faces.detect) and alignment (privfer.faces.align) on the astronaut photo and synthetic images."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from privfer.errors import PrivferError
from privfer.faces.align import align_face
from privfer.faces.detect import CenterFaceDetector, Face, HaarDetector, SSDDetector, make_detector

# Eileen Collins' face in skimage.data.astronaut() (512x512), measured: CenterFace's box is about
# (182-185, 58-63, 83-88 wide, 111-120 tall), Haar's (177, 66, 95, 95).
FACE_BOX = (183, 60, 86, 115)
LEFT_EYE, RIGHT_EYE = (205.0, 102.0), (247.0, 105.0)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def centerface() -> CenterFaceDetector:
    return make_detector("centerface")


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    return make_detector("haar")


def test_astronaut_one_face_both_detectors(astronaut, centerface, haar):
    cf, hr = centerface.detect(astronaut), haar.detect(astronaut)
    assert len(cf) == 1 and len(hr) == 1
    assert iou(cf[0].box, FACE_BOX) > 0.7
    assert iou(cf[0].box, hr[0].box) > 0.5
    assert 0.5 < cf[0].score <= 1.0
    assert hr[0].landmarks is None


def test_centerface_landmarks(astronaut, centerface):
    (face,) = centerface.detect(astronaut)
    lm = face.landmarks
    assert lm.shape == (5, 2) and lm.dtype == np.float32 and not lm.flags.writeable
    x, y, w, h = face.box
    assert np.all((lm[:, 0] > x) & (lm[:, 0] < x + w) & (lm[:, 1] > y) & (lm[:, 1] < y + h))
    left_eye, right_eye, nose, left_mouth, right_mouth = lm
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]  # image-left first
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    assert np.hypot(*(left_eye - LEFT_EYE)) < 6 and np.hypot(*(right_eye - RIGHT_EYE)) < 6


@pytest.mark.parametrize("kind", ["gray", "bgra", "uint16"])
def test_input_formats_give_the_same_face(astronaut, centerface, kind):
    img = {
        "gray": lambda: cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY),
        "bgra": lambda: cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA),
        "uint16": lambda: astronaut.astype(np.uint16) * 257,
    }[kind]()
    faces = centerface.detect(img)
    assert len(faces) == 1 and iou(faces[0].box, FACE_BOX) > 0.7


def test_huge_image_maps_back_to_original_coords(astronaut, centerface, haar):
    big = np.full((3000, 4000, 3), 128, np.uint8)
    k, ox, oy = 5, 700, 200
    big[oy:oy + 512 * k, ox:ox + 512 * k] = cv2.resize(astronaut, (512 * k, 512 * k), interpolation=cv2.INTER_LINEAR)
    x, y, w, h = FACE_BOX
    expected = (ox + k * x, oy + k * y, k * w, k * h)
    for det in (centerface, haar):
        faces = det.detect(big)
        assert len(faces) == 1, det
        assert iou(faces[0].box, expected) > 0.5, (det, faces[0].box, expected)
    lm = centerface.detect(big)[0].landmarks
    assert np.hypot(*(lm[0] - (ox + k * LEFT_EYE[0], oy + k * LEFT_EYE[1]))) < 6 * k


def test_blank_and_empty_images_give_no_faces(centerface, haar):
    for det in (centerface, haar):
        assert det.detect(np.zeros((480, 640, 3), np.uint8)) == []
        assert det.detect(np.full((100, 100), 255, np.uint8)) == []
        assert det.detect(np.zeros((0, 0), np.uint8)) == []


def test_face_cut_by_the_border_is_clipped(astronaut, centerface):
    x, y, w, h = FACE_BOX
    img = np.ascontiguousarray(astronaut[:, x + w // 2:])  # the left half of the face is cut off
    faces = centerface.detect(img)
    assert len(faces) == 1
    fx, fy, fw, fh = faces[0].box
    assert 0 <= fx <= 2 and fx + fw <= img.shape[1] and fy >= 0 and fy + fh <= img.shape[0]


def test_sorting_max_faces_and_min_face_size(astronaut):
    head = astronaut[30:210, 135:315]
    scene = np.full((480, 640, 3), 90, np.uint8)
    for side, x in ((200, 10), (140, 260), (90, 450)):
        scene[100:100 + side, x:x + side] = cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA)
    faces = make_detector("centerface").detect(scene)
    assert len(faces) == 3
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    top2 = make_detector("centerface", max_faces=2).detect(scene)
    assert top2 == faces[:2]
    big_only = make_detector("centerface", min_face_size=55).detect(scene)  # faces are ~95, 67 and 43 px wide
    assert len(big_only) == 2 and all(min(f.box[2:]) >= 55 for f in big_only)
    assert make_detector("centerface", score_threshold=0.999).detect(scene) == []


def test_min_face_size_sets_the_detection_scale(astronaut, centerface):
    fast = make_detector("centerface", min_face_size=48)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:, 64:576] = cv2.resize(astronaut, (512, 480))
    a, b = centerface.detect(frame), fast.detect(frame)
    assert len(a) == len(b) == 1 and iou(a[0].box, b[0].box) > 0.7


def _fake_ssd(path) -> None:
    """An ONNX model with SSD's [1, 1, N, 7] output: two fixed detections, scores 0.9 and 0.3."""
    import onnx
    from onnx import TensorProto, helper

    dets = np.array([[[[0, 1, 0.9, 0.1, 0.2, 0.3, 0.5], [0, 1, 0.3, 0.5, 0.5, 0.6, 0.6]]]], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=1),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "dets"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "fake_ssd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 300, 300])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 2, 7])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
         helper.make_tensor("dets", TensorProto.FLOAT, dets.shape, dets.ravel())],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_ssd_output_decoding(tmp_path):
    model = tmp_path / "fake_ssd.onnx"
    _fake_ssd(model)
    det = make_detector(f"ssd:{model}")
    assert isinstance(det, SSDDetector)
    faces = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert faces == [Face((64, 96, 128, 144), pytest.approx(0.9), None)]
    assert make_detector(f"ssd:{model}", score_threshold=0.2, min_face_size=0).detect(np.zeros((1000, 2000), np.uint8)) \
        == [Face((200, 200, 400, 300), pytest.approx(0.9)), Face((1000, 500, 200, 100), pytest.approx(0.3))]


@pytest.mark.parametrize("spec", ["nope", "yunet", "yunet:/missing.onnx", "ssd:/missing.caffemodel",
                                  "centerface:/missing.onnx", "haar:/missing.xml", "yunet:model.txt"])
def test_make_detector_errors(spec):
    with pytest.raises(PrivferError) as e:
        make_detector(spec)
    assert "\n" not in str(e.value)


def test_invalid_model_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    lone = tmp_path / "res10.caffemodel"
    lone.write_bytes(b"x")
    xml = tmp_path / "cascade.xml"
    xml.write_text("<opencv_storage></opencv_storage>")
    for spec in (f"yunet:{junk}", f"ssd:{junk}", f"centerface:{junk}", f"ssd:{lone}", f"haar:{xml}"):
        with pytest.raises(PrivferError) as e:
            make_detector(spec)
        msg = str(e.value)
        assert "\n" not in msg and str(tmp_path) in msg, spec


def test_bad_options_are_errors():
    with pytest.raises(PrivferError):
        make_detector("haar", max_faces=0)
    with pytest.raises(PrivferError):
        make_detector("haar", max_side=8)


# --- align_face ---------------------------------------------------------------------------------


def _rotate(points, M) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    return pts @ M[:, :2].T + M[:, 2]


def test_align_levels_a_rotated_eye_line():
    img = np.zeros((200, 200), np.uint8)
    M = cv2.getRotationMatrix2D((100, 100), 20, 1.0)
    lm = _rotate([(75, 90), (125, 90), (100, 110), (80, 130), (120, 130)], M)
    for px, py in lm[:2]:
        cv2.circle(img, (round(px), round(py)), 4, 255, -1)
    out = align_face(img, (40, 40, 120, 120), lm, size=96)
    n, _, stats, centroids = cv2.connectedComponentsWithStats((out > 100).astype(np.uint8))
    assert n == 3  # background + two eyes
    (lx, ly), (rx, ry) = sorted(centroids[1:].tolist())
    assert abs(ly - ry) < 1.0 and rx - lx > 30


def test_align_rotated_astronaut_matches_upright(astronaut):
    x, y, w, h = FACE_BOX
    centre = (x + w / 2, y + h / 2)
    lm = np.array([LEFT_EYE, RIGHT_EYE, (224, 125), (205, 142), (241, 145)])
    M = cv2.getRotationMatrix2D(centre, 20, 1.0)
    rotated = cv2.warpAffine(astronaut, M, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    upright = align_face(astronaut, FACE_BOX, lm, size=64).astype(np.float32)
    aligned = align_face(rotated, FACE_BOX, _rotate(lm, M), size=64).astype(np.float32)
    unaligned = align_face(rotated, FACE_BOX, None, size=64).astype(np.float32)
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr(upright, aligned) > 0.95 > corr(upright, unaligned)


def test_align_output_and_box_outside_the_image(astronaut):
    for img in (astronaut, cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)):
        out = align_face(img, FACE_BOX)
        assert out.shape == (48, 48) and out.dtype == np.uint8
    out = align_face(astronaut, (-40, 450, 120, 120), size=64, margin=0.2)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert align_face(np.zeros((30, 40), np.uint8)).shape == (48, 48)
