"""Readers of the supported dataset layouts, all giving a `FaceDataset` in the canonical label order.

Splits are "train", "val" and "test". Where a dataset has no validation split, "train" and "val"
are a stratified 85/15 split of its training data with a fixed seed (`splits.stratified_split`).
Decoded images are cached (see `cache.py`), so the second load of a 28k-image set takes a second.

FER+ labels (`label.csv`: 10 vote counts per image) follow the FER+ authors' reference code
(`FERPlus/src/ferplus.py`): votes of 1 are removed as outliers; with rule "majority" an image keeps
its top emotion only when that emotion has more than half of the remaining votes, otherwise it is
dropped; rule "plurality" keeps every image whose top count is unique. Either way images whose top
class is "unknown" or "NF" (not a face) are dropped. Soft targets are the remaining emotion votes
normalised to sum to 1, in the canonical 8-class order.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.data import labels as L
from training.data.cache import cached, files_key
from training.data.dataset import FaceDataset, decode, decode_all
from training.data.splits import stratified_split

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLIT_DIRS = {"train": ["train", "Training", "training"], "val": ["val", "valid", "validation", "PublicTest"],
              "test": ["test", "PrivateTest"]}  # fmt: skip
Split = Literal["train", "val", "test"]
Arrays = dict[str, np.ndarray]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)


def _load(reader: str, params: dict[str, Any], files: list[Path], build: Callable[[], Arrays], cache: bool) -> Arrays:
    return cached(f"{reader}-{files_key({'reader': reader, **params}, files)}", build, cache)


def _split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _with_holdout(full: FaceDataset, split: str, seed: int) -> FaceDataset:
    """Carve the stratified 85/15 validation split out of a training set without one."""
    if split == "test":
        raise FileNotFoundError(f"{full.name} has no test split")
    tr, va = stratified_split(full.targets, seed=seed)
    return full.subset(tr if split == "train" else va, split)


# ----------------------------------------------------------------------------- FER2013 csv


def read_fer2013_csv(path: Path, split: Split = "train", cache: bool = True) -> FaceDataset:
    """The original `fer2013.csv` (`emotion,pixels,Usage`): Training / PublicTest / PrivateTest."""
    path = Path(path)
    usage = {v: k for k, v in L.FER2013_USAGE.items()}[split]

    def build() -> Arrays:
        imgs, ys = [], []
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row["Usage"].strip() != usage:
                    continue
                px = np.array(row["pixels"].split(), dtype=np.uint8)
                side = round(len(px) ** 0.5)
                imgs.append(px.reshape(side, side))
                ys.append(L.EMOTIONS_7.index(L.FER2013_CSV[int(row["emotion"])]))
        return {"images": np.stack(imgs) if imgs else np.zeros((0, 48, 48), np.uint8), "targets": np.array(ys)}

    a = _load("fer2013csv", {"split": split}, [path], build, cache)
    return FaceDataset(a["images"], a["targets"], list(L.EMOTIONS_7), split, "fer2013")


# ----------------------------------------------------------------------------- image folders


def _class_folders(root: Path) -> tuple[list[Path], list[str], list[int]]:
    """Class sub-folders, the label order and each folder's index into it."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    names = [L.canonical(p.name) for p in folders]
    if folders and all(n is not None for n in names):
        order = L.label_order([n for n in names if n])
        return folders, order, [order.index(n) for n in names if n]
    order = [p.name for p in folders]  # not emotions we know: keep the folder names, sorted
    return folders, order, list(range(len(folders)))


def read_image_folder(
    root: Path, split: Split = "train", size: int | None = 48, gray: bool = True, seed: int = 1234,
    cache: bool = True, name: str = "folder",
) -> FaceDataset:  # fmt: skip
    """`root/<class>/*` or `root/{train,val|test}/<class>/*`; emotion folder names map to the canonical order."""
    root = Path(root)
    base = _split_dir(root, "train")
    if base is None:  # no split folders: one set, split 85/15
        return _with_holdout(_read_classes(root, size, gray, cache, name, "all"), split, seed)
    own = _split_dir(root, split)
    if own is None and split == "val":
        own = _split_dir(root, "test")  # Kaggle FER2013 layout: train/ + test/ (PublicTest)
    if own is None:
        return _with_holdout(_read_classes(base, size, gray, cache, name, "train"), split, seed)
    return _read_classes(own, size, gray, cache, name, split)


def _read_classes(folder: Path, size: int | None, gray: bool, cache: bool, name: str, split: str) -> FaceDataset:
    folders, order, idx = _class_folders(folder)
    files = [(f, i) for d, i in zip(folders, idx, strict=True) for f in _images_in(d)]

    def build() -> Arrays:
        images = decode_all([str(f) for f, _ in files], size, gray)
        return {"images": images, "targets": np.array([i for _, i in files])}

    a = _load("folder", {"size": size, "gray": gray}, [f for f, _ in files], build, cache)
    return FaceDataset(a["images"], a["targets"], order, split, name)


def read_fer2013_folders(root: Path, split: Split = "train", cache: bool = True) -> FaceDataset:
    """FER2013 in the Kaggle image-folder layout (`train/` and `val/` or `test/`, class sub-folders)."""
    ds = read_image_folder(root, split, size=48, gray=True, cache=cache, name="fer2013")
    if ds.labels != L.EMOTIONS_7:
        raise ValueError(f"{root}: expected the 7 FER2013 class folders, found {ds.labels}")
    return ds


# ----------------------------------------------------------------------------- FER+


def ferplus_targets(votes: np.ndarray, rule: str = "majority") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vote counts (N x 10, FER+ column order) -> (keep mask, canonical 8-class labels, soft targets)."""
    v = np.asarray(votes, dtype=np.float64).copy()
    v[v <= 1] = 0  # the authors' outlier removal: a single vote does not count
    total = v.sum(1)
    top = v.argmax(1)
    vmax = v.max(1)
    if rule == "majority":
        keep = vmax > 0.5 * total
    elif rule == "plurality":
        keep = (v == vmax[:, None]).sum(1) == 1
    else:
        raise ValueError(f"unknown FER+ rule {rule!r} (majority | plurality)")
    keep &= (top < 8) & (total > 0)
    perm = [L.FERPLUS_VOTES.index(c) for c in L.EMOTIONS_8]
    emo = v[:, perm]
    soft = emo / np.maximum(emo.sum(1, keepdims=True), 1e-9)
    labels = np.array([L.EMOTIONS_8.index(L.FERPLUS_VOTES[t]) if t < 8 else -1 for t in top])
    return keep, labels, soft.astype(np.float32)


def read_ferplus(root: Path, split: Split = "train", rule: str = "majority", cache: bool = True) -> FaceDataset:
    """FER+ (`FER2013Train|FER2013Valid|FER2013Test/` with `label.csv` and 48x48 PNGs), 8 classes + soft targets."""
    folder = Path(root) / L.FERPLUS_SPLITS[split]
    label_csv = folder / "label.csv"
    rows = [r for r in csv.reader(label_csv.open(newline="")) if r]
    names = [r[0] for r in rows]
    votes = np.array([[float(x) for x in r[2:12]] for r in rows])
    keep, labels, soft = ferplus_targets(votes, rule)
    kept = [n for n, k in zip(names, keep, strict=True) if k]

    def build() -> Arrays:
        return {"images": decode_all([str(folder / n) for n in kept], 48, True)}

    a = _load("ferplus", {"split": split, "rule": rule, "n": len(kept)}, [label_csv], build, cache)
    return FaceDataset(a["images"], labels[keep], list(L.EMOTIONS_8), split, "ferplus", soft[keep])


# ----------------------------------------------------------------------------- RAF-DB


def rafdb_labels(label_file: Path) -> list[tuple[str, str, int]]:
    """`list_patition_label.txt` -> (image name, split, canonical 7-class index)."""
    out = []
    for line in Path(label_file).read_text().split("\n"):
        if not line.strip():
            continue
        name, code = line.split()
        split = "train" if name.startswith("train") else "test"
        out.append((name, split, L.EMOTIONS_7.index(L.RAFDB[int(code)])))
    return out


def read_rafdb(root: Path, split: Split = "train", size: int = 100, gray: bool = False, cache: bool = True,
               seed: int = 1234) -> FaceDataset:  # fmt: skip
    """RAF-DB basic: `list_patition_label.txt` (or `EmoLabel/...`) + `aligned/<name>_aligned.jpg` (or `Image/aligned/`).

    RAF-DB has train and test only: "val" is RAF-DB's test set ("test" also gives it).
    """
    root = Path(root)
    label_file = next(p for p in (root / "list_patition_label.txt", root / "EmoLabel" / "list_patition_label.txt")
                      if p.exists())  # fmt: skip
    img_dir = next((p for p in (root / "aligned", root / "Image" / "aligned") if p.is_dir()), root / "aligned")
    want = "train" if split == "train" else "test"
    items = [(n, y) for n, s, y in rafdb_labels(label_file) if s == want]
    paths = [img_dir / (Path(n).stem + "_aligned" + Path(n).suffix) for n, _ in items]

    def build() -> Arrays:
        return {"images": decode_all([str(p) for p in paths], size, gray), "targets": np.array([y for _, y in items])}

    a = _load("rafdb", {"split": want, "size": size, "gray": gray}, [label_file, *paths], build, cache)
    return FaceDataset(a["images"], a["targets"], list(L.EMOTIONS_7), split, "rafdb")


# ----------------------------------------------------------------------------- AffectNet


def affectnet_index(code: int, num_classes: int = 8) -> int | None:
    """AffectNet expression code -> canonical index (None for dropped codes: 8-10, and contempt with 7 classes)."""
    name = L.AFFECTNET.get(int(code))
    order = L.EMOTIONS_8 if num_classes == 8 else L.EMOTIONS_7
    return order.index(name) if name in order else None


def read_affectnet(root: Path, split: Split = "train", num_classes: int = 8, size: int = 112, gray: bool = False,
                   cache: bool = True, seed: int = 1234) -> FaceDataset:  # fmt: skip
    """AffectNet-7/8 in the csv layout (`training.csv`/`validation.csv`, `subDirectory_filePath`, `expression`,
    images under `Manually_Annotated_Images/`) or the image-folder layout (`train/0..7`, `val/0..7`)."""
    root = Path(root)
    order = list(L.EMOTIONS_8 if num_classes == 8 else L.EMOTIONS_7)
    csv_name = {"train": "training.csv", "val": "validation.csv", "test": "validation.csv"}[split]
    if (root / csv_name).exists():
        items = _affectnet_csv(root, root / csv_name, num_classes)
    else:
        base = _split_dir(root, split) or (_split_dir(root, "test") if split == "val" else None)
        if base is None:
            if split == "train" or _split_dir(root, "train") is None:
                raise FileNotFoundError(f"{root}: no AffectNet {split} split")
            full = read_affectnet(root, "train", num_classes, size, gray, cache, seed)
            return _with_holdout(full, split, seed)
        items = []
        for d in sorted(p for p in base.iterdir() if p.is_dir() and p.name.isdigit()):
            y = affectnet_index(int(d.name), num_classes)
            if y is not None:
                items += [(f, y, None) for f in _images_in(d)]

    def build() -> Arrays:
        imgs = []
        for f, _, box in items:
            img = decode(str(f), None, gray)
            if box is not None:
                x, y0, w, h = box
                img = img[max(0, y0) : y0 + h, max(0, x) : x + w]
            imgs.append(decode_resize(img, size))
        return {"images": np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8),
                "targets": np.array([y for _, y, _ in items])}  # fmt: skip

    a = _load("affectnet", {"split": split, "n": num_classes, "size": size, "gray": gray},
              [f for f, _, _ in items], build, cache)  # fmt: skip
    return FaceDataset(a["images"], a["targets"], order, split, f"affectnet{num_classes}")


Box = tuple[int, int, int, int]


def _affectnet_csv(root: Path, path: Path, num_classes: int) -> list[tuple[Path, int, Box | None]]:
    img_root = root / "Manually_Annotated_Images" if (root / "Manually_Annotated_Images").is_dir() else root
    items = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            y = affectnet_index(int(row["expression"]), num_classes)
            if y is None:
                continue
            box = None
            if row.get("face_width"):
                box = (int(float(row["face_x"])), int(float(row["face_y"])),
                       int(float(row["face_width"])), int(float(row["face_height"])))  # fmt: skip
            items.append((img_root / row["subDirectory_filePath"], y, box))
    return items


def decode_resize(img: np.ndarray, size: int | None) -> np.ndarray:
    import cv2

    if size is None or img.shape[:2] == (size, size):
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


# ----------------------------------------------------------------------------- auto-detection


def detect_format(path: Path) -> str:
    """Guess the layout of `path`: fer2013csv | ferplus | rafdb | affectnet | folder."""
    p = Path(path)
    if p.is_file() and p.suffix == ".csv":
        return "fer2013csv"
    if (p / "FER2013Train").is_dir() or (p / "FER2013Valid").is_dir():
        return "ferplus"
    if (p / "list_patition_label.txt").exists() or (p / "EmoLabel" / "list_patition_label.txt").exists():
        return "rafdb"
    if (p / "training.csv").exists() or (p / "validation.csv").exists():
        return "affectnet"
    base = _split_dir(p, "train")
    if base is not None and any(d.is_dir() and d.name.isdigit() for d in base.iterdir()):
        return "affectnet"
    return "folder"


def load_dataset(path: Path, split: Split = "train", fmt: str = "auto", **kw: Any) -> FaceDataset:
    """Load one split of a dataset at `path` in any supported layout."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers: dict[str, Callable[..., FaceDataset]] = {
        "fer2013csv": read_fer2013_csv, "fer2013": read_fer2013_folders, "ferplus": read_ferplus,
        "rafdb": read_rafdb, "affectnet": read_affectnet, "folder": read_image_folder,
    }  # fmt: skip
    if fmt not in readers:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {', '.join(readers)}")
    return readers[fmt](Path(path), split, **kw)
