"""Export: ONNX parity (and refusal on a broken export), publish with manifest/card, int8, store evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from model_store import ModelStore
from tests.test_training import synthetic_faces, tiny_config
from training import export as E


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, data folder) of a 2-epoch run on the synthetic dataset, with flip TTA in the export."""
    import os

    root = tmp_path_factory.mktemp("export")
    os.environ["EMOSERVE_CACHE_DIR"] = str(root / "cache")
    from training.train import train_run

    data = synthetic_faces(root / "data", per_class=150)
    train_run(tiny_config(epochs=2, flip_tta=True), data, root / "run", log=lambda s: None)
    return root / "run", data


def test_flip_tta_is_mirror_invariant() -> None:
    from training.models import create_model

    net = E.FlipTTA(create_model("resnet18s", 3, 1, width=8).eval())
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(net(x), net(torch.flip(x, dims=[3])), atol=1e-5)


def test_a_local_export_never_shadows_a_shipped_version(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A model exported into the local root under a shipped model's name gets the version after the shipped
    ones: it once took `@4` beside the shipped `emotion-ferplus8@4`, and the shipped production alias (4) then
    served the local export."""
    run, data = trained
    shipped = tmp_path / "shipped"
    E.publish_shipped(run, data, "emotion-shared", shipped_root=shipped, log=lambda s: None)  # shipped @1
    m = E.publish_run(run, data, "emotion-shared", tmp_path / "store", alias="candidate", shipped=shipped,
                      log=lambda s: None)  # fmt: skip
    store = ModelStore(tmp_path / "store", shipped=shipped)
    assert m.version == 2
    assert store.get("emotion-shared@production").layer == "shipped"
    assert store.get("emotion-shared@production").manifest.version == 1
    assert store.get("emotion-shared@candidate").manifest.version == 2
    import inspect

    assert inspect.signature(E.publish_run).parameters["shipped"].default == E.SHIPPED_ROOT  # what the CLI gets
    # as `emoserve export` calls it (no `shipped`): numbered over the package's own shipped layer
    packaged = ModelStore(tmp_path / "empty").versions("emotion-ferplus8")
    local = E.publish_run(run, data, "emotion-ferplus8", tmp_path / "cli", alias="candidate", log=lambda s: None)
    assert local.version == max(packaged) + 1
    assert ModelStore(tmp_path / "cli").get("emotion-ferplus8@production").layer == "shipped"


def test_export_parity_and_tamper_detection(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from training.checkpoints import load_checkpoint

    model, _, _ = load_checkpoint(trained[0] / "best.pt")
    path = E.export_onnx(model, tmp_path / "m.onnx", (1, 48, 48))
    assert list(tmp_path.iterdir()) == [path]  # one self-contained file
    g = onnx.load(str(path))
    assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(0).normal(size=(64, 1, 48, 48)).astype(np.float32)
    assert E.parity_check(model, path, x) <= 1e-4
    init = max(g.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[: arr.size // 2] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(g, str(tmp_path / "bad.onnx"))
    with pytest.raises(E.ParityError, match="parity"):
        E.parity_check(model, tmp_path / "bad.onnx", x)


def test_publish_writes_manifest_and_card(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = trained
    store_root = tmp_path / "store"
    m = E.publish_run(run, data, "emotion-test", store_root, shipped=None, int8=True, log=lambda s: None)
    store = ModelStore(store_root, shipped=None)
    resolved = store.get("emotion-test@production")
    assert resolved.manifest.version == m.version == 1
    assert m.labels == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert m.input.color == "GRAY" and m.input.size == (48, 48) and m.input.shape == ["batch", 1, 48, 48]
    assert m.family == "resnet18s" and m.temperature is not None and m.temperature > 0
    (metrics,) = m.metrics.values()
    acc = metrics["accuracy"]
    assert acc >= 0.6 and 0.0 < metrics["balanced_accuracy"] <= 1.0
    assert m.provenance.training is not None and m.provenance.training.dataset_fingerprint
    assert m.provenance.training.config["flip_tta"] is True
    assert {f.path for f in m.files} == {"model.onnx", "model.int8.onnx"}
    assert metrics["int8_accuracy"] >= acc - 0.003  # kept only within 0.3 points of the float graph

    # The service runs the int8 graph on the CPU unless EMOSERVE_INT8=false; both answer alike.
    from model_store.tensors import normalize
    from service.runtime import SessionPool
    from service.settings import get_settings
    from training.data import load_dataset

    x = normalize(load_dataset(data, "val").images[:32, :, :, None], m.input)
    runs = {}
    for int8 in (True, False):
        session = SessionPool(get_settings(model_root=store_root, int8=int8)).load(resolved)
        assert session.variant == ("int8" if int8 else "float")
        runs[int8] = session.run(None, x)[0]
    assert not np.array_equal(runs[True], runs[False])  # another graph
    assert (runs[True].argmax(1) == runs[False].argmax(1)).mean() >= 0.9

    from training.evaluate import evaluate_store_model

    res = evaluate_store_model("emotion-test@production", data, "val", store_root=store_root)
    assert res["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert res["balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"], abs=1e-6)
    card = (resolved.path / "MODEL_CARD.md").read_text()
    assert "Validation metrics" in card and f"balanced_accuracy {metrics['balanced_accuracy']:.4f}" in card
    (line,) = re.findall(r"^- per-class recall: (.*)$", card, re.M)
    recall = {lab: float(r) for lab, r in (item.split(": ") for item in line.split(", "))}
    present = {
        c: v["recall"] for c, v in res["per_class"].items() if v["support"]
    }  # the classes of synthetic_faces, not all 7
    assert list(recall) == list(present) and len(present) < len(m.labels)
    assert list(recall.values()) == pytest.approx(list(present.values()), abs=5e-4)
    assert np.mean(list(recall.values())) == pytest.approx(metrics["balanced_accuracy"], abs=1e-3)


def test_publish_refused_on_parity_failure(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = E.export_onnx

    def broken_export(
        model: torch.nn.Module, path: Path, input_size: tuple[int, int, int], outputs: tuple[str, ...] = ("logits",)
    ) -> Path:
        real_export(model, path, input_size, outputs=outputs)
        g = onnx.load(str(path))
        init = max(g.graph.initializer, key=lambda t: np.prod(t.dims))
        arr = onnx.numpy_helper.to_array(init) * 3.0
        init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
        onnx.save(g, str(path))
        return path

    monkeypatch.setattr(E, "export_onnx", broken_export)
    store_root = tmp_path / "store"
    with pytest.raises(E.ParityError):
        E.publish_run(trained[0], trained[1], "emotion-bad", store_root, shipped=None, log=lambda s: None)
    assert ModelStore(store_root, shipped=None).names() == []


def test_evaluate_shared_classes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """An 8-label model on 7-class data is scored on the shared classes."""
    import cv2

    from training.evaluate import evaluate_store_model

    run, data = trained
    store_root = tmp_path / "store"
    m = E.publish_run(run, data, "emotion-seven", store_root, shipped=None, log=lambda s: None)
    manifest_path = store_root / "emotion-seven" / str(m.version) / "manifest.json"
    assert manifest_path.exists(), sorted(p.relative_to(store_root) for p in store_root.rglob("*"))
    ferplus = tmp_path / "ferplus" / "FER2013Valid"
    ferplus.mkdir(parents=True)
    rows = []
    for i, img in enumerate(sorted((data / "val" / "happy").glob("*.png"))[:5]):
        cv2.imwrite(str(ferplus / f"f{i}.png"), cv2.imread(str(img), cv2.IMREAD_GRAYSCALE))
        rows.append(f'f{i}.png,"(0, 0, 48, 48)",0,10,0,0,0,0,0,0,0,0')
    rows.append('c.png,"(0, 0, 48, 48)",0,0,0,0,0,0,0,10,0,0')  # contempt: not a shared class
    cv2.imwrite(str(ferplus / "c.png"), np.zeros((48, 48), np.uint8))
    (ferplus / "label.csv").write_text("\n".join(rows) + "\n")
    res = evaluate_store_model(f"emotion-seven@{m.version}", tmp_path / "ferplus", "val", store_root=store_root)
    assert res["n"] == 6 and res["n_shared"] == 5 and "contempt" not in res["shared_classes"]
    assert 0.0 <= res["accuracy_shared"] <= 1.0
    json.dumps({k: v for k, v in res.items() if k != "_report"})


def test_publish_shipped_layout(trained: tuple[Path, Path], tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    m = E.publish_shipped(trained[0], trained[1], "emotion-ship", shipped, log=lambda s: None)
    saved = json.loads((shipped / "emotion-ship" / "aliases.json").read_text())
    assert saved["aliases"] == {"production": 1}
    assert [(h["alias"], h["version"], h["previous"]) for h in saved["history"]] == [("production", 1, None)]
    assert sorted(p.name for p in (shipped / "emotion-ship" / "1").iterdir()) == [
        "MODEL_CARD.md", "manifest.json", "model.onnx",
    ]  # fmt: skip
    assert not (shipped / ".staging").exists()
    assert sorted(p.name for p in (shipped / "emotion-ship").iterdir()) == ["1", "aliases.json"]
    store = ModelStore(tmp_path / "root", shipped=shipped)
    assert store.get("emotion-ship@production").layer == "shipped" and m.version == 1


def test_init_from_published_onnx(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Fine-tuning from a BN-folded ONNX artifact: the torch model reproduces it, in eval and in train mode."""
    from training.data import load_dataset
    from training.loop import Runtime, to_tensor
    from training.models import create_model
    from training.onnx_init import OnnxInitError
    from training.train import init_model, norm_of

    run, data = trained
    m = E.publish_run(run, data, "emotion-src", tmp_path / "store", shipped=None, log=lambda s: None)
    onnx_path = tmp_path / "store" / "emotion-src" / str(m.version) / "model.onnx"
    assert not [n for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "BatchNormalization"]
    train = load_dataset(data, "train", "folder")
    val = load_dataset(data, "val", "folder")
    model = create_model("resnet18s", train.num_classes, 1, width=8, stem_stride=2)
    logs: list[str] = []
    assert init_model(model, str(onnx_path), train, logs.append) == []
    assert "max |torch - onnx|" in logs[-1]
    x = to_tensor(val.images, *norm_of(model), Runtime(torch.device("cpu"), None, False))
    with torch.no_grad():
        eval_logits = model.eval()(x)
        train_logits = model.train()(x)  # batch statistics instead of the re-estimated running ones
    acc = float((eval_logits.argmax(1).numpy() == val.targets).mean())
    assert acc == pytest.approx(m.metrics[next(iter(m.metrics))]["accuracy"], abs=0.05)
    assert float((train_logits.argmax(1) == eval_logits.argmax(1)).float().mean()) > 0.9

    wider = create_model("resnet18s", train.num_classes, 1, width=16, stem_stride=2)
    with pytest.raises(OnnxInitError, match="conv 0"):
        init_model(wider, str(onnx_path), train, logs.append)


def test_explain_store_model(trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`emoserve explain IMAGE --model NAME@ALIAS` rebuilds the torch model from the artifact; others are refused."""
    import cv2
    import typer
    from typer.testing import CliRunner

    from emoserve_cli import explain
    from tests.helpers.tiny_models import classifier_draft, tiny_classifier_onnx
    from training import compare

    run, data = trained
    root = tmp_path / "store"
    E.publish_run(run, data, "emotion-src", root, shipped=None, log=lambda s: None)
    store = ModelStore(root, shipped=None)
    store.publish(classifier_draft("tiny-emotion"), {"model.onnx": tiny_classifier_onnx(tmp_path / "t.onnx")})
    monkeypatch.setenv("EMOSERVE_MODEL_ROOT", str(root))
    app = typer.Typer()
    explain.register(app)
    compare.register(app)  # two commands, so the command name is part of the arguments
    image = next((data / "val" / "happy").glob("*.png"))
    res = CliRunner().invoke(app, ["explain", str(image), "--model", "emotion-src@production", "--out",
                                   str(tmp_path / "out"), "--json", "--crop"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    face = out["faces"][0]
    assert face["label"] == "happy" and face["probabilities"]["happy"] > 0.5  # the trained model, not a fresh one
    sheet = cv2.imread(out["sheet"])
    assert out["model"] == "emotion-src@1" and sheet is not None and sheet.shape[0] > 192
    res = CliRunner().invoke(app, ["explain", str(image), "--model", "tiny-emotion@1", "--crop"])
    assert res.exit_code == 2 and "no training config" in res.output


def test_publish_ensemble_rebuild_and_explain(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`emoserve export RUN RUN`: one ONNX graph whose logits are the mean of the members'; it can be rebuilt
    in torch (Grad-CAM sums the members' maps) and runs that cannot be averaged are refused."""
    import typer
    from typer.testing import CliRunner

    import emoserve_cli.train as cli
    from training.checkpoints import load_checkpoint
    from training.explain import gradcam_logits
    from training.models.ensemble import LogitMean
    from training.onnx_init import torch_model_from_store
    from training.train import train_run

    run, data = trained
    second = tmp_path / "seed1"
    train_run(tiny_config(epochs=1, flip_tta=True, seed=1), data, second, log=lambda s: None)
    root = tmp_path / "store"
    monkeypatch.setenv("EMOSERVE_MODEL_ROOT", str(root))
    app = typer.Typer()
    cli.register(app)
    res = CliRunner().invoke(app, ["export", str(run), str(second), "--data", str(data), "--name", "emotion-ens"])
    assert res.exit_code == 0, res.output
    resolved = ModelStore(root, shipped=None).get("emotion-ens@production")
    m = resolved.manifest
    assert m.family == "ensemble-2x-resnet18s" and m.input.size == (48, 48)
    assert m.provenance.training is not None
    assert [c["seed"] for c in m.provenance.training.config["ensemble"]] == [0, 1]
    assert "the mean of the logits of 2 runs" in (resolved.path / "MODEL_CARD.md").read_text()

    x = np.random.default_rng(1).normal(size=(8, 1, 48, 48)).astype(np.float32)
    with torch.no_grad():
        members = [E.FlipTTA(load_checkpoint(d / "best.pt")[0]) for d in (run, second)]
        expected = sum(net(torch.from_numpy(x)).numpy() for net in members) / 2
        single = members[0](torch.from_numpy(x)).numpy()
    got = E.ort_run(resolved.model_path, x)
    assert np.abs(got - expected).max() < 1e-4 and np.abs(got - single).max() > 1e-3

    net, labels = torch_model_from_store("emotion-ens@production", root)
    assert isinstance(net, LogitMean) and labels == m.labels
    with torch.no_grad():
        assert np.abs(E.FlipTTA(net)(torch.from_numpy(x)).numpy() - got).max() < 1e-3
    heat, logits = gradcam_logits(net, torch.from_numpy(x[:1]))
    assert heat.shape == (48, 48) and float(heat.max()) == pytest.approx(1.0) and logits.shape == (1, 7)

    # a published model as a member (rebuilt from its ONNX): the same ensemble; an ensemble is no member
    res = CliRunner().invoke(app, ["export", str(run), "--data", str(data), "--name", "emotion-one"])
    assert res.exit_code == 0, res.output

    def export_same_ensemble(sources: list[str], version: int, seeds: list[int]) -> None:
        """`emoserve export SOURCES` publishes emotion-ens@version with the first ensemble's outputs."""
        res = CliRunner().invoke(app, ["export", *sources, "--data", str(data), "--name", "emotion-ens"])
        assert res.exit_code == 0, res.output
        made = ModelStore(root, shipped=None).get(f"emotion-ens@{version}")
        assert np.abs(E.ort_run(made.model_path, x) - got).max() < 1e-4
        assert made.manifest.provenance.training is not None
        assert [c["seed"] for c in made.manifest.provenance.training.config["ensemble"]] == seeds

    export_same_ensemble(["emotion-one@1", str(second)], 2, [0, 1])
    res = CliRunner().invoke(app, ["export", "emotion-ens@1", str(second), "--data", str(data)], env={"COLUMNS": "200"})
    assert res.exit_code != 0 and "itself an ensemble" in res.output and "emotion-ens@1#K" in res.output
    # one member of a published ensemble (NAME@ALIAS#K): swapping members gives the same mean
    export_same_ensemble(["emotion-ens@1#1", "emotion-ens@1#0"], 3, [1, 0])
    for bad in ("emotion-ens@1#2", "emotion-ens@1#x", "emotion-one@1#0"):
        res = CliRunner().invoke(app, ["export", bad, str(run), "--data", str(data)], env={"COLUMNS": "200"})
        assert res.exit_code != 0 and "is no ensemble with a member" in res.output, (bad, res.output)

    from training.data import load_dataset
    from training.models import create_model
    from training.onnx_init import OnnxInitError
    from training.train import init_model

    with pytest.raises(OnnxInitError, match="ensemble of 2"):
        init_model(create_model("resnet18s", 7, 1, width=8, stem_stride=2), str(resolved.model_path),
                   load_dataset(data, "train", "folder"))  # fmt: skip
    # fine-tuning from one member (init_from NAME@ALIAS#K): the network starts as that member's run
    train_split = load_dataset(data, "train", "folder")
    student = create_model("resnet18s", 7, 1, width=8, stem_stride=2)
    assert init_model(student, "emotion-ens@1#1", train_split, log=lambda s: None) == []
    with torch.no_grad():
        have = E.FlipTTA(student.eval())(torch.from_numpy(x)).numpy()
        want = members[1](torch.from_numpy(x)).numpy()
    assert np.abs(have - want).max() < 1e-3
    assert np.abs(have - single).max() > 1e-3  # not member 0
    # a network at another input size (the graph's input is fixed at 48x48): loaded and checked at 48x48
    logs: list[str] = []
    larger = create_model("resnet18s", 7, 1, width=8, stem_stride=2, input_size=64)
    assert init_model(larger, "emotion-ens@1#1", train_split.resized(64, 64), log=logs.append) == []
    assert any("loaded and checked at 48x48" in line for line in logs), logs
    with torch.no_grad():
        assert np.abs(E.FlipTTA(larger.eval())(torch.from_numpy(x)).numpy() - want).max() < 1e-3
    with pytest.raises(OnnxInitError, match="no ensemble with a member"):
        init_model(create_model("resnet18s", 7, 1, width=8, stem_stride=2), "emotion-ens@1#2", train_split)

    no_flip = tmp_path / "noflip"
    train_run(tiny_config(epochs=1, flip_tta=False), data, no_flip, log=lambda s: None)
    res = CliRunner().invoke(app, ["export", str(run), str(no_flip), "--data", str(data)], env={"COLUMNS": "200"})
    assert res.exit_code != 0 and "flip TTA differ" in res.output
    res = CliRunner().invoke(app, ["export", str(tmp_path / "nothing")], env={"COLUMNS": "200"})
    assert res.exit_code != 0 and "no best.pt" in res.output


def test_onnx_init_loads_every_dense_layer(tmp_path: Path) -> None:
    """The method's MobileNet has dense layers before its head (channel attention, a 256 layer): each is loaded
    in execution order, the last one by label, and the rebuilt torch model reproduces the graph."""
    from training.models import create_model
    from training.onnx_init import init_from_onnx, onnx_params

    labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    torch.manual_seed(0)
    src = create_model("mobilenet_fer", 7, 1, width_mult=0.35, input_size=64)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            src.train()(torch.randn(16, 1, 64, 64))
    path = E.export_onnx(src.eval(), tmp_path / "m.onnx", (1, 64, 64))
    _, dense = onnx_params(path)
    assert [w.shape[0] for w, _ in dense][-1] == 7 and len(dense) == 4
    dst = create_model("mobilenet_fer", 7, 1, width_mult=0.35, input_size=64)
    x = torch.randn(32, 1, 64, 64)
    init_from_onnx(dst, path, labels, labels, x)
    with torch.no_grad():
        assert np.abs(dst.eval()(x).numpy() - E.ort_run(path, x.numpy())).max() < 1e-4


def test_distill_from_published_teacher(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teacher runs as its manifest says (it reproduces its own published accuracy); its probabilities are
    mapped to the dataset's classes by name; a run trained against them learns."""
    from training.data import load_dataset
    from training.distill import DistillError, distilled_targets, mapped_probs, teacher_logits
    from training.train import train_run

    run, data = trained
    m = E.publish_run(run, data, "emotion-teacher", tmp_path / "store", shipped=None, log=lambda s: None)
    onnx_path = str(tmp_path / "store" / "emotion-teacher" / str(m.version) / "model.onnx")
    val = load_dataset(data, "val", "folder")
    logits, labels = teacher_logits(onnx_path, val.images, batch_size=7)
    assert labels == val.labels
    ran: list[int] = []  # the second call reads the cached logits: the teacher does not run again
    import training.distill as distill_module

    real = distill_module.onnx_logits

    def counted(*args: Any, **kwargs: Any) -> np.ndarray:
        ran.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(distill_module, "onnx_logits", counted)
    np.testing.assert_array_equal(teacher_logits(onnx_path, val.images)[0], logits)
    teacher_logits(onnx_path, val.images[:-1])  # other images: computed
    monkeypatch.undo()
    assert ran == [1]
    from training.distill import teacher_key
    from training.onnx_init import resolve_source

    manifest, path = resolve_source(onnx_path)  # other preprocessing, other logits: the key changes with it
    moved = manifest.model_copy(update={"inputs": [manifest.input.model_copy(update={"mean": [0.25]})]})
    assert teacher_key(path, manifest, val.images) != teacher_key(path, moved, val.images)
    published = m.metrics[next(iter(m.metrics))]["accuracy"]
    assert float((logits.argmax(1) == val.targets).mean()) == pytest.approx(published, abs=1e-6)
    # RGB faces are converted to the gray the teacher's manifest asks for, as `emoserve evaluate` does
    rgb_logits, _ = teacher_logits(onnx_path, np.repeat(val.images[..., None], 3, axis=3))
    np.testing.assert_allclose(rgb_logits, logits, atol=1e-4)

    # teacher classes in another order, one missing and one extra: columns follow the dataset's labels
    z = np.array([[2.0, 0.0, 1.0, 9.0]], np.float32)
    probs = mapped_probs(z, ["happy", "sad", "angry", "contempt"], ["angry", "happy", "fear", "sad"], temperature=1.0)
    e = np.exp([1.0, 2.0, 0.0])
    np.testing.assert_allclose(probs[0], [e[0] / e.sum(), e[1] / e.sum(), 0.0, e[2] / e.sum()], rtol=1e-6)
    assert mapped_probs(z, ["happy", "sad", "angry", "contempt"], ["angry", "happy"], 100.0)[0, 0] > 0.49
    with pytest.raises(DistillError, match="share none"):
        mapped_probs(z, ["a", "b", "c", "d"], ["angry"], 1.0)

    train = load_dataset(data, "train", "folder")
    hard = distilled_targets(train, train.targets, onnx_path, 0.0, 2.0, log=lambda s: None)
    np.testing.assert_array_equal(hard.argmax(1), train.targets)
    np.testing.assert_allclose(hard.sum(1), 1.0, rtol=1e-6)
    mixed = distilled_targets(train, train.targets, onnx_path, 0.5, 2.0, log=lambda s: None)
    assert mixed.max(1).min() >= 0.5 and mixed.max(1).max() < 1.0
    logs: list[str] = []
    out = train_run(tiny_config(epochs=2, distill_from=onnx_path, distill_weight=0.5), data, tmp_path / "student",
                    log=logs.append)  # fmt: skip
    assert any("teacher agrees with" in line for line in logs)
    assert out["val_accuracy"] >= 0.6, out  # chance is 0.25
    with pytest.raises(ValueError, match="distill_weight"):
        tiny_config(distill_from=onnx_path, distill_weight=1.5)


def test_add_cam_reexports_a_published_model(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model published without maps gets them as a new version (same logits, an `explain` block, a card
    paragraph); a model that has them is refused, and so is a network without pooling + linear head."""
    import typer
    from typer.testing import CliRunner

    import emoserve_cli.train as cli
    from training.checkpoints import load_checkpoint
    from training.models import create_model
    from training.models.cam import CamNet, CamUnsupported
    from training.onnx_run import ort_run, ort_session

    run, data = trained
    root = tmp_path / "store"
    m = E.publish_run(run, data, "emotion-src", root, shipped=None, log=lambda s: None)
    assert m.explain is not None and m.explain.flip_averaged and [o.name for o in m.outputs] == ["logits", "cam"]
    model, _, _ = load_checkpoint(run / "best.pt")  # the same model as published before maps existed
    plain = E.export_onnx(E.FlipTTA(model), tmp_path / "plain.onnx", (1, 48, 48))
    draft = m.model_dump(mode="json", exclude={"version", "files", "created", "explain"})
    draft["outputs"] = draft["outputs"][:1]
    store = ModelStore(root, shipped=None)
    old = store.publish(draft, {"model.onnx": plain})
    assert old.explain is None
    monkeypatch.setenv("EMOSERVE_MODEL_ROOT", str(root))
    app = typer.Typer()
    cli.register(app)
    res = CliRunner().invoke(app, ["export", f"emotion-src@{old.version}", "--add-cam", "--alias", "candidate"])
    assert res.exit_code == 0, res.output
    new = store.get("emotion-src@candidate")
    assert new.manifest.version == old.version + 1 and new.manifest.explain == m.explain
    assert new.manifest.metrics == old.metrics and new.manifest.labels == old.labels
    x = np.random.default_rng(0).random((8, 1, 48, 48), dtype=np.float32)
    logits, cam = ort_session(new.model_path).run(None, {"input": x})
    assert np.abs(logits - ort_run(plain, x)).max() <= 1e-4
    assert cam.shape[:2] == (8, len(old.labels or []))
    assert "## Explanations" in (new.path / "MODEL_CARD.md").read_text()
    res = CliRunner().invoke(app, ["export", "emotion-src@candidate", "--add-cam"])
    assert res.exit_code == 2 and "already outputs class activation maps" in res.output
    with pytest.raises(CamUnsupported):
        CamNet(create_model("mobilenet_fer", 7, 1))


def test_prior_correction_is_published_and_served(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """`--prior-correction`: the manifest carries the training prior; the store's served probabilities (what the
    service and `emoserve evaluate` use) apply it, and the manifest's metrics are those of the served ones."""
    from model_store.tensors import probabilities, softmax
    from training.evaluate import evaluate_store_model

    run, data = trained
    store_root = tmp_path / "store"
    plain = E.publish_run(run, data, "tiny-prior", store_root, log=lambda s: None)
    fixed = E.publish_run(run, data, "tiny-prior", store_root, prior_correction=1.0, log=lambda s: None)
    assert plain.prior_correction is None and fixed.prior_correction is not None
    prior = np.array(fixed.prior_correction.prior)
    assert fixed.prior_correction.strength == 1.0 and prior.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(prior, 1 / 7)  # 150 faces in each of 4 classes; the 3 unseen get the largest frequency
    assert fixed.metrics["folder_val_uncorrected"]["accuracy"] == plain.metrics["folder_val"]["accuracy"]
    served = evaluate_store_model(f"tiny-prior@{fixed.version}", data, "val", store_root=store_root)
    assert served["accuracy"] == pytest.approx(fixed.metrics["folder_val"]["accuracy"])
    z = np.random.default_rng(0).normal(size=(5, len(prior)))
    expected = softmax(z, fixed.temperature or 1.0) / prior
    assert np.allclose(probabilities(fixed, z), expected / expected.sum(1, keepdims=True))
    assert np.allclose(probabilities(plain, z), softmax(z, plain.temperature or 1.0))


def test_class_prior_follows_the_targets_trained_on() -> None:
    from training.metrics import class_prior

    targets = np.array([0, 0, 0, 1])
    assert class_prior(targets, ["a", "b"], ["b", "a", "c"]) == pytest.approx([1 / 7, 3 / 7, 3 / 7])
    soft = np.array([[0.5, 0.5], [1.0, 0.0]])  # vote distributions: the mean, not the majority
    assert class_prior(np.array([0, 0]), ["a", "b"], ["a", "b"], soft) == pytest.approx([0.75, 0.25])


def test_prior_correction_refusals(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A balanced run learnt no prior; the CLI says what `--head` and `--add-cam` need, before any work."""
    from typer.testing import CliRunner

    from emoserve_cli import app

    run, data = trained
    ck = torch.load(run / "best.pt", weights_only=True)
    ck["config"]["augment"] = "balanced"
    (tmp_path / "balanced").mkdir()
    torch.save(ck, tmp_path / "balanced" / "best.pt")
    with pytest.raises(E.ExportRefused, match="balanced its classes"):
        E.publish_run(tmp_path / "balanced", data, "tiny-b", tmp_path / "store", prior_correction=0.5,
                      log=lambda s: None)  # fmt: skip
    for args, says in ((["--head", "fer2013"], "give it its own with --name"),
                       (["--add-cam", "--prior-correction", "0.5"], "do not apply")):  # fmt: skip
        res = CliRunner().invoke(app, ["export", str(run), *args])
        assert res.exit_code == 2 and says in " ".join(res.output.split()), res.output


def test_explain_serves_the_corrected_label(trained: tuple[Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`emoserve explain` says what the service says: with a strong prior correction against "happy", a happy
    face's served label is another class, and explain's label and probabilities follow the manifest."""
    import onnxruntime as ort
    from typer.testing import CliRunner

    from emoserve_cli import app
    from model_store.tensors import normalize, probabilities

    run, data = trained
    root = tmp_path / "store"
    plain = E.publish_run(run, data, "tiny-explain", root, shipped=None, log=lambda s: None)
    store = ModelStore(root, shipped=None)
    src = store.get("tiny-explain@1")
    prior = [0.97 if c == "happy" else 0.005 for c in plain.labels]
    draft = plain.model_dump(mode="json", exclude={"version", "files"})
    draft["prior_correction"] = {"prior": [p / sum(prior) for p in prior], "strength": 2.0}
    draft["temperature"] = 1.0  # the tiny model's fitted one is so low that no prior would move a label
    fixed = store.publish(draft, {"model.onnx": src.model_path})
    image = next((data / "val" / "happy").glob("*.png"))
    monkeypatch.setenv("EMOSERVE_MODEL_ROOT", str(root))
    res = CliRunner().invoke(app, ["explain", str(image), "--model", f"tiny-explain@{fixed.version}", "--out",
                                   str(tmp_path / "out"), "--json", "--crop"])  # fmt: skip
    assert res.exit_code == 0, res.output
    face = json.loads(res.stdout)["faces"][0]
    import cv2

    size = fixed.input.size or (48, 48)
    pixels = cv2.resize(cv2.imread(str(image), cv2.IMREAD_GRAYSCALE), size, interpolation=cv2.INTER_AREA)
    sess = ort.InferenceSession(str(src.model_path), providers=["CPUExecutionProvider"])
    raw = sess.run(None, {sess.get_inputs()[0].name: normalize(pixels[None, :, :, None], fixed.input)})[0]
    served = probabilities(fixed, raw)[0]
    assert probabilities(plain, raw)[0].argmax() == plain.labels.index("happy")
    assert face["label"] == fixed.labels[int(served.argmax())] != "happy"
    assert face["probabilities"][face["label"]] == pytest.approx(served.max(), abs=0.02)


def test_prior_correction_manifest_is_validated() -> None:
    from pydantic import ValidationError

    from model_store import Manifest

    base = json.loads((Path(__file__).parents[1] / "releases" / "emotion-fer7" / "4" / "manifest.json").read_text())
    Manifest.model_validate({**base, "prior_correction": {"prior": [1 / 7] * 7, "strength": 0.5}})
    for bad in ({"prior": [1 / 6] * 6, "strength": 0.5}, {"prior": [0.0] + [1 / 6] * 6, "strength": 0.5},
                {"prior": [1 / 7] * 7, "strength": 3.0}):  # fmt: skip
        with pytest.raises(ValidationError):
            Manifest.model_validate({**base, "prior_correction": bad})
