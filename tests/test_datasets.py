"""Dataset readers (generated fixtures in the real formats + ../shared when present), mappings, splits, augmentation."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import shared_path
from training.config import TrainConfig
from training.data import EMOTIONS_7, EMOTIONS_8, detect_format, load_dataset
from training.data import labels as L
from training.data import readers as R
from training.data.augment import AugmentParams, augment_batch, balanced_indices, mixup, random_erasing
from training.data.splits import stratified_folds, stratified_split


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOSERVE_CACHE_DIR", str(tmp_path / "cache"))


def _img(value: int, size: int = 48, color: bool = False) -> np.ndarray:
    img = np.full((size, size), value, np.uint8)
    return np.dstack([img, img // 2, img // 3]) if color else img


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


# ----------------------------------------------------------------------------- mapping tables


def test_canonical_orders() -> None:
    assert EMOTIONS_7 == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert [*EMOTIONS_7, "contempt"] == EMOTIONS_8


def test_mapping_tables() -> None:
    assert [L.FER2013_CSV[i] for i in range(7)] == EMOTIONS_7
    assert [L.RAFDB[i] for i in range(1, 8)] == ["surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"]
    assert [L.AFFECTNET[i] for i in range(8)] == [
        "neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt",
    ]  # fmt: skip
    assert L.FERPLUS_VOTES[:8] == ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt"]
    assert R.affectnet_index(6, 8) == EMOTIONS_8.index("angry")
    assert R.affectnet_index(7, 7) is None and R.affectnet_index(7, 8) == 7
    assert R.affectnet_index(8) is None and R.affectnet_index(10) is None
    assert L.canonical("Happiness") == "happy" and L.canonical("surprised") == "surprise" and L.canonical("x") is None


# ----------------------------------------------------------------------------- FER2013 csv


def test_fer2013_csv(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    rows = [(e, u) for u in ("Training", "PublicTest", "PrivateTest") for e in range(7)] + [(3, "Training")]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for e, u in rows:
            w.writerow([e, " ".join(str((e * 30 + i) % 256) for i in range(48 * 48)), u])
    assert detect_format(path) == "fer2013csv"
    tr = load_dataset(path, "train")
    assert len(tr) == 8 and tr.images.shape == (8, 48, 48) and tr.labels == EMOTIONS_7
    assert tr.targets.tolist() == [0, 1, 2, 3, 4, 5, 6, 3]  # csv order == canonical order
    assert tr.images[1, 0, 0] == 30 and tr.images[1, 0, 1] == 31
    assert len(load_dataset(path, "val")) == 7 and len(load_dataset(path, "test")) == 7
    assert len(load_dataset(path, "all")) == 22


def test_fer2013_csv_without_private_test_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n3," + " ".join(["7"] * 48 * 48) + ",Training\n")
    with pytest.raises(R.DatasetLayoutError, match="has no test split: expected rows with Usage PrivateTest"):
        load_dataset(path, "test")


# ----------------------------------------------------------------------------- image folders


def test_fer2013_folders_train_test_layout(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for k, name in enumerate(sorted(EMOTIONS_7)):
            for i in range(n):
                _write(tmp_path / split / name / f"{i}.jpg", _img(10 * k))
    tr = load_dataset(tmp_path, "train", "fer2013")
    va = load_dataset(tmp_path, "val", "fer2013")  # test/ serves as validation when val/ is absent
    assert len(tr) == 21 and len(va) == 14 and tr.labels == EMOTIONS_7
    happy = EMOTIONS_7.index("happy")
    assert abs(int(tr.images[tr.targets == happy][0].mean()) - 10 * sorted(EMOTIONS_7).index("happy")) <= 2


def test_image_folder_without_split_is_split_85_15(tmp_path: Path) -> None:
    for name, n in (("Happiness", 40), ("anger", 20)):
        for i in range(n):
            _write(tmp_path / name / f"{i}.png", _img(i))
    tr, va = load_dataset(tmp_path, "train"), load_dataset(tmp_path, "val")
    assert len(tr) + len(va) == 60 and len(va) == 9
    assert tr.labels == EMOTIONS_7
    assert set(va.targets.tolist()) == {EMOTIONS_7.index("happy"), EMOTIONS_7.index("angry")}


def test_image_folder_test_only_and_all(tmp_path: Path) -> None:
    for split, names in (("test", ("happy", "sad")), ("train", ("happy", "contempt"))):
        for name in names:
            for i in range(3):
                _write(tmp_path / "data" / split / name / f"{i}.png", _img(i))
    assert len(load_dataset(tmp_path / "data", "test")) == 6
    every = load_dataset(tmp_path / "data", "all")  # the label order covers the classes of every split
    assert len(every) == 12 and every.labels == EMOTIONS_8 and every.split == "all"
    assert np.bincount(every.targets, minlength=8)[[EMOTIONS_8.index("happy"), 7]].tolist() == [6, 3]
    _write(tmp_path / "only" / "test" / "sad" / "0.png", _img(1))
    for split in ("train", "val"):  # test/ alone is not a validation set beside no train/
        with pytest.raises(R.DatasetLayoutError, match=f"has no {split} split: expected .*/{split}/<class>/"):
            load_dataset(tmp_path / "only", split)


def test_bare_folder_all_and_refusals(tmp_path: Path) -> None:
    for name, n in (("happy", 8), ("sad", 4)):
        for i in range(n):
            _write(tmp_path / "photos" / name / f"{i}.png", _img(i))
    assert len(load_dataset(tmp_path / "photos", "all")) == 12
    with pytest.raises(R.DatasetLayoutError, match=r"no test split: .* or .*/FER2013Test/label.csv .*--split all"):
        load_dataset(tmp_path / "photos", "test")
    (tmp_path / "empty" / "happy").mkdir(parents=True)
    with pytest.raises(R.DatasetLayoutError, match="has no labelled images: expected <class>/"):
        load_dataset(tmp_path / "empty", "all")


def test_generic_folder_keeps_unknown_names(tmp_path: Path) -> None:
    for name in ("cats", "dogs"):
        for i in range(10):
            _write(tmp_path / "train" / name / f"{i}.png", _img(i, 32, color=True))
            _write(tmp_path / "val" / name / f"{i}.png", _img(i, 32, color=True))
    ds = R.read_image_folder(tmp_path, "val", size=24, gray=False)
    assert ds.labels == ["cats", "dogs"] and ds.images.shape == (20, 24, 24, 3)


def test_cache_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(4):
        _write(tmp_path / "data" / "train" / "happy" / f"{i}.png", _img(i))
        _write(tmp_path / "data" / "train" / "sad" / f"{i}.png", _img(i))
    a = load_dataset(tmp_path / "data", "train")
    monkeypatch.setattr(R, "decode_all", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    b = load_dataset(tmp_path / "data", "train")
    assert a.fingerprint == b.fingerprint
    assert list((tmp_path / "cache").glob("*.npz"))


# ----------------------------------------------------------------------------- FER+


def _ferplus(root: Path, rows: list[list[int]]) -> Path:
    folder = root / "FER2013Valid"
    folder.mkdir(parents=True)
    with (folder / "label.csv").open("w", newline="") as f:
        w = csv.writer(f)
        for i, votes in enumerate(rows):
            w.writerow([f"fer{i:07d}.png", "(0, 0, 48, 48)", *votes])
            _write(folder / f"fer{i:07d}.png", _img(20 * i))
    return root


FERPLUS_ROWS = [
    [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],  # neutral 4 of 9 (after dropping the single vote: 4 of 9) -> not >50%
    [6, 0, 1, 1, 0, 0, 0, 0, 2, 0],  # neutral 6 of 8 -> neutral
    [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],  # happy
    [0, 0, 0, 0, 0, 0, 0, 0, 10, 0],  # unknown -> dropped
    [0, 0, 0, 0, 0, 0, 0, 2, 0, 8],  # not a face -> dropped
    [0, 0, 0, 0, 0, 0, 0, 7, 0, 3],  # contempt
    [0, 0, 5, 0, 0, 0, 5, 0, 0, 0],  # tie surprise/fear -> dropped under both rules
    [0, 0, 0, 5, 4, 0, 0, 0, 0, 1],  # sad 5 of 9 -> sad
]


def test_ferplus_rules_and_soft_targets(tmp_path: Path) -> None:
    root = _ferplus(tmp_path / "ferplus", FERPLUS_ROWS)
    assert detect_format(root) == "ferplus"
    ds = load_dataset(root, "val")
    assert ds.labels == EMOTIONS_8
    assert ds.targets.tolist() == [EMOTIONS_8.index(c) for c in ("neutral", "happy", "contempt", "sad")]
    assert ds.soft is not None and np.allclose(ds.soft.sum(1), 1)
    assert ds.soft[0, EMOTIONS_8.index("neutral")] == pytest.approx(1.0)  # 1-vote outliers removed
    assert ds.soft[3, EMOTIONS_8.index("sad")] == pytest.approx(5 / 9)
    assert ds.soft[3, EMOTIONS_8.index("angry")] == pytest.approx(4 / 9)
    assert int(ds.images[1].mean()) == 40  # image of row 2 (happy)
    plur = load_dataset(root, "val", rule="plurality")
    assert plur.targets.tolist()[0] == EMOTIONS_8.index("neutral") and len(plur) == 5
    _, y, _ = R.ferplus_targets(np.array(FERPLUS_ROWS), "plurality")
    assert y[3] == -1 and y[4] == -1


def test_ferplus_test_only_and_all(tmp_path: Path) -> None:
    root = _ferplus(tmp_path / "ferplus", FERPLUS_ROWS)
    (root / "FER2013Valid").rename(root / "FER2013Test")
    assert detect_format(root) == "ferplus"
    assert load_dataset(root, "test").targets.tolist() == load_dataset(root, "all").targets.tolist()
    refusal = r"no val split: expected .*/FER2013Valid/label\.csv \(found FER2013Test\)"
    with pytest.raises(R.DatasetLayoutError, match=refusal):
        load_dataset(root, "val")
    _ferplus(root, FERPLUS_ROWS[:3])  # a FER2013Valid/ beside it: "all" reads both folders
    both = load_dataset(root, "all")
    assert len(both) == 4 + 2 and both.soft is not None and both.soft.shape == (6, 8)


def test_ferplus_real_labels() -> None:
    label = shared_path("data", "ferplus", "FER2013Valid", "label.csv")
    rows = list(csv.reader(label.open()))
    keep, y, _ = R.ferplus_targets(np.array([[float(v) for v in r[2:12]] for r in rows]))
    assert 3000 < keep.sum() < len(rows)
    assert set(np.unique(y[keep])) == set(range(8))
    assert np.bincount(y[keep]).argmax() == EMOTIONS_8.index("neutral")
    assert (root := label.parent / rows[0][0]).exists(), root


# ----------------------------------------------------------------------------- RAF-DB


def test_rafdb(tmp_path: Path) -> None:
    lines = ["train_00001.jpg 5", "train_00002.jpg 1", "train_00003.jpg 7", "test_0001.jpg 4", "test_0002.jpg 6"]
    (tmp_path / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for i, line in enumerate(lines):
        _write(tmp_path / "aligned" / line.split()[0].replace(".jpg", "_aligned.jpg"), _img(50 * i, 100, True))
    assert detect_format(tmp_path) == "rafdb"
    tr = load_dataset(tmp_path, "train", size=64)
    assert tr.targets.tolist() == [EMOTIONS_7.index(c) for c in ("sad", "surprise", "neutral")]
    assert tr.images.shape == (3, 64, 64, 3)
    te = load_dataset(tmp_path, "val")
    assert te.targets.tolist() == [EMOTIONS_7.index("happy"), EMOTIONS_7.index("angry")]
    assert len(load_dataset(tmp_path, "test", size=64)) == 2 and len(load_dataset(tmp_path, "all", size=64)) == 5
    with pytest.raises(R.DatasetLayoutError, match=r"is not RAF-DB: expected .*/list_patition_label\.txt"):
        load_dataset(tmp_path / "aligned", "test", "rafdb")


def test_rafdb_real_labels() -> None:
    items = R.rafdb_labels(shared_path("data", "rafdb_labels", "list_patition_label.txt"))
    splits = [s for _, s, _ in items]
    assert splits.count("train") == 12271 and splits.count("test") == 3068
    assert {y for *_, y in items} == set(range(7))


# ----------------------------------------------------------------------------- AffectNet


def test_affectnet_folders_7_and_8(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for code in range(11):
            for i in range(2):
                _write(tmp_path / split / str(code) / f"{i}.jpg", _img(20 * code, 64, True))
    assert detect_format(tmp_path) == "affectnet"
    d8 = load_dataset(tmp_path, "val", num_classes=8, size=32)
    assert len(d8) == 16 and d8.labels == EMOTIONS_8 and d8.images.shape[1:] == (32, 32, 3)
    assert sorted(set(d8.targets.tolist())) == list(range(8))
    d7 = load_dataset(tmp_path, "train", num_classes=7, size=32)
    assert len(d7) == 14 and d7.labels == EMOTIONS_7
    assert len(load_dataset(tmp_path, "test", num_classes=8, size=32)) == 16  # AffectNet's test is its val
    assert len(load_dataset(tmp_path, "all", num_classes=8, size=32)) == 32


def test_affectnet_test_only_folder(tmp_path: Path) -> None:
    for code in range(8):
        _write(tmp_path / "test" / str(code) / "0.jpg", _img(20 * code, 64, True))
    assert detect_format(tmp_path) == "affectnet"
    assert len(load_dataset(tmp_path, "test", size=32)) == len(load_dataset(tmp_path, "all", size=32)) == 8
    with pytest.raises(R.DatasetLayoutError, match=r"no AffectNet train split: expected .*training\.csv or"):
        load_dataset(tmp_path, "train")


def test_affectnet_csv(tmp_path: Path) -> None:
    img_root = tmp_path / "Manually_Annotated_Images"
    rows = [("1/a.jpg", 1), ("1/b.jpg", 6), ("2/c.jpg", 9), ("2/d.jpg", 7)]
    for p, code in rows:
        _write(img_root / p, _img(25 * code, 80, True))
    with (tmp_path / "validation.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal"])  # fmt: skip
        for p, code in rows:
            w.writerow([p, 10, 10, 60, 60, "", code, 0.1, 0.2])
    d = load_dataset(tmp_path, "val", num_classes=8, size=40)
    assert d.targets.tolist() == [EMOTIONS_8.index("happy"), EMOTIONS_8.index("angry"), EMOTIONS_8.index("contempt")]
    assert d.images.shape == (3, 40, 40, 3)


# ----------------------------------------------------------------------------- shared FER2013 folders


def test_fer2013_real_folders_layout() -> None:
    root = shared_path("data", "fer2013")
    folders, order, idx = R._class_folders(root / "train")
    assert order == EMOTIONS_7 and sorted(idx) == list(range(7))
    happy = next(f for f in folders if f.name == "happy")
    assert len(R._images_in(happy)) == 7215
    img = cv2.imread(str(R._images_in(happy)[0]), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (48, 48)


# ----------------------------------------------------------------------------- splits


def test_stratified_split_proportions_and_determinism() -> None:
    y = np.repeat(np.arange(4), [200, 100, 60, 40])
    tr, va = stratified_split(y)
    assert len(va) == 60 and not set(tr) & set(va) and len(tr) + len(va) == 400
    assert np.bincount(y[va]).tolist() == [30, 15, 9, 6]
    tr2, va2 = stratified_split(y)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(stratified_split(y, seed=7)[1], va)


def test_kfold_disjoint_and_stratified() -> None:
    y = np.repeat(np.arange(3), [50, 30, 20])
    folds = stratified_folds(y, 5)
    vals = np.concatenate([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(100))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert np.bincount(y[va], minlength=3).tolist() == [10, 6, 4]


# ----------------------------------------------------------------------------- augmentation


def test_augment_batch() -> None:
    rng = np.random.default_rng(0)
    imgs = np.zeros((8, 48, 48), np.uint8)
    imgs[:, 10:20, 5:15] = 255
    assert augment_batch(imgs, rng, "none", AugmentParams()) is imgs
    out = augment_batch(imgs, rng, "standard", AugmentParams())
    assert out.shape == imgs.shape and out.dtype == np.uint8
    assert not np.array_equal(out, imgs)
    flipped = augment_batch(imgs[:1], rng, "standard", AugmentParams(0, 0, 0, 0, hflip=1.0))
    assert np.array_equal(flipped[0], imgs[0, :, ::-1])
    with pytest.raises(ValueError):
        augment_batch(imgs, rng, "bogus", AugmentParams())


def test_degrade_loses_detail_and_changes_tone() -> None:
    """`degrade` (the training side of the robustness suite): off, the geometry alone; on, every face changes,
    the batch loses most of its fine detail (pixel-to-pixel differences), and faces stay uint8 of the same size."""
    rng = np.random.default_rng(0)
    faces = (np.random.default_rng(1).random((32, 96, 96)) * 255).astype(np.uint8)  # all fine detail
    still = AugmentParams(0, 0, 0, 0, hflip=0.0)
    assert np.array_equal(augment_batch(faces, rng, "standard", still), faces)
    out = augment_batch(faces, rng, "standard", AugmentParams(0, 0, 0, 0, hflip=0.0, degrade=1.0))
    assert out.shape == faces.shape and out.dtype == np.uint8
    detail = [float(np.abs(np.diff(img.astype(np.float32), axis=1)).mean()) for img in (*faces, *out)]
    assert not any(np.array_equal(a, b) for a, b in zip(faces, out, strict=True))
    assert np.mean(detail[32:]) < 0.6 * np.mean(detail[:32])
    with pytest.raises(ValueError, match="degrade"):
        TrainConfig.from_dict({"degrade": 1.5}).validate()


def test_degrade_jpeg_compresses_a_face_as_small_as_its_48px_original(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training face is a 48 px FER image upsampled to the network's side; a JPEG round trip at that side barely
    touches it, while the robustness suite's "jpeg 30" compresses the 48 px original. The training JPEG works
    on the face at 48 px up to the image's side, so it brackets the suite's shift."""
    from training.data import degrade

    noise = (np.random.default_rng(2).random((48, 48)) * 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(noise, (0, 0), 1.0).astype(np.float32)
    small = np.rint((blurred - blurred.min()) * 255 / np.ptp(blurred)).astype(np.uint8)  # face-like detail
    face = cv2.resize(small, (96, 96), interpolation=cv2.INTER_LINEAR)
    suite = cv2.resize(degrade.jpeg(small, 30), (96, 96), interpolation=cv2.INTER_LINEAR)

    def err(img: np.ndarray) -> float:
        return float(np.abs(img.astype(np.float32) - face).mean())

    assert err(degrade.jpeg(face, 30)) < 0.7 * err(suite) < err(degrade.jpeg_at(face, 30, 48)) < 1.5 * err(suite)
    sides: list[float] = []

    def record(img: np.ndarray, quality: int, side: float) -> np.ndarray:
        sides.append(side)
        return img

    monkeypatch.setattr(degrade, "jpeg_at", record)
    rng = np.random.default_rng(0)
    for _ in range(200):
        degrade.random_degrade(face, rng, 1.0)
    assert len(sides) > 30 and min(sides) >= 48 and max(sides) <= 96 and min(sides) < 60


def test_degrade_weights_choose_the_loss_of_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    """`degrade_weights` are the odds of downscale, blur and JPEG; a zero never draws its kind, equal odds
    (None) draw each about a third of the time."""
    from training.config import TrainConfig
    from training.data import degrade

    kinds: list[str] = []

    def recorder(name: str) -> Callable[..., np.ndarray]:
        def record(img: np.ndarray, *args: object) -> np.ndarray:
            kinds.append(name)
            return img

        return record

    for name in ("downscale", "blur", "jpeg_at"):
        monkeypatch.setattr(degrade, name, recorder(name))
    face = np.full((48, 48), 128, np.uint8)
    for weights, expect in (((0.0, 0.0, 1.0), {"jpeg_at"}), ((1.0, 1.0, 0.0), {"downscale", "blur"}), (None, None)):
        kinds.clear()
        rng = np.random.default_rng(0)
        for _ in range(300):
            degrade.random_degrade(face, rng, 1.0, weights)
        assert len(kinds) == 300
        if expect is not None:
            assert set(kinds) == expect
        else:
            assert all(60 < kinds.count(k) < 140 for k in ("downscale", "blur", "jpeg_at")), kinds
    with pytest.raises(ValueError, match="three odds"):
        TrainConfig.from_dict({"degrade_weights": [1.0, 1.0]})
    with pytest.raises(ValueError, match="three odds"):
        TrainConfig.from_dict({"degrade_weights": [1.0, -1.0, 1.0]})
    with pytest.raises(ValueError, match="three odds"):
        TrainConfig.from_dict({"degrade_weights": 1.0})
    with pytest.raises(ValueError, match="degrade is 0"):
        TrainConfig.from_dict({"degrade_weights": [1.0, 1.0, 1.0]})
    assert TrainConfig.from_dict({"degrade": 0.5, "degrade_weights": [1, 0, 2]}).degrade_weights == [1, 0, 2]


def test_balanced_indices() -> None:
    y = np.repeat(np.arange(3), [50, 10, 5])
    idx = balanced_indices(y, np.random.default_rng(0))
    assert np.bincount(y[idx]).tolist() == [50, 50, 50]
    assert set(range(65)) <= set(idx.tolist())


def test_erasing_and_mixup() -> None:
    import torch

    x = torch.ones(16, 1, 48, 48)
    out = random_erasing(x.clone(), 1.0, torch.Generator().manual_seed(0))
    assert (out == 0).flatten(1).any(1).all()
    assert random_erasing(x.clone(), 0.0).eq(1).all()
    y = torch.eye(4)[torch.tensor([0, 1, 2, 3] * 4)]
    _, ym = mixup(x, y, 0.4, np.random.default_rng(0))
    assert torch.allclose(ym.sum(1), torch.ones(16))


def test_pca_projection_keeps_variance() -> None:
    from training.data.pca import fit_pca

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(5, 64))
    x = (rng.normal(size=(300, 5)) @ basis + 0.01 * rng.normal(size=(300, 64))).reshape(300, 1, 8, 8)
    proj = fit_pca(x.astype(np.float32), 0.95)
    assert proj.components.shape[1] <= 5
    import torch

    rec = proj(torch.from_numpy(x[:10].astype(np.float32))).numpy()
    assert np.abs(rec - x[:10]).max() < 0.2
