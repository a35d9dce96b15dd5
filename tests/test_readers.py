"""Dataset readers on small synthetic copies written in each dataset's real published layout."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from privfer.cli import main
from privfer.data import load_faces, read_dataset
from privfer.errors import PrivferError
from privfer.taxonomy import CLASSES, CLASSES_7

RNG = np.random.default_rng(0)


def write_image(path: Path, shape: tuple[int, ...] = (48, 48), seed: int | None = None) -> np.ndarray:
    """Write a random image (distinct per call unless ``seed`` repeats) and return its pixels."""
    rng = RNG if seed is None else np.random.default_rng(seed)
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return img


def pixel_string(img: np.ndarray) -> str:
    return " ".join(str(v) for v in img.ravel())


# ---------------------------------------------------------------- FER2013 CSV


def write_fer2013_csv(path: Path, rows: list[tuple[int, str | None]], header: str = "emotion,pixels,Usage"):
    """Rows ``(emotion code, Usage or None)``; returns the pixel arrays in row order."""
    imgs = [RNG.integers(0, 256, size=(48, 48), dtype=np.uint8) for _ in rows]
    lines = [header]
    for (code, usage), img in zip(rows, imgs):
        lines.append(",".join([str(code), pixel_string(img)] + ([usage] if usage else [])))
    path.write_text("\n".join(lines) + "\n")
    return imgs


def test_fer2013_csv_splits_labels_and_lazy_pixels(tmp_path):
    csv_path = tmp_path / "fer2013.csv"
    imgs = write_fer2013_csv(csv_path, [(0, "Training"), (3, "Training"), (6, "PublicTest"), (5, "PrivateTest")])
    train = read_dataset(f"fer2013:{tmp_path}@train")
    assert [s.label for s in train.samples] == ["anger", "happiness"]
    assert [s.source for s in train.samples] == [f"{csv_path}:2", f"{csv_path}:3"]
    assert train.classes == CLASSES_7
    np.testing.assert_array_equal(train.samples[1].load(), imgs[1])
    assert train.samples[1].load().dtype == np.uint8
    val = read_dataset(f"fer2013:{csv_path}@val")  # the csv file itself as root
    assert [(s.label, s.split) for s in val.samples] == [("neutral", "val")]
    everything = read_dataset(f"fer2013:{tmp_path}@all")
    assert [s.split for s in everything.samples] == ["train", "train", "val", "test"]
    fs = load_faces(f"fer2013:{tmp_path}@test")
    np.testing.assert_array_equal(fs.pixels[0], imgs[3])
    assert fs.orig_sizes.tolist() == [[48, 48]]


def test_fer2013_csv_without_usage_is_all_train(tmp_path):
    write_fer2013_csv(tmp_path / "fer2013.csv", [(1, None), (2, None)], header="emotion,pixels")
    res = read_dataset(f"fer2013:{tmp_path}@train")
    assert [(s.label, s.split) for s in res.samples] == [("disgust", "train"), ("fear", "train")]
    with pytest.raises(PrivferError, match="no split 'val'.*no Usage column"):
        read_dataset(f"fer2013:{tmp_path}@val")


def test_fer2013_csv_wrong_header(tmp_path):
    csv_path = tmp_path / "fer2013.csv"
    write_fer2013_csv(csv_path, [(0, "Training")], header="label,pixels,Usage")
    with pytest.raises(PrivferError, match=r"fer2013\.csv: expected header emotion,pixels,Usage, got 'label,pixels"):
        read_dataset(f"fer2013:{csv_path}")


def test_fer2013_csv_wrong_pixel_count_names_file_and_line(tmp_path):
    csv_path = tmp_path / "fer2013.csv"
    write_fer2013_csv(csv_path, [(0, "Training")])
    with open(csv_path, "a") as fh:
        fh.write("3," + " ".join(["7"] * 2000) + ",Training\n")
    with pytest.raises(PrivferError, match=rf"{csv_path}:3: expected 2304 pixel values \(48x48\), got 2000"):
        read_dataset(f"fer2013:{csv_path}")


def test_fer2013_csv_bad_emotion_code_names_line(tmp_path):
    csv_path = tmp_path / "fer2013.csv"
    write_fer2013_csv(csv_path, [(0, "Training"), (9, "Training")])
    with pytest.raises(PrivferError, match=rf"{csv_path}:3: unknown fer2013 class code"):
        read_dataset(f"fer2013:{csv_path}")


# ---------------------------------------------------------------- FER+ fer2013new.csv


FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def test_ferplus_new_csv_aligned_with_fer2013(tmp_path):
    imgs = write_fer2013_csv(tmp_path / "fer2013.csv",
                             [(0, "Training"), (3, "Training"), (6, "Training"), (4, "PublicTest")])
    (tmp_path / "fer2013new.csv").write_text("\n".join([
        FERPLUS_HEADER,
        "Training,fer0000000.png,0,0,0,0,8,2,0,0,0,0",   # anger
        "Training,,0,0,0,0,0,0,0,0,0,10",                # discarded by FER+
        "Training,fer0000002.png,2,0,0,0,0,0,0,0,8,0",   # unknown wins
        "PublicTest,fer0000003.png,4,0,0,6,0,0,0,0,0,0",  # sadness
    ]) + "\n")
    res = read_dataset(f"ferplus:{tmp_path}@all")
    assert [(s.label, s.split) for s in res.samples] == [("anger", "train"), ("sadness", "val")]
    assert res.samples[1].source == f"{tmp_path / 'fer2013.csv'}:5"
    np.testing.assert_array_equal(res.samples[1].load(), imgs[3])
    assert res.dropped == {"discarded by FER+ (empty Image name)": 1, "unknown or not-a-face wins": 1}
    assert res.classes == CLASSES
    train = read_dataset(f"ferplus:{tmp_path}@train")
    assert [s.label for s in train.samples] == ["anger"]
    votes = read_dataset(f"ferplus:{tmp_path}@train", labels="votes")
    assert len(votes.samples) == 2  # the unknown-heavy face keeps its 2 neutral votes as a distribution
    np.testing.assert_allclose(votes.samples[1].votes, np.eye(8, dtype=np.float32)[0])


def test_ferplus_new_csv_misaligned(tmp_path):
    write_fer2013_csv(tmp_path / "fer2013.csv", [(0, "Training"), (1, "Training")])
    (tmp_path / "fer2013new.csv").write_text(FERPLUS_HEADER + "\nTraining,fer0000000.png,0,0,0,0,8,2,0,0,0,0\n")
    with pytest.raises(PrivferError, match="1 data rows but .*fer2013.csv has 2"):
        read_dataset(f"ferplus:{tmp_path}@train")


def test_ferplus_new_csv_needs_fer2013_beside(tmp_path):
    (tmp_path / "fer2013new.csv").write_text(FERPLUS_HEADER + "\n")
    with pytest.raises(PrivferError, match=r"fer2013\.csv: missing"):
        read_dataset(f"ferplus:{tmp_path}@train")


# ---------------------------------------------------------------- AffectNet

AFFECTNET_HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def landmarks68(offset: float = 0.0) -> str:
    pts = [(float(i) + offset, float(2 * i) + offset) for i in range(68)]
    return ";".join(f"{x:.2f};{y:.2f}" for x, y in pts)


def test_affectnet_file_lists(tmp_path):
    images = tmp_path / "Manually_Annotated" / "Manually_Annotated_Images"
    rows = [("689/a.jpg", 1), ("689/b.jpg", 7), ("12/c.jpg", 8), ("12/d.jpg", 9), ("12/e.jpg", 10), ("12/f.jpg", 0)]
    for name, _ in rows:
        write_image(images / name, (80, 60, 3))
    lists = tmp_path / "Manually_Annotated_file_lists"
    lists.mkdir()
    lines = [AFFECTNET_HEADER] + [f'{n},10,12,40,44,"{landmarks68()}",{c},0.5,-0.2' for n, c in rows[:5]]
    (lists / "training.csv").write_text("\n".join(lines) + "\n")
    # validation.csv without a header row, as some copies have it
    (lists / "validation.csv").write_text(f"12/f.jpg,0,0,60,80,,{rows[5][1]},0,0\n")

    res = read_dataset(f"affectnet:{tmp_path}@train")
    assert [s.label for s in res.samples] == ["happiness", "contempt"]
    assert res.samples[0].source == str(images / "689" / "a.jpg")
    assert res.samples[0].box == (10, 12, 40, 44)
    lm = res.samples[0].landmarks
    assert lm.shape == (5, 2)
    np.testing.assert_allclose(lm[0], [38.5, 77.0])  # mean of points 36-41
    np.testing.assert_allclose(lm[2], [30.0, 60.0])  # nose tip, point 30
    np.testing.assert_allclose(lm[4], [54.0, 108.0])  # right mouth corner, point 54
    assert res.dropped == {"expression None (8)": 1, "expression Uncertain (9)": 1, "expression Non-Face (10)": 1}
    assert res.classes == CLASSES
    val = read_dataset(f"affectnet:{tmp_path}@val")
    assert [(s.label, s.split, s.landmarks) for s in val.samples] == [("neutral", "val", None)]
    with pytest.raises(PrivferError, match="no split 'test' .*no public test set.*known: train, val, all"):
        read_dataset(f"affectnet:{tmp_path}@test")
    fs = load_faces(f"affectnet:{tmp_path}@all")
    assert len(fs) == 3 and fs.orig_sizes.tolist() == [[80, 60]] * 3


def test_affectnet_wrong_header_and_bad_code(tmp_path):
    (tmp_path / "training.csv").write_text("path,x,y,w,h,lm,expr,v,a\n")
    with pytest.raises(PrivferError, match=r"training\.csv: expected header subDirectory_filePath"):
        read_dataset(f"affectnet:{tmp_path}@train")
    write_image(tmp_path / "Manually_Annotated_Images" / "1" / "a.jpg")
    (tmp_path / "training.csv").write_text(AFFECTNET_HEADER + "\n1/a.jpg,0,0,48,48,,11,0,0\n")
    with pytest.raises(PrivferError, match=r"training\.csv:2: unknown affectnet class code 11"):
        read_dataset(f"affectnet:{tmp_path}@train")


def test_affectnet_folder_variant(tmp_path):
    write_image(tmp_path / "train" / "1" / "x.jpg")
    write_image(tmp_path / "train" / "contempt" / "y.png")
    write_image(tmp_path / "val" / "6" / "z.jpg")
    res = read_dataset(f"affectnet:{tmp_path}@all")
    assert sorted((s.split, s.label) for s in res.samples) == [
        ("train", "contempt"), ("train", "happiness"), ("val", "anger")]
    assert res.classes == CLASSES
    with pytest.raises(PrivferError, match="no split 'test'.*known: train, val, all"):
        read_dataset(f"affectnet:{tmp_path}@test")


# ---------------------------------------------------------------- ExpW


def test_expw(tmp_path):
    write_image(tmp_path / "image" / "origin" / "afraid_African_214.jpg", (200, 300, 3))
    write_image(tmp_path / "image" / "origin" / "happy_man_1.jpg", (200, 300, 3))
    (tmp_path / "label").mkdir()
    (tmp_path / "label" / "label.lst").write_text(
        "afraid_African_214.jpg 0 28 113 226 141 22.9863 2\n"
        "afraid_African_214.jpg 1 30 10 60 70 5.5 6\n"
        "happy_man_1.jpg 0 5 6 50 60 40.1 3\n")
    res = read_dataset(f"expw:{tmp_path}@all")
    assert [(s.label, s.box) for s in res.samples] == [
        ("fear", (113, 28, 113, 113)), ("neutral", (10, 30, 50, 40)), ("happiness", (6, 5, 44, 55))]
    assert res.samples[0].source == str(tmp_path / "image" / "origin" / "afraid_African_214.jpg")
    assert res.classes == CLASSES_7
    with pytest.raises(PrivferError, match="ExpW has no split 'train'.*known: all"):
        read_dataset(f"expw:{tmp_path}@train")
    fs = load_faces(f"expw:{tmp_path}@all")
    assert len(fs) == 3 and fs.pixels.shape == (3, 48, 48)


def test_expw_malformed_line_and_missing_label_file(tmp_path):
    (tmp_path / "origin").mkdir()
    with pytest.raises(PrivferError, match=r"label/label\.lst \(ExpW labels\)"):
        read_dataset(f"expw:{tmp_path}@all")
    (tmp_path / "label.lst").write_text("a.jpg 0 1 2 3 4 5.0 1\nb.jpg 0 1 2 3\n")
    with pytest.raises(PrivferError, match=r"label\.lst:2: expected 8 fields"):
        read_dataset(f"expw:{tmp_path}@all")


# ---------------------------------------------------------------- RAF-DB


def write_rafdb(root: Path) -> None:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 5\ntrain_00002.jpg 1\ntest_0001.jpg 7\n")
    for stem in ("train_00001", "train_00002", "test_0001"):
        write_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", (100, 100, 3))


def test_rafdb(tmp_path):
    write_rafdb(tmp_path)
    res = read_dataset(f"rafdb:{tmp_path}@train")
    assert [(Path(s.source).name, s.label) for s in res.samples] == [
        ("train_00001_aligned.jpg", "sadness"), ("train_00002_aligned.jpg", "surprise")]
    test = read_dataset(f"rafdb:{tmp_path}@test")
    assert [(s.label, s.split) for s in test.samples] == [("neutral", "test")]
    assert len(read_dataset(f"rafdb:{tmp_path}@all").samples) == 3
    with pytest.raises(PrivferError, match="RAF-DB has no split 'val'.*known: train, test, all"):
        read_dataset(f"rafdb:{tmp_path}@val")
    assert load_faces(f"rafdb:{tmp_path}@all").orig_sizes.tolist() == [[100, 100]] * 3


def test_rafdb_missing_aligned_folder(tmp_path):
    write_rafdb(tmp_path)
    (tmp_path / "Image" / "aligned").rename(tmp_path / "Image" / "original")
    with pytest.raises(PrivferError, match=r"Image/aligned: missing folder"):
        read_dataset(f"rafdb:{tmp_path}@train")


# ---------------------------------------------------------------- CK+


def test_ckplus(tmp_path):
    for cls, name in [("surprise", "S010_002_00000014.png"), ("contempt", "S138_008_00000007.png"),
                      ("happy", "S010_006_00000015.png"), ("anger", "S011_004_00000019.png")]:
        write_image(tmp_path / cls / name)
    res = read_dataset(f"ckplus:{tmp_path}@all")
    assert res.classes == ("happiness", "surprise", "anger", "contempt")  # canonical order, only those present
    assert {Path(s.source).name: (s.label, s.subject) for s in res.samples} == {
        "S010_002_00000014.png": ("surprise", "S010"), "S138_008_00000007.png": ("contempt", "S138"),
        "S010_006_00000015.png": ("happiness", "S010"), "S011_004_00000019.png": ("anger", "S011")}
    assert {s.split for s in res.samples} == {"all"}
    with pytest.raises(PrivferError, match="CK\\+ has no split 'train'"):
        read_dataset(f"ckplus:{tmp_path}@train")
    fs = load_faces(f"ckplus:{tmp_path}@all")
    assert sorted(fs.subjects.tolist()) == ["S010", "S010", "S011", "S138"]


# ---------------------------------------------------------------- JAFFE


def test_jaffe(tmp_path):
    write_image(tmp_path / "jaffe" / "KA.AN1.39.tiff", (256, 256))
    write_image(tmp_path / "jaffe" / "KM.HA3.6.tiff", (256, 256))
    write_image(tmp_path / "NA.SU2.222.jpg", (256, 256))
    (tmp_path / "README").write_text("The JAFFE images may be used only for non-commercial research.\n")
    write_image(tmp_path / "jaffe" / "thumbnail.png")  # not a JAFFE name: ignored
    res = read_dataset(f"jaffe:{tmp_path}@all")
    assert res.needs_detection is True
    assert res.classes == CLASSES_7
    assert sorted((Path(s.source).name, s.label, s.subject) for s in res.samples) == [
        ("KA.AN1.39.tiff", "anger", "KA"), ("KM.HA3.6.tiff", "happiness", "KM"), ("NA.SU2.222.jpg", "surprise", "NA")]
    with pytest.raises(PrivferError, match="JAFFE has no split 'test'"):
        read_dataset(f"jaffe:{tmp_path}@test")


def test_jaffe_unknown_code_names_file(tmp_path):
    write_image(tmp_path / "KA.XX1.40.tiff")
    with pytest.raises(PrivferError, match=r"KA\.XX1\.40\.tiff: unknown jaffe class code 'XX'"):
        read_dataset(f"jaffe:{tmp_path}@all")


# ---------------------------------------------------------------- generic class folders


def test_folder_class_tree_and_split_tree(tmp_path):
    flat = tmp_path / "flat"
    write_image(flat / "Angry" / "1.jpg")
    write_image(flat / "neutral" / "2.png")
    write_image(flat / "neutral" / "sub" / "3.png")
    (flat / "neutral" / "notes.txt").write_text("not an image")
    res = read_dataset(f"folder:{flat}@all")
    assert res.classes == ("neutral", "anger")
    assert sorted((Path(s.source).name, s.label, s.split) for s in res.samples) == [
        ("1.jpg", "anger", "all"), ("2.png", "neutral", "all"), ("3.png", "neutral", "all")]
    with pytest.raises(PrivferError, match="no split 'train' \\(no train/ val/ test/ folders\\); known: all"):
        read_dataset(f"folder:{flat}@train")

    split = tmp_path / "split"
    write_image(split / "train" / "happy" / "a.jpg")
    write_image(split / "test" / "sad" / "b.jpg")
    assert [(s.label, s.split) for s in read_dataset(f"folder:{split}@test").samples] == [("sadness", "test")]
    assert len(read_dataset(f"folder:{split}@all").samples) == 2
    with pytest.raises(PrivferError, match="no split 'val'; known: train, test, all"):
        read_dataset(f"folder:{split}@val")


def test_folder_unknown_class_name(tmp_path):
    write_image(tmp_path / "happy" / "a.jpg")
    write_image(tmp_path / "bored" / "b.jpg")
    with pytest.raises(PrivferError, match=r"bored: unknown class name 'bored'; known: .*happy"):
        read_dataset(f"folder:{tmp_path}@all")


def test_missing_root_and_missing_folder(tmp_path):
    with pytest.raises(PrivferError, match="dataset path does not exist"):
        read_dataset(f"folder:{tmp_path / 'nope'}@all")
    with pytest.raises(PrivferError, match="no class folders"):
        read_dataset(f"folder:{tmp_path}@all")


# ---------------------------------------------------------------- unreadable images and the CLI


def truncated_dataset(root: Path) -> Path:
    write_image(root / "happy" / "ok.jpg")
    write_image(root / "sad" / "ok.png")
    bad = root / "sad" / "cut.jpg"
    write_image(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    return bad


def test_truncated_image_skipped_and_counted(tmp_path):
    truncated_dataset(tmp_path)
    fs = load_faces(f"folder:{tmp_path}@all")
    assert len(fs) == 2
    assert fs.dropped == {"unreadable image": 1}
    with pytest.raises(PrivferError, match=r"cut\.jpg: truncated image file"):
        load_faces(f"folder:{tmp_path}@all", strict=True)


def test_cli_strict_fails_with_one_line_and_exit_2(tmp_path, capsys):
    truncated_dataset(tmp_path)
    assert main(["data", "inspect", f"folder:{tmp_path}", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("privfer: error: ") and "cut.jpg: truncated image file" in err
    assert err.count("\n") == 1


def test_cli_bad_csv_exit_2_single_line(tmp_path, capsys):
    csv_path = tmp_path / "fer2013.csv"
    write_fer2013_csv(csv_path, [(0, "Training")], header="emotion,pixels,Split")
    assert main(["data", "inspect", f"fer2013:{csv_path}", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"privfer: error: {csv_path}: expected header emotion,pixels,Usage, got 'emotion,pixels,Split'\n"


def test_fer2013_csv_bad_pixel_value_is_unreadable_row(tmp_path):
    csv_path = tmp_path / "fer2013.csv"
    write_fer2013_csv(csv_path, [(0, "Training")])
    with open(csv_path, "a") as fh:  # the right number of values, one of them not a number
        fh.write("1," + " ".join(["x"] + ["9"] * 2303) + ",Training\n")
    fs = load_faces(f"fer2013:{csv_path}@train")
    assert len(fs) == 1 and fs.dropped == {"unreadable image": 1}
    with pytest.raises(PrivferError, match=rf"{csv_path}:3: bad pixel values"):
        load_faces(f"fer2013:{csv_path}@train", strict=True)
