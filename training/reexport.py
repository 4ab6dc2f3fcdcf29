"""Re-export a published model with a class-activation-map output, keeping its weights, labels and metrics.

    manifest = add_cam("emotion-ferplus8@3", store_root)     # publishes emotion-ferplus8@<next>

The torch graph is rebuilt from the manifest's training config and the ONNX weights
(`torch_model_from_store`), wrapped in `CamNet` (mirror averaging as the manifest's config says) and
exported again. Publishing is refused when the new graph's logits differ from the old graph's by more
than `PARITY_ATOL` on random inputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model_store import Manifest, ModelStore
from model_store.tensors import normalize
from training.export import OUTPUT_NAME, PARITY_ATOL, ParityError, cam_spec, explain_card_section, export_onnx
from training.models.cam import CAM_OUTPUT, CamNet
from training.onnx_init import resolve_source, torch_model_from_store
from training.onnx_run import ort_run


def add_cam(
    ref: str, store_root: Path, *, shipped: Path | None = None, alias: str | None = None,
    log: Callable[[str], Any] = print,
) -> Manifest:  # fmt: skip
    """Publish `ref` again, as the next version of its name in `store_root`, with a `cam` output."""
    manifest, old_path = resolve_source(ref, store_root)
    if manifest.explain is not None:
        raise ValueError(f"{ref} already outputs class activation maps ({manifest.explain.output!r})")
    model, _ = torch_model_from_store(ref, store_root)
    run = manifest.provenance.training
    flip = bool(run and run.config.get("flip_tta"))
    graph = CamNet(model, flip).eval()  # CamUnsupported for a network without global pooling and a linear head
    c, h, w = (int(v) for v in model.default_cfg["input_size"])  # type: ignore[index]
    size = (c, h, w)
    pixels = np.random.default_rng(0).integers(0, 256, (32, size[1], size[2], size[0]), dtype=np.uint8)
    x = normalize(pixels, manifest.input)  # random images fed as the service feeds them
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(graph, Path(tmp) / "model.onnx", size, outputs=(OUTPUT_NAME, CAM_OUTPUT))
        diff = float(np.abs(ort_run(path, x) - ort_run(old_path, x)).max())
        if not diff <= PARITY_ATOL:
            raise ParityError(f"{ref}: the re-exported logits differ from the published graph's by {diff:.2e}")
        log(f"[export] {ref}: logits within {diff:.1e} of the published graph")
        spec = cam_spec(graph, size, flip)
        draft = manifest.model_dump(mode="json", exclude={"version", "files", "created", "schema_version"})
        draft["outputs"] = [o for o in draft["outputs"] if o["name"] != CAM_OUTPUT] + [spec["output"]]
        draft["explain"] = spec["explain"]
        note = (f"{manifest.name}@{manifest.version} re-exported with a class-activation-map output `{CAM_OUTPUT}`: "
                f"the same weights, logits within {diff:.1e}")  # fmt: skip
        earlier = draft["provenance"].get("notes")
        draft["provenance"]["notes"] = f"{earlier}; {note}" if earlier else note
        card_path = old_path.parent / "MODEL_CARD.md"
        card = card_path.read_text(encoding="utf-8") if card_path.is_file() else f"# {manifest.name}\n"
        card = card.rstrip() + f"\n\nRe-exported from version {manifest.version} with the same weights.\n"
        card += explain_card_section(spec)
        published = ModelStore(store_root, shipped=shipped).publish(draft, {"model.onnx": path}, card=card, alias=alias)
    log(f"[export] published {published.name}@{published.version} (with `{CAM_OUTPUT}`) to {store_root}")
    return published
