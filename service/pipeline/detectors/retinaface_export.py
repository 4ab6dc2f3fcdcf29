"""Converter: a biubug6/Pytorch_Retinaface state_dict -> one self-contained ONNX file.

The graph has a dynamic batch, height and width; input `input` (N, 3, H, W) BGR minus (104, 117, 123);
outputs `loc` (N, A, 4), `conf` (N, A, 2) softmaxed, `landms` (N, A, 10). Priors and decoding are done
in numpy by `retinaface.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from service.pipeline.detectors.retinaface_net import BACKBONES, RetinaFace, build_retinaface, check_body_leaky

INPUT_NAME = "input"
OUTPUT_NAMES = ["loc", "conf", "landms"]
OPSET = 17
CONVERTER_PARAMS = frozenset({"backbone", "body_leaky"})


def export_onnx(net: RetinaFace, out_path: Path, sample_hw: tuple[int, int] = (320, 320)) -> Path:
    """Export `net` (eval mode) with dynamic batch/height/width, weights embedded in the one file."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 3, *sample_hw)
    dyn = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad():
        torch.onnx.export(
            net,
            (x,),
            str(out_path),
            input_names=[INPUT_NAME],
            output_names=OUTPUT_NAMES,
            dynamic_axes={INPUT_NAME: dyn, **{n: {0: "batch", 1: "anchors"} for n in OUTPUT_NAMES}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if out_path.with_name(out_path.name + ".data").exists():
        raise RuntimeError(f"ONNX export of {out_path.name} wrote external data; expected one self-contained file")
    return out_path


def convert(source: Path, workdir: Path, params: dict[str, Any]) -> Path:
    """Load the state_dict at `source` (weights_only), build the net `params` describe, export ONNX.

    `params` (the catalog entry's `converter_params`): `backbone` (default mobilenet0.25) and, for a
    checkpoint trained with another MobileNet body activation than the reference's LeakyReLU(0.1),
    `body_leaky` (e.g. 0.0 for a plain-ReLU body). Unknown keys are refused rather than ignored.
    """
    unknown = set(params) - CONVERTER_PARAMS
    if unknown:
        raise ValueError(f"unknown RetinaFace converter params {sorted(unknown)}; known: {sorted(CONVERTER_PARAMS)}")
    backbone = str(params.get("backbone", "mobilenet0.25"))
    if backbone not in BACKBONES:
        raise ValueError(f"unknown RetinaFace backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    body_leaky = check_body_leaky(backbone, params.get("body_leaky"))
    state = torch.load(Path(source), map_location="cpu", weights_only=True)
    net = build_retinaface(backbone, state, body_leaky=body_leaky)
    return export_onnx(net, Path(workdir) / "model.onnx")
