"""Private inference end to end: sources, Analyzer, outputs (JSONL/CSV/aggregate), anonymisation, ONNX, CLI."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from privfer.cli import main
from privfer.infer.analyzer import Analyzer, FaceResult, FrameResult
from privfer.infer.bench import face_frames, write_face_video
from privfer.infer.outputs import anonymize_faces
from privfer.infer.sources import open_source
from privfer.models.io import load_model, save_model
from privfer.models.registry import build_model
from privfer.taxonomy import CLASSES, NEGATIVE

FPS = 10.0
N_FRAMES = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    net = build_model("fusion", 8)
    save_model(net, {"model": "fusion", "model_kwargs": {}, "classes": list(CLASSES), "input_size": 48,
                     "temperature": 1.5, "negative_threshold": 0.5}, d)
    return d


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """10 frames, 640x480, two real (astronaut) faces moving across a textured background."""
    return write_face_video(tmp_path_factory.mktemp("video") / "faces.avi", n=N_FRAMES, fps=FPS)


@pytest.fixture(scope="module")
def analyzer(model_dir) -> Analyzer:
    return Analyzer(model=str(model_dir))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return next(open_source("sample:astronaut").frames()).image


def predict(*args) -> int:
    return main(["predict", *map(str, args)])


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / float(aw * ah + bw * bh - w * h)


# ---------------------------------------------------------------- Python API

def test_analyze_returns_typed_results(analyzer, astronaut):
    r = analyzer.analyze(astronaut)
    assert isinstance(r, FrameResult) and r.frame == 0 and r.time_s is None
    assert len(r.faces) == 1
    f = r.faces[0]
    assert isinstance(f, FaceResult)
    assert isinstance(f.box, tuple) and len(f.box) == 4 and all(isinstance(v, int) for v in f.box)
    assert iou(f.box, (182, 58, 88, 120)) > 0.7  # the astronaut's face
    assert isinstance(f.score, float) and 0 < f.score <= 1
    assert len(f.landmarks) == 5 and all(len(p) == 2 for p in f.landmarks)
    assert list(f.probs) == list(CLASSES)
    assert sum(f.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert f.label == max(f.probs, key=f.probs.get)
    assert f.negative_score == pytest.approx(sum(p for c, p in f.probs.items() if c in NEGATIVE), abs=1e-5)
    assert f.negative_flag == (f.negative_score >= analyzer.model.threshold)
    # Temperature scaling: probabilities are softmax(logits / T) with the card's T = 1.5.
    assert analyzer.model.temperature == 1.5


def test_analyze_gray_rgba_16bit_and_path(analyzer, astronaut, tmp_path):
    ref = analyzer.analyze(astronaut).faces[0].box
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    deep = astronaut.astype(np.uint16) * 257
    for img in (gray, bgra, deep):
        faces = analyzer.analyze(img).faces
        assert len(faces) == 1 and iou(faces[0].box, ref) > 0.8, img.shape
    cv2.imwrite(str(tmp_path / "a16.png"), deep)
    r = analyzer.analyze(tmp_path / "a16.png")
    assert r.source == str(tmp_path / "a16.png") and len(r.faces) == 1


def test_huge_image_and_no_face(analyzer, astronaut):
    big = np.full((3000, 4000, 3), 127, np.uint8)
    big[1000:1512, 2000:2512] = astronaut
    faces = analyzer.analyze(big).faces
    assert len(faces) == 1 and iou(faces[0].box, (2182, 1058, 88, 120)) > 0.6
    assert analyzer.analyze(np.zeros((100, 120), np.uint8)).faces == []


def test_stream_every_and_tracking(model_dir, video, analyzer):
    results = list(Analyzer(model=analyzer.model, every=3).stream(str(video)))
    assert [r.frame for r in results] == [0, 3, 6, 9]
    assert [r.time_s for r in results] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert all(len(r.faces) == 2 for r in results)
    # Tracking between detections (detect_every=3) follows the faces the detector finds.
    detected = list(analyzer.stream(str(video)))
    tracked = list(Analyzer(model=analyzer.model, detect_every=3).stream(str(video)))
    assert len(tracked) == N_FRAMES
    for d, t in zip(detected, tracked):
        assert len(t.faces) == 2
        for f in d.faces:
            assert max(iou(f.box, g.box) for g in t.faces) > 0.7, (d.frame, f.box, [g.box for g in t.faces])


# ---------------------------------------------------------------- ONNX

def test_onnx_parity_and_export(model_dir, tmp_path):
    import onnxruntime as ort

    from privfer.infer.onnx import export_onnx, onnx_model

    loaded = load_model(model_dir)
    onnx = onnx_model(loaded)
    faces = np.random.default_rng(0).integers(0, 256, (7, 48, 48), dtype=np.uint8)
    for batch in (faces[:1], faces):
        assert np.abs(onnx.logits(batch) - loaded.logits(batch)).max() < 1e-4
        assert np.abs(onnx.probs(batch) - loaded.probs(batch)).max() < 1e-4
    assert np.abs(onnx.logits(faces, tta=True) - loaded.logits(faces, tta=True)).max() < 1e-4

    assert main(["export", str(model_dir), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = faces[:, None].astype(np.float32) / 255
    assert np.abs(sess.run(None, {"pixels": x})[0] - loaded.logits(faces)).max() < 1e-4
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["privfer_card"])["classes"] == list(CLASSES)
    path = export_onnx(loaded, tmp_path / "sub" / "m2.onnx")
    assert path.is_file()


def test_torch_and_onnxruntime_backends_agree(model_dir, astronaut, analyzer):
    a = Analyzer(model=str(model_dir), backend="torch").analyze(astronaut).faces[0]
    b = analyzer.analyze(astronaut).faces[0]
    assert a.box == b.box and a.label == b.label
    assert max(abs(a.probs[c] - b.probs[c]) for c in CLASSES) < 1e-4


# ---------------------------------------------------------------- CLI end to end

def test_predict_video_jsonl_every(model_dir, video, tmp_path):
    out = tmp_path / "r.jsonl"
    assert predict(video, "--model", model_dir, "--every", "3", "--out", out) == 0
    rows = jsonl(out)
    assert [r["frame"] for r in rows] == [0, 3, 6, 9]
    assert all(r["source"] == str(video) for r in rows)
    for r in rows:
        assert len(r["faces"]) == 2
        f = r["faces"][0]
        assert set(f) == {"box", "score", "landmarks", "probs", "label", "negative"}
        assert len(f["box"]) == 4 and set(f["negative"]) == {"score", "flag"} and list(f["probs"]) == list(CLASSES)


def test_predict_csv_one_row_per_face(model_dir, video, tmp_path, capsys):
    assert predict(video, "--model", model_dir, "--every", "5", "--format", "csv", "--min-face-size", "40") == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 4 and {r["frame"] for r in rows} == {"0", "5"}
    assert {"x", "y", "w", "h", "label", "negative_score", "negative_flag", "p_neutral", "left_eye_x"} <= set(rows[0])


def test_aggregate_has_no_boxes(model_dir, video, tmp_path):
    out = tmp_path / "agg.jsonl"
    assert predict(video, "--model", model_dir, "--aggregate", "0.5", "--out", out) == 0
    rows = jsonl(out)
    assert [(r["window_start_s"], r["window_end_s"]) for r in rows] == [(0.0, 0.5), (0.5, 1.0)]
    assert sum(r["frames"] for r in rows) == N_FRAMES and sum(r["faces"] for r in rows) == 2 * N_FRAMES
    for r in rows:
        assert set(r) == {"source", "window_start_s", "window_end_s", "frames", "faces", "negative_faces",
                          "negative_share", "counts"}
        assert sum(r["counts"].values()) == r["faces"]
    text = out.read_text()
    for word in ("box", "landmarks", "score\"", "probs"):
        assert word not in text
    # CSV aggregate: the same windows, no per-face columns.
    assert predict(video, "--model", model_dir, "--aggregate", "1", "--format", "csv", "--out", tmp_path / "a.csv") == 0
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert len(rows) == 1 and rows[0]["faces"] == str(2 * N_FRAMES) and "x" not in rows[0]


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_anonymized_annotation_changes_only_face_boxes(model_dir, tmp_path, mode):
    frame, _ = next(face_frames(1))
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), frame)
    out, ann = tmp_path / "r.jsonl", tmp_path / "ann.png"
    assert predict(src, "--model", model_dir, "--out", out, "--annotate", ann, "--anonymize", mode) == 0
    boxes = [f["box"] for f in jsonl(out)[0]["faces"]]
    assert len(boxes) == 2
    res = cv2.imread(str(ann))
    assert res.shape == frame.shape
    outside = np.ones(frame.shape[:2], bool)
    for x, y, w, h in boxes:
        inner = (slice(y + 1, y + h - 1), slice(x + 1, x + w - 1))  # inside the drawn outline
        diff = np.abs(res[inner].astype(int) - frame[inner].astype(int))
        assert diff.mean() > 8, "face not anonymised"
        if mode == "blur":  # the face's detail is gone: little high-frequency energy left in the box
            lap = lambda im: cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()  # noqa: E731
            assert lap(res[inner]) < 0.2 * lap(frame[inner])
        else:  # a few flat blocks across the face
            assert len(np.unique(res[inner].reshape(-1, 3), axis=0)) <= 64
        outside[y:y + h, x:x + w] = False
        outside[max(0, y - 40):y, max(0, x - 10):x + 320] = False  # the label drawn above the box
        outside[y + h:y + h + 40, max(0, x - 10):x + 320] = False  # ... or below it
    assert outside.mean() > 0.5
    assert np.array_equal(res[outside], frame[outside]), "pixels outside the face boxes changed"


def test_anonymize_faces_reads_only_inside_box():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    for mode in ("blur", "pixelate"):
        a, b = img.copy(), img.copy()
        b[:, :100] = 0  # change everything left of the box
        anonymize_faces(a, [(120, 40, 90, 110)], mode)
        anonymize_faces(b, [(120, 40, 90, 110)], mode)
        assert np.array_equal(a[40:150, 120:210], b[40:150, 120:210])
        assert np.array_equal(a[:, 210:], img[:, 210:])


def test_no_anonymize_must_be_explicit_and_annotated_video(model_dir, video, tmp_path, capsys):
    ann = tmp_path / "ann.avi"
    assert predict(video, "--model", model_dir, "--every", "2", "--annotate", ann, "--summary",
                   "--out", tmp_path / "r.jsonl") == 0
    err = capsys.readouterr().err
    assert "faces blurred" in err and "5 frames" in err and "skipped: 0" in err
    cap = cv2.VideoCapture(str(ann))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 5
    cap.release()
    assert predict(video, "--model", model_dir, "--every", "5", "--annotate", ann, "--no-anonymize", "--summary",
                   "--out", tmp_path / "r.jsonl") == 0
    assert "faces visible" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict(video, "--model", model_dir, "--anonymize", "blur", "--no-anonymize")


def test_no_files_besides_outputs(model_dir, video, tmp_path, monkeypatch):
    work, private_tmp, cache = tmp_path / "cwd", tmp_path / "tmp", Path(os.environ["PRIVFER_CACHE"])
    for d in (work, private_tmp):
        d.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    home_cache = Path.home() / ".cache"
    before = {p: sorted(os.listdir(p)) if p.is_dir() else None for p in (cache, home_cache)}
    assert predict(video, "--model", model_dir, "--every", "4", "--out", "out/r.jsonl", "--annotate", "out/a.avi",
                   "--backend", "onnxruntime") == 0
    assert predict("sample:astronaut", "--model", model_dir, "--out", "out/s.csv", "--format", "csv",
                   "--annotate", "out/s.png") == 0
    assert sorted(os.listdir(work)) == ["out"]
    assert sorted(os.listdir(work / "out")) == ["a.avi", "r.jsonl", "s.csv", "s.png"]
    assert os.listdir(private_tmp) == []
    assert {p: sorted(os.listdir(p)) if p.is_dir() else None for p in (cache, home_cache)} == before


def test_folder_with_corrupt_image_returns_the_others(model_dir, astronaut, tmp_path, capsys):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "a_gray.png"), cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(d / "b_rgba.png"), cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(d / "sub" / "c_16bit.png"), astronaut.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "sub" / "d_empty.jpg"), np.full((64, 64, 3), 200, np.uint8))
    good = (d / "sub" / "d_empty.jpg").read_bytes()
    (d / "sub" / "e_corrupt.jpg").write_bytes(good[: len(good) // 2])
    (d / "notes.txt").write_text("not an image")
    out = tmp_path / "r.jsonl"
    assert predict(d, "--model", model_dir, "--out", out, "--summary", "--annotate", tmp_path / "ann") == 0
    rows = jsonl(out)
    assert [Path(r["source"]).name for r in rows] == ["a_gray.png", "b_rgba.png", "c_16bit.png", "d_empty.jpg"]
    assert [len(r["faces"]) for r in rows] == [1, 1, 1, 0]  # no face: an empty list, not an error
    err = capsys.readouterr().err
    assert "e_corrupt.jpg" in err and "skipped: 1 unreadable input" in err
    written = sorted(p.relative_to(tmp_path / "ann").as_posix() for p in (tmp_path / "ann").rglob("*") if p.is_file())
    assert written == ["a_gray.png", "b_rgba.png", "sub/c_16bit.png", "sub/d_empty.jpg"]
    # without --summary the count of skipped inputs is still reported
    assert predict(d, "--model", model_dir, "--out", out) == 0
    assert "skipped 1 unreadable input" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["garbage", "truncated", "missing", "camera", "sample"])
def test_unusable_sources_exit_2_with_one_line(model_dir, video, tmp_path, capsys, case):
    if case == "garbage":
        src = tmp_path / "bad.mp4"
        src.write_bytes(b"not a video at all" * 100)
    elif case == "truncated":
        src = tmp_path / "cut.avi"
        data = video.read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif case == "missing":
        src = tmp_path / "missing.mp4"
    elif case == "camera":
        src = "97"
    else:
        src = "sample:nope"
    out = tmp_path / "r.jsonl"
    assert predict(src, "--model", model_dir, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("privfer: error: "), err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sample_astronaut_summary(model_dir, capsys):
    assert predict("sample:astronaut", "--model", model_dir, "--summary") == 0
    cap = capsys.readouterr()
    rows = [json.loads(line) for line in cap.out.splitlines()]
    assert len(rows) == 1 and rows[0]["source"] == "sample:astronaut" and len(rows[0]["faces"]) == 1
    assert "1 image analysed" in cap.err and "1 face" in cap.err and "outputs: stdout" in cap.err
