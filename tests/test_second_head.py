"""Two opinions per face: FER+ faces matched to their FER2013 JPEGs, a network with a second head trained on
both, and each head exported on its own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import shared_path
from tests.test_training import CLASSES, synthetic_faces, tiny_config
from training.data import EMOTIONS_7, EMOTIONS_8, FaceDataset, load_dataset
from training.data.second_opinion import SecondLabels, match_faces


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOSERVE_CACHE_DIR", str(tmp_path / "cache"))


def _faces(n: int, seed: int) -> np.ndarray:
    """n textured 48x48 grey images, smooth enough that JPEG keeps them close."""
    rng = np.random.default_rng(seed)
    blurred = [cv2.GaussianBlur(rng.uniform(0, 255, (48, 48)).astype(np.float32), (0, 0), 2.0) for _ in range(n)]
    return np.asarray([(b - b.mean()) * 3 + 128 for b in blurred]).clip(0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int = 75) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))


def test_match_faces_finds_jpeg_copies_and_refuses_strangers() -> None:
    reference = np.stack([_jpeg(f) for f in _faces(40, 0)])
    order = np.random.default_rng(1).permutation(40)[:30]
    query = np.concatenate([_faces(40, 0)[order], _faces(5, 2)])  # exact pixels, then faces not in `reference`
    idx = match_faces(query, reference)
    assert idx[:30].tolist() == order.tolist()
    assert (idx[30:] == -1).all()
    assert match_faces(query[:0], reference).shape == (0,)


def _fer_pair(root: Path, labels7: list[str], votes: list[list[int]]) -> tuple[Path, np.ndarray]:
    """FER+ (`ferplus/FER2013Train`) and FER2013 (`fer2013/train/<class>/`, JPEGs under other names, in another
    order) holding the same faces; returns (the FER+ root, the faces)."""
    faces = _faces(len(votes), 3)
    folder = root / "ferplus" / "FER2013Train"
    folder.mkdir(parents=True)
    with (folder / "label.csv").open("w", newline="") as f:
        w = csv.writer(f)
        for i, v in enumerate(votes):
            w.writerow([f"fer{i:07d}.png", "(0, 0, 48, 48)", *v])
            assert cv2.imwrite(str(folder / f"fer{i:07d}.png"), faces[i])
    for j, i in enumerate(np.random.default_rng(4).permutation(len(votes))):
        (root / "fer2013" / "train" / labels7[i]).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "fer2013" / "train" / labels7[i] / f"Training_{9000 + 37 * j}.jpg"), faces[i])
    for name in EMOTIONS_7:  # the reader wants all 7 class folders
        (root / "fer2013" / "train" / name).mkdir(parents=True, exist_ok=True)
    return root / "ferplus", faces


def test_ferplus_reader_attaches_the_original_labels(tmp_path: Path) -> None:
    # FER+ says happy, happy, neutral, sad; the original labels say happy, surprise, angry, sad.
    votes = [[0, 9, 1, 0, 0, 0, 0, 0, 0, 0], [0, 6, 4, 0, 0, 0, 0, 0, 0, 0],
             [8, 0, 0, 0, 2, 0, 0, 0, 0, 0], [0, 0, 0, 9, 0, 0, 0, 0, 1, 0]]  # fmt: skip
    root, _ = _fer_pair(tmp_path, ["happy", "surprise", "angry", "sad"], votes)
    ds = load_dataset(root, "train", "ferplus", fer2013="../fer2013")
    assert [EMOTIONS_8[t] for t in ds.targets] == ["happy", "happy", "neutral", "sad"]
    assert ds.second is not None and ds.second.labels == EMOTIONS_7 and ds.second.format == "fer2013"
    assert [EMOTIONS_7[t] for t in ds.second.targets] == ["happy", "surprise", "angry", "sad"]
    sub = ds.subset(np.array([2, 0])).resized(96, 96)
    assert sub.second is not None and sub.second.targets.tolist() == [0, 3]
    assert load_dataset(root, "train", "ferplus").second is None


def _two_head_splits(data: Path) -> tuple[FaceDataset, FaceDataset]:
    """The synthetic 4-class faces with a second, 3-class opinion that only depends on the pattern too
    (angry/happy -> "a", sad -> "b", surprise -> "c"), and one training image without it."""
    splits = []
    for split in ("train", "val"):
        ds = load_dataset(data, split, "folder")
        second = np.array([{"angry": 0, "happy": 0, "sad": 1, "surprise": 2}[ds.labels[t]] for t in ds.targets])
        if split == "train":
            second[0] = -1
        splits.append(FaceDataset(ds.images, ds.targets, ds.labels, split, "synthetic", None,
                                  SecondLabels(second, ["a", "b", "c"], "folder")))  # fmt: skip
    return splits[0], splits[1]


def test_second_head_trains_and_exports_each_head(tmp_path: Path) -> None:
    from model_store import ModelStore
    from training.checkpoints import HeadError, load_checkpoint
    from training.export import publish_run
    from training.models import create_model
    from training.train import train_run

    data = synthetic_faces(tmp_path / "data", per_class=150)
    splits = _two_head_splits(data)
    out = tmp_path / "run"
    metrics = train_run(tiny_config(epochs=2, second_head=0.5), None, out, log=lambda s: None, splits=splits)
    assert metrics["val_accuracy"] >= 0.6 and metrics["second_head"]["val_accuracy"] >= 0.6, metrics  # chance 0.25/0.33
    assert json.loads((out / "history.json").read_text())[-1]["second_val_acc"] >= 0.6

    full = torch.load(out / "best.pt", weights_only=True)
    n_main = splits[0].num_classes  # the folder reader's canonical 7, of which CLASSES has images
    assert full["config"]["num_classes"] == n_main + 3  # one network, both heads' outputs
    main, _, ck_main = load_checkpoint(out / "best.pt")
    second, cfg2, ck2 = load_checkpoint(out / "best.pt", head="folder")
    assert ck_main["config"]["classes"] == splits[0].labels and ck2["config"]["classes"] == ["a", "b", "c"]
    assert cfg2.format == "folder" and cfg2.data_kwargs == {}
    assert cfg2.second_head == 0.0 and "second_labels" not in ck2["config"]  # a one-head model from here on
    x = torch.randn(4, 1, 48, 48)
    whole = create_model("resnet18s", n_main + 3, 1, width=8, stem_stride=2)
    whole.load_state_dict(full["model"])
    with torch.no_grad():
        both = torch.cat([main(x), second(x)], 1)
        assert torch.allclose(both, whole.eval()(x), atol=1e-5)  # each head is its columns of the whole network
    with pytest.raises(HeadError, match="its heads are main and folder"):
        load_checkpoint(out / "best.pt", head="fer2013")

    # What else reads a best.pt reads the main head: init_from, and explain's checkpoint loader.
    from training.explain import load_checkpoint_model
    from training.train import init_from_checkpoint

    fresh = create_model("resnet18s", n_main, 1, width=8, stem_stride=2)
    assert init_from_checkpoint(fresh, out / "best.pt", splits[0].labels) == []
    explained, classes = load_checkpoint_model(out / "best.pt")
    assert classes == splits[0].labels
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), main(x), atol=1e-5)
        assert torch.allclose(explained(x), main(x), atol=1e-5)

    # The second head published alone: 3 labels, validated on data whose classes are its own.
    second_data = tmp_path / "second"
    for split in ("train", "val"):
        for name, letter in zip(CLASSES, ["a", "a", "b", "c"], strict=True):
            (second_data / split / letter).mkdir(parents=True, exist_ok=True)
            for f in (data / split / name).iterdir():
                (second_data / split / letter / f"{name}-{f.name}").write_bytes(f.read_bytes())
    store_root = tmp_path / "store"
    manifest = publish_run(out, second_data, "tiny-second", store_root, head="folder", log=lambda s: None)
    assert manifest.labels == ["a", "b", "c"] and "folder head (a, b, c)" in manifest.description
    assert manifest.metrics["folder_val"]["accuracy"] >= 0.6
    path = ModelStore(store_root).get("tiny-second@production").model_path
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(onnx_out, both[:, n_main:].numpy(), atol=1e-4)  # the two-head network's columns


def test_second_head_needs_second_labels(tmp_path: Path) -> None:
    from training.train import train_run

    data = synthetic_faces(tmp_path / "data", per_class=10, val_per_class=4)
    with pytest.raises(ValueError, match="second_head needs a dataset with second labels"):
        train_run(tiny_config(epochs=1, second_head=0.5), data, tmp_path / "run", log=lambda s: None)
    with pytest.raises(ValueError, match="cannot be negative"):
        tiny_config(second_head=-1.0)


def test_shared_ferplus_faces_all_find_their_fer2013_label() -> None:
    ferplus = shared_path("data", "ferplus")
    val = load_dataset(ferplus, "val", "ferplus", fer2013="../fer2013")
    assert val.second is not None
    has = val.second.targets >= 0
    assert has.all(), f"{int((~has).sum())} FER+ valid faces without a PublicTest match"
    agree = float((val.second.targets == val.targets).mean())  # the two conventions differ on a third of the faces
    assert 0.55 < agree < 0.8, agree


def test_a_second_head_starts_fresh_over_a_published_graph(tmp_path: Path) -> None:
    """A published graph has one head: a two-head run starts from it (main head mapped by label, the second head
    fresh), where a .pt init_from still refuses a second head."""
    from training.config import TrainConfig
    from training.export import publish_run
    from training.train import train_run

    data = synthetic_faces(tmp_path / "data", per_class=150)
    splits = _two_head_splits(data)
    train_run(tiny_config(epochs=2), None, tmp_path / "src", log=lambda s: None, splits=splits)
    m = publish_run(tmp_path / "src", data, "tiny-src", tmp_path / "store", shipped=None, log=lambda s: None)
    source = tmp_path / "store" / "tiny-src" / str(m.version) / "model.onnx"
    src_acc = m.metrics[next(iter(m.metrics))]["accuracy"]
    logs: list[str] = []
    cfg = tiny_config(epochs=1, lr=1e-7, second_head=0.5, init_from=str(source))  # barely moves: still the source
    metrics = train_run(cfg, None, tmp_path / "ft", log=logs.append, splits=splits)
    assert any("max |torch - onnx|" in line for line in logs), logs
    assert src_acc >= 0.6 and metrics["val_accuracy"] == pytest.approx(src_acc, abs=0.05)
    assert "second_head" in metrics  # the fresh second head was trained and scored beside the main one
    with pytest.raises(ValueError, match=r"\.pt init_from"):
        TrainConfig.from_dict({"second_head": 0.5, "init_from": "runs/x/best.pt"})
    with pytest.raises(ValueError, match="ensemble member"):  # its other members would be built with one head
        TrainConfig.from_dict({"second_head": 0.5, "init_from": "emotion-ferplus8@3#0"})
