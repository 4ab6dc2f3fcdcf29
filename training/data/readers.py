"""Readers of the supported dataset layouts, all giving a `FaceDataset` in the canonical label order.

Splits are "train", "val", "test" and "all". Where a dataset has no validation split, "train" and "val"
are a stratified 85/15 split of its training data with a fixed seed (`splits.stratified_split`).
"all" is every labelled image the layout has: a bare `<class>/` folder in full, or every split folder
of the dataset together (a model trained on part of it then scores too high there; that is the
caller's choice). A split that a layout lacks is refused with `DatasetLayoutError`, whose one-line
message names the layout that was expected.
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

import training.data.labels as L
from training.data.cache import cached, files_key
from training.data.dataset import FaceDataset, decode, decode_all
from training.data.second_opinion import SecondLabels, matched_labels
from training.data.splits import stratified_split

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLIT_DIRS = {"train": ["train", "Training", "training"], "val": ["val", "valid", "validation", "PublicTest"],
              "test": ["test", "PrivateTest"]}  # fmt: skip
SPLITS = ("train", "val", "test")
Split = Literal["train", "val", "test", "all"]
Arrays = dict[str, np.ndarray]


class DatasetLayoutError(FileNotFoundError):
    """A dataset lacks the split or the labelled images asked for; the message names the expected layout."""


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)


def _load(reader: str, params: dict[str, Any], files: list[Path], build: Callable[[], Arrays], cache: bool) -> Arrays:
    return cached(f"{reader}-{files_key({'reader': reader, **params}, files)}", build, cache)


def _split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _split_dirs(root: Path) -> dict[str, Path]:
    """The split folders present under `root` (train / val / test, by any of their usual names)."""
    return {s: d for s in SPLITS if (d := _split_dir(root, s)) is not None}


def _with_holdout(full: FaceDataset, split: str, seed: int) -> FaceDataset:
    """Carve the stratified 85/15 validation split out of a training set without one ("train" or "val")."""
    tr, va = stratified_split(full.targets, seed=seed)
    return full.subset(tr if split == "train" else va, split)


# ----------------------------------------------------------------------------- FER2013 csv


def read_fer2013_csv(path: Path, split: Split = "train", cache: bool = True) -> FaceDataset:
    """The original `fer2013.csv` (`emotion,pixels,Usage`): Training / PublicTest / PrivateTest."""
    path = Path(path)
    usages = [u for u, s in L.FER2013_USAGE.items() if split in (s, "all")]

    def build() -> Arrays:
        imgs, ys = [], []
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row["Usage"].strip() not in usages:
                    continue
                px = np.array(row["pixels"].split(), dtype=np.uint8)
                side = round(len(px) ** 0.5)
                imgs.append(px.reshape(side, side))
                ys.append(L.EMOTIONS_7.index(L.FER2013_CSV[int(row["emotion"])]))
        return {"images": np.stack(imgs) if imgs else np.zeros((0, 48, 48), np.uint8), "targets": np.array(ys)}

    a = _load("fer2013csv", {"split": split}, [path], build, cache)
    if not len(a["targets"]):
        raise DatasetLayoutError(f"{path} has no {split} split: expected rows with Usage {' or '.join(usages)}")
    return FaceDataset(a["images"], a["targets"], list(L.EMOTIONS_7), split, "fer2013")


# ----------------------------------------------------------------------------- image folders


def _class_folders(*roots: Path) -> tuple[list[Path], list[str], list[int]]:
    """Class sub-folders of `roots`, the label order over all of them and each folder's index into it."""
    folders = [d for r in roots for d in sorted(p for p in r.iterdir() if p.is_dir())]
    names = [L.canonical(p.name) for p in folders]
    if folders and all(n is not None for n in names):
        order = L.label_order([n for n in names if n])
        return folders, order, [order.index(n) for n in names if n]
    order = sorted({p.name for p in folders})  # not emotions we know: keep the folder names, sorted
    return folders, order, [order.index(p.name) for p in folders]


def _missing_folder_split(root: Path, split: str, present: list[str]) -> DatasetLayoutError:
    """The refusal of a split an image folder lacks, naming the layouts that would have it."""
    want = f"{root}/{split}/<class>/*.jpg" if split != "all" else f"{root}/<class>/*.jpg"
    if split in L.FERPLUS_SPLITS:
        want += f" or {root}/{L.FERPLUS_SPLITS[split]}/label.csv"
    has = f"split folders {', '.join(present)}" if present else "a bare <class>/ folder: --split all reads all of it"
    return DatasetLayoutError(f"{root} has no {split} split: expected {want} (found {has})")


def read_image_folder(
    root: Path, split: Split = "train", size: int | None = 48, gray: bool = True, seed: int = 1234,
    cache: bool = True, name: str = "folder",
) -> FaceDataset:  # fmt: skip
    """`root/<class>/*` or `root/{train,val,test}/<class>/*`; emotion folder names map to the canonical order.

    A bare `<class>/` folder gives a stratified 85/15 train/val split, or all of it with "all" (no
    "test"). With split folders, "val" falls back to `test/` beside `train/` (the Kaggle FER2013
    layout), else to 15% of `train/`; "all" reads every split folder together.
    """
    root = Path(root)
    parts = _split_dirs(root)
    if not parts:  # a bare <class>/ folder
        if split == "test":
            raise _missing_folder_split(root, split, [])
        full = _read_classes([root], size, gray, cache, name, "all")
        return full if split == "all" else _with_holdout(full, split, seed)
    if split == "all":
        return _read_classes(list(parts.values()), size, gray, cache, name, "all")
    own = parts.get(split)
    if own is None and split == "val" and "train" in parts:
        own = parts.get("test")  # Kaggle FER2013 layout: train/ + test/ (PublicTest)
    if own is not None:
        return _read_classes([own], size, gray, cache, name, split)
    if split == "val" and "train" in parts:
        return _with_holdout(_read_classes([parts["train"]], size, gray, cache, name, "train"), split, seed)
    raise _missing_folder_split(root, split, list(parts))


def _read_classes(
    roots: list[Path], size: int | None, gray: bool, cache: bool, name: str, split: str
) -> FaceDataset:  # fmt: skip
    folders, order, idx = _class_folders(*roots)
    files = [(f, i) for d, i in zip(folders, idx, strict=True) for f in _images_in(d)]
    if not files:
        where = " and ".join(str(r) for r in roots)
        raise DatasetLayoutError(f"{where} has no labelled images: expected <class>/*.jpg sub-folders there")

    def build() -> Arrays:
        images = decode_all([str(f) for f, _ in files], size, gray)
        return {"images": images, "targets": np.array([i for _, i in files])}

    a = _load("folder", {"size": size, "gray": gray}, [f for f, _ in files], build, cache)
    return FaceDataset(a["images"], a["targets"], order, split, name)


def read_fer2013_folders(root: Path, split: Split = "train", cache: bool = True) -> FaceDataset:
    """FER2013 in the Kaggle image-folder layout (`train/` and `val/` or `test/`, class sub-folders)."""
    ds = read_image_folder(root, split, size=48, gray=True, cache=cache, name="fer2013")
    if ds.labels != L.EMOTIONS_7:
        raise DatasetLayoutError(f"{root}: expected the 7 FER2013 class folders, found {ds.labels}")
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


def read_ferplus(
    root: Path, split: Split = "train", rule: str = "majority", cache: bool = True, fer2013: str | None = None
) -> FaceDataset:
    """FER+ (`FER2013Train|FER2013Valid|FER2013Test/` with `label.csv` and 48x48 PNGs), 8 classes + soft targets.

    "all" reads every one of the three folders that is present. With `fer2013` (the FER2013 image folders;
    a relative path is taken from `root`) each face also gets its original FER2013 label as `second`
    (`second_opinion.py`), from the same split.
    """
    root = Path(root)
    names = list(L.FERPLUS_SPLITS.values()) if split == "all" else [L.FERPLUS_SPLITS[split]]
    folders = [root / n for n in names if (root / n / "label.csv").is_file()]
    if not folders:
        want = f"{root}/{'|'.join(names)}/label.csv"
        found = [n for n in L.FERPLUS_SPLITS.values() if (root / n / "label.csv").is_file()]
        raise DatasetLayoutError(f"{root} has no {split} split: expected {want} (found {', '.join(found) or 'none'})")
    parts = [_ferplus_folder(f, rule, cache) for f in folders]
    images = np.concatenate([p[0] for p in parts])
    second = None
    if fer2013 is not None:
        ref = read_fer2013_folders(root / fer2013, split, cache)
        second = SecondLabels(matched_labels(images, ref.images, ref.targets, cache), list(ref.labels), "fer2013")
    return FaceDataset(
        images, np.concatenate([p[1] for p in parts]), list(L.EMOTIONS_8), split, "ferplus",
        np.concatenate([p[2] for p in parts]), second,
    )  # fmt: skip


def _ferplus_folder(folder: Path, rule: str, cache: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, targets, soft targets) of one FER+ folder's kept rows."""
    label_csv = folder / "label.csv"
    with label_csv.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    names = [r[0] for r in rows]
    votes = np.array([[float(x) for x in r[2:12]] for r in rows]).reshape(len(rows), 10)
    keep, labels, soft = ferplus_targets(votes, rule)
    kept = [n for n, k in zip(names, keep, strict=True) if k]

    def build() -> Arrays:
        return {"images": decode_all([str(folder / n) for n in kept], 48, True)}

    split = {v: k for k, v in L.FERPLUS_SPLITS.items()}[folder.name]
    a = _load("ferplus", {"split": split, "rule": rule, "n": len(kept)}, [label_csv], build, cache)
    return a["images"], labels[keep], soft[keep]


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

    RAF-DB has train and test only: "val" is RAF-DB's test set ("test" also gives it); "all" is both.
    """
    root = Path(root)
    label_file = next((p for p in (root / "list_patition_label.txt", root / "EmoLabel" / "list_patition_label.txt")
                       if p.exists()), None)  # fmt: skip
    if label_file is None:
        raise DatasetLayoutError(f"{root} is not RAF-DB: expected {root}/list_patition_label.txt + {root}/aligned/")
    img_dir = next((p for p in (root / "aligned", root / "Image" / "aligned") if p.is_dir()), root / "aligned")
    want = {"train": "train", "all": "all"}.get(split, "test")
    items = [(n, y) for n, s, y in rafdb_labels(label_file) if want in (s, "all")]
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
    images under `Manually_Annotated_Images/`) or the image-folder layout (`train/0..7`, `val/0..7`).

    AffectNet's test set is not public: "test" is its validation set, like "val"; "all" is every split present.
    """
    root = Path(root)
    order = list(L.EMOTIONS_8 if num_classes == 8 else L.EMOTIONS_7)
    csv_names = {"train": ["training.csv"], "all": ["training.csv", "validation.csv"]}.get(split, ["validation.csv"])
    csvs = [root / n for n in csv_names if (root / n).exists()]
    parts = _split_dirs(root)
    if csvs:
        items = [it for c in csvs for it in _affectnet_csv(root, c, num_classes)]
    else:
        if split == "all":
            bases = list(parts.values())
        else:
            wanted = {"train": ["train"], "val": ["val", "test"], "test": ["test", "val"]}[split]
            own = [parts[s] for s in wanted if s in parts][:1]
            if not own and split == "val" and "train" in parts:  # no val/ or test/: 15% of train/
                return _with_holdout(read_affectnet(root, "train", num_classes, size, gray, cache, seed), split, seed)
            bases = own
        if not bases:
            folder = "{train,val}" if split == "all" else split
            raise DatasetLayoutError(f"{root} has no AffectNet {split} split: expected {root}/{csv_names[-1]} "
                                     f"or {root}/{folder}/<code 0-7>/*.jpg")  # fmt: skip
        items = []
        for base in bases:
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
    if any((p / name).is_dir() for name in L.FERPLUS_SPLITS.values()):
        return "ferplus"
    if (p / "list_patition_label.txt").exists() or (p / "EmoLabel" / "list_patition_label.txt").exists():
        return "rafdb"
    if (p / "training.csv").exists() or (p / "validation.csv").exists():
        return "affectnet"
    if any(d.is_dir() and d.name.isdigit() for base in _split_dirs(p).values() for d in base.iterdir()):
        return "affectnet"
    return "folder"


def load_dataset(path: Path, split: Split = "train", fmt: str = "auto", **kw: Any) -> FaceDataset:
    """Load one split of a dataset at `path` in any supported layout."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {', '.join(READERS)}")
    return READERS[fmt](Path(path), split, **kw)


READERS: dict[str, Callable[..., FaceDataset]] = {
    "fer2013csv": read_fer2013_csv, "fer2013": read_fer2013_folders, "ferplus": read_ferplus,
    "rafdb": read_rafdb, "affectnet": read_affectnet, "folder": read_image_folder,
}  # fmt: skip
