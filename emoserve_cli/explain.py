"""`emoserve explain IMAGE`: Grad-CAM of a classifier on every face of a photo, as the service sees them.

The faces are found and aligned as the service does it (the store's detector, its threshold, the min-size
filter and largest-first order, then the classifier manifest's `Preprocessor`); each aligned crop is normalised
exactly as the service feeds it and explained with torch Grad-CAM (training.explain), mirror-averaged when the
model is served so, with the manifest's temperature and prior correction on the probabilities. Writes one sheet
PNG (a row per face: the crop, its overlay, label and probability) and the photo with the faces' numbered boxes.
Torch (the `train` extra) is imported inside the command, so `emoserve` itself does not need it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from emoserve_cli.common import err_console, fail, handle_errors, load_settings, open_store, out_console

if TYPE_CHECKING:
    import numpy as np
    import torch.nn as nn

    from model_store import ModelStore
    from model_store.manifest import PriorCorrection
    from service.pipeline.align import Preprocessor
    from service.pipeline.detectors import DetectedFace
    from service.settings import Settings

TRAIN_EXTRAS = "emoserve explain needs the training extras: pip install emoserve[train]"
CELL = 192  # px: width of each enlarged face on the sheet


@dataclass(frozen=True)
class Explained:
    """A torch model with what the service would do around it."""

    name: str
    net: nn.Module
    labels: list[str]
    pre: Preprocessor
    flip: bool  # served mirror-averaged
    temperature: float
    prior: PriorCorrection | None = None  # the manifest's served prior correction

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """What the service serves for these logits: softmax at the temperature, then the prior correction."""
        from model_store.tensors import correct_prior, softmax

        probs = softmax(logits, self.temperature)
        return probs if self.prior is None else correct_prior(probs, self.prior.prior, self.prior.strength)


def _store_model(ref: str, store: ModelStore, settings: Settings) -> Explained:
    from model_store import ModelStoreError
    from service.pipeline.align import Preprocessor
    from training.onnx_init import OnnxInitError, torch_model_from_store

    try:
        manifest = store.get(ref).manifest
        exact = f"{manifest.name}@{manifest.version}"
        net, labels = torch_model_from_store(exact, settings.model_root)
    except (ModelStoreError, OnnxInitError) as exc:
        fail(str(exc), 2)
    run = manifest.provenance.training
    flip = bool(run and run.config.get("flip_tta"))
    return Explained(exact, net, labels, Preprocessor.from_manifest(manifest), flip, manifest.temperature or 1.0,
                     manifest.prior_correction)  # fmt: skip


def _checkpoint_model(checkpoint: Path, arch: str | None, num_classes: int | None) -> Explained:
    """A torch checkpoint: its `default_cfg` gives the input (size, colour, mean/std); the default face template."""
    from model_store.manifest import InputSpec
    from service.pipeline.align import Preprocessor, default_template
    from training.explain import load_checkpoint_model

    if not checkpoint.is_file():
        fail(f"checkpoint {checkpoint} not found", 2)
    try:
        net, labels = load_checkpoint_model(checkpoint, arch, num_classes)
    except (ValueError, RuntimeError) as exc:  # no model name; weights that do not fit the architecture
        fail(f"cannot load {checkpoint}: {'; '.join(str(exc).split(chr(10)))}", 2)
    cfg: dict[str, Any] = getattr(net, "default_cfg")  # noqa: B009
    c, h, w = cfg["input_size"]
    color = "GRAY" if c == 1 else "RGB"
    spec = InputSpec(name="input", shape=["batch", c, h, w], color=color, size=(w, h), mean=cfg["mean"], std=cfg["std"])
    return Explained(checkpoint.name, net, labels, Preprocessor(spec, (w, h), default_template()), False, 1.0)


def _find_faces(
    bgr: np.ndarray, settings: Settings, store: ModelStore, threshold: float | None, max_faces: int | None
) -> list[DetectedFace]:
    """The faces `Pipeline._detect` would classify, in its order."""
    from model_store import ModelStoreError
    from service.pipeline.analyze import select_faces
    from service.pipeline.detectors import create_detector
    from service.runtime.sessions import SessionPool

    try:
        model = store.get(settings.detector)
    except ModelStoreError as exc:
        fail(str(exc), 2)
    pool = SessionPool(settings)
    try:
        detector = create_detector(model, pool.session_factory, max_side=settings.detector_max_side)
        found = detector.detect(bgr, threshold if threshold is not None else settings.detector_threshold)
    finally:
        pool.close()
    most = min(max_faces, settings.max_faces) if max_faces is not None else settings.max_faces
    return select_faces(found, settings.min_face_size, most)


def numbered_boxes(bgr: np.ndarray, boxes: list[list[float]]) -> np.ndarray:
    """The photo with each box drawn and numbered from 1 (the sheet's face numbers)."""
    import cv2

    img = bgr.copy()
    side = min(img.shape[:2])
    thick = max(2, round(side / 400))
    scale = max(0.6, side / 900)
    for i, (x1, y1, x2, y2) in enumerate(boxes, 1):
        p1, p2 = (round(x1), round(y1)), (round(x2), round(y2))
        cv2.rectangle(img, p1, p2, (0, 255, 255), thick, cv2.LINE_AA)
        text = str(i)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        tag_h = th + base + 2 * thick
        top = p1[1] - tag_h if p1[1] >= tag_h else p2[1]  # above the box, else below it
        cv2.rectangle(img, (p1[0], top), (p1[0] + tw + 2 * thick, top + tag_h), (0, 255, 255), -1)
        origin = (p1[0] + thick, top + th + thick)
        cv2.putText(img, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return img


@handle_errors
def explain(
    image: Annotated[
        Path,
        typer.Argument(help="A photo (its faces are found as the service finds them) or, with --crop, a face crop."),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="NAME@ALIAS of a store classifier our training made; with --checkpoint "
            "of a bare state_dict, its registry architecture.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Torch checkpoint (e.g. runs/<run>/best.pt) instead of a store model: "
            "input from its default_cfg, the default face template, no mirror averaging.",
        ),
    ] = None,
    crop: Annotated[
        bool, typer.Option("--crop", help="The image is one face crop: no detection, resized to the input.")
    ] = False,
    detector: Annotated[
        str | None, typer.Option("--detector", help="Face detector NAME@ALIAS (default: the service's).")
    ] = None,
    max_faces: Annotated[int | None, typer.Option("--max-faces", min=1, help="Most faces, largest first.")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Face score threshold.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes, when the checkpoint does not say.")] = None,
    target: Annotated[
        str | None, typer.Option(help="Class index or name to explain (default: each face's predicted).")
    ] = None,
    layer: Annotated[str | None, typer.Option(help="Grad-CAM layer (dotted module name).")] = None,
    features: Annotated[str | None, typer.Option(help="Also write a feature-map grid of this layer per face.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("explain"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the faces as JSON.")] = False,
) -> None:
    """Grad-CAM of an emotion classifier on each face of a photo, found and aligned as the service does it.

    OUT/<image>_explain.png: a row per face (the aligned crop, its Grad-CAM overlay, label, probability).

    OUT/<image>_faces.jpg: the photo with the faces' numbered boxes.

    Without a face (or with --crop) the whole image is explained as one face crop.
    """
    try:
        import torch

        from training.explain import explain_sheet, feature_grid, gradcam_logits
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        fail(TRAIN_EXTRAS, 1)
    import cv2
    import numpy as np

    from service.errors import EmoserveError
    from service.pipeline.decode import decode_image

    settings = load_settings(detector=detector)
    store = open_store(settings)
    if model and checkpoint is None and (model.endswith((".pt", ".pth")) or Path(model).is_file()):
        checkpoint, model = Path(model), None
    if not image.is_file():
        fail(f"cannot read image {image}: no such file", 2)
    try:
        bgr = decode_image(image.read_bytes(), settings.max_image_pixels)
    except (OSError, EmoserveError) as exc:
        fail(f"cannot read image {image}: {exc}", 2)
    if checkpoint is not None:
        ex = _checkpoint_model(checkpoint, model, num_classes)
    elif model and "@" in model:
        ex = _store_model(model, store, settings)
    else:
        fail("explain needs --model NAME@ALIAS (a store model) or --checkpoint FILE.pt", 2)
    cls = None
    if target is not None:
        if not (target.isdigit() and int(target) < len(ex.labels)) and target not in ex.labels:
            fail(f"--target {target}: not a class of {ex.name} ({', '.join(ex.labels)})", 2)
        cls = int(target) if target.isdigit() else ex.labels.index(target)

    faces = [] if crop else _find_faces(bgr, settings, store, threshold, max_faces)
    if not crop and not faces:
        err_console.print(f"no face found in {image.name} by {settings.detector}: explaining the whole image as one "
                          "face crop (--crop)", soft_wrap=True, markup=False)  # fmt: skip
    items: list[tuple[list[float], float | None, np.ndarray]]
    if faces:
        items = [([float(v) for v in f.box], float(f.score), ex.pre.warp(bgr, ex.pre.matrix(f.box, f.landmarks)))
                 for f in faces]  # fmt: skip
    else:
        whole = [0.0, 0.0, float(bgr.shape[1]), float(bgr.shape[0])]
        items = [(whole, None, cv2.resize(bgr, ex.pre.size, interpolation=cv2.INTER_AREA))]

    out.mkdir(parents=True, exist_ok=True)
    sheet_path = out / f"{image.stem}_explain.png"
    rows, results = [], []
    for i, (box, score, face) in enumerate(items, 1):
        x = torch.from_numpy(ex.pre.normalize([face]))  # exactly the service's classifier input
        heat, logits = gradcam_logits(ex.net, x, cls, layer, flip=ex.flip)
        probs = ex.probabilities(logits.numpy())[0]
        best = int(np.argmax(probs))
        if cls is None and best != int(logits.argmax()):  # the prior correction moved the served label: map it
            heat, _ = gradcam_logits(ex.net, x, best, layer, flip=ex.flip)
        shown = cls if cls is not None else best
        ranked = [int(k) for k in np.argsort(-probs)[:3]]
        caption = [f"{i}: {ex.labels[best]} {probs[best]:.2f}"]
        caption += [f"{ex.labels[k]} {probs[k]:.2f}" for k in ranked if k != best][:2]
        if shown != best:
            caption.append(f"map of: {ex.labels[shown]}")
        rows.append((face, heat, caption))
        result: dict[str, Any] = {
            "face": i,
            "box": [round(v, 1) for v in box],
            "score": None if score is None else round(score, 4),
            "label": ex.labels[best],
            "probability": round(float(probs[best]), 4),
            "target": ex.labels[shown],
            "probabilities": {label: round(float(p), 4) for label, p in zip(ex.labels, probs, strict=True)},
            "sheet": str(sheet_path),
        }
        if features:
            grid_path = out / f"{image.stem}_face{i}_features_{features.replace('.', '_')}.png"
            cv2.imwrite(str(grid_path), feature_grid(ex.net, x, features))
            result["features"] = str(grid_path)
        results.append(result)

    kind = f"{len(faces)} face{'s' * (len(faces) != 1)}" if faces else "one face crop"
    mirror = ", mirror-averaged" if ex.flip else ""
    title = f"{ex.name} Grad-CAM{mirror}: {image.name}, {kind}"
    cv2.imwrite(str(sheet_path), explain_sheet(rows, title, CELL))
    photo_path = None
    if faces:
        photo_path = out / f"{image.stem}_faces.jpg"
        cv2.imwrite(str(photo_path), numbered_boxes(bgr, [r["box"] for r in results]))
    if as_json:
        photo = None if photo_path is None else str(photo_path)
        mode = "faces" if faces else "crop"
        body = {"image": str(image), "model": ex.name, "mode": mode, "sheet": str(sheet_path), "photo": photo}
        print(json.dumps({**body, "faces": results}, indent=2))
        return
    for r in results:
        out_console.print(f"face {r['face']}: {r['label']} (p={r['probability']:.3f}), map of {r['target']}")
    out_console.print(f"sheet written to {sheet_path}")
    if photo_path is not None:
        out_console.print(f"numbered faces written to {photo_path}")


def register(app: typer.Typer) -> None:
    """Add `emoserve explain`."""
    app.command("explain")(explain)
