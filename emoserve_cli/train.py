"""`emoserve train`, `export` and `evaluate`: the training job's commands.

`emoserve explain` is emoserve_cli/explain.py: it runs the service's detector and alignment.

Nothing heavy is imported at module import time: torch and the training code load inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from emoserve_cli.common import fail, handle_errors, load_settings


def train_command(
    config: Annotated[Path, typer.Option("--config", help="Run config (YAML).", exists=True, dir_okay=False)],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset folder or csv (else the config's).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (default runs/<config name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last.pt.")] = False,
    publish: Annotated[bool, typer.Option("--publish", help="Export and publish the best checkpoint.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Model name to publish as (default: config name).")] = None,
    alias: Annotated[str, typer.Option("--alias", help="Alias to set on publish.")] = "production",
    folds: Annotated[int, typer.Option("--folds", help="Stratified k-fold CV instead of one run (k >= 2).")] = 0,
    int8: Annotated[bool, typer.Option("--int8", help="Also publish an int8 QDQ model if accurate enough.")] = False,
    shipped: Annotated[
        bool, typer.Option("--shipped", help="Publish into the package's shipped layer (maintainers).")
    ] = False,
) -> None:
    """Train a model from a YAML config; optionally publish it to the model store."""
    from training.config import TrainConfig
    from training.train import train_run

    cfg = TrainConfig.from_yaml(config)
    run_dir = out or Path("runs") / cfg.name
    if folds:
        from training.kfold import kfold_cv

        res = kfold_cv(cfg.to_dict(), Path(data or cfg.data or ""), run_dir, folds, log=typer.echo)
        (run_dir / "kfold.json").write_text(json.dumps(res, indent=1))
        typer.echo(f"{folds}-fold accuracy {res['accuracy_mean']:.4f} ± {res['accuracy_std']:.4f}")
        return
    metrics = train_run(cfg, data, run_dir, resume=resume, log=typer.echo)
    typer.echo(f"val accuracy {metrics['val_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f} ({run_dir})")
    if publish and shipped:
        from training.export import publish_shipped

        publish_shipped(run_dir, data, name or cfg.name, alias=alias, int8=int8, log=typer.echo,
                        description=cfg.description)  # fmt: skip
    elif publish:
        from training.export import publish_run

        publish_run(run_dir, data, name or cfg.name, load_settings().model_root, alias=alias, int8=int8,
                    log=typer.echo, description=cfg.description)  # fmt: skip


def export_command(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Run folders (with best.pt), NAME@ALIAS, or NAME@ALIAS#K (member K of an ensemble); "
            "several make an ensemble."
        ),
    ],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset folder (else the run's config).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: the run's config name).")] = None,
    alias: Annotated[str, typer.Option("--alias", help="Alias to set.")] = "production",
    int8: Annotated[bool, typer.Option("--int8", help="Also publish an int8 QDQ model if accurate enough.")] = False,
    shipped: Annotated[
        bool, typer.Option("--shipped", help="Publish into the package's shipped layer (maintainers).")
    ] = False,
    description: Annotated[str | None, typer.Option("--description", help="Manifest description.")] = None,
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            help="For runs trained with a second head: which head to publish (main, or the "
            "second head's format, e.g. fer2013, with --data naming that dataset).",
        ),
    ] = None,
    prior_correction: Annotated[
        float,
        typer.Option(
            "--prior-correction",
            min=0.0,
            max=2.0,
            help="Serve probabilities divided by the training class frequencies to this power "
            "(0: off; bench/bench_prior.py measures the choices).",
        ),
    ] = 0.0,
    add_cam: Annotated[
        bool,
        typer.Option(
            "--add-cam",
            help="Publish each NAME@VERSION again, as it is (weights, labels, metrics), with a class-activation-map "
            "output for explain=true; no data needed.",
        ),
    ] = False,
) -> None:
    """Export trained runs (or published models) to ONNX and publish; several become one ensemble (mean logits)."""
    from model_store import ModelStoreError
    from training.checkpoints import HeadError
    from training.data.readers import DatasetLayoutError
    from training.export import ExportRefused, publish_run, publish_shipped
    from training.models.ensemble import EnsembleError
    from training.onnx_init import OnnxInitError

    if add_cam:
        if head is not None or prior_correction or int8:
            raise typer.BadParameter("--add-cam republishes models as they are: --head, --prior-correction and "
                                     "--int8 do not apply")  # fmt: skip
        _add_cam(sources, alias, shipped)
        return
    if head not in (None, "main") and not name:
        raise typer.BadParameter(f"--head {head} publishes a model with other labels than the run's name says: "
                                 "give it its own with --name (e.g. emotion-fer7)")  # fmt: skip
    for src in sources:
        if "@" not in src and not (Path(src) / "best.pt").is_file():
            raise typer.BadParameter(f"{src} has no best.pt (not a finished training run)")
    kw: dict[str, Any] = {"int8": int8, "log": typer.echo, "description": description, "head": head,
                          "prior_correction": prior_correction}  # fmt: skip
    try:
        if shipped:
            publish_shipped(sources, data, name, alias=alias, **kw)
        else:
            publish_run(sources, data, name, load_settings().model_root, alias=alias, **kw)
    except (EnsembleError, OnnxInitError, ModelStoreError, HeadError, ExportRefused, DatasetLayoutError) as exc:
        raise typer.BadParameter(str(exc)) from exc


def _add_cam(sources: list[str], alias: str, shipped: bool) -> None:
    """`emoserve export --add-cam`: re-export published models with a `cam` output."""
    from model_store import ModelStoreError
    from model_store.store import SHIPPED_ROOT
    from training.export import ParityError, ship_alias
    from training.onnx_init import OnnxInitError
    from training.reexport import add_cam

    if shipped:
        root, layer = SHIPPED_ROOT, None
    else:
        root, layer = load_settings().model_root, SHIPPED_ROOT
    for src in sources:
        try:
            manifest = add_cam(src, root, shipped=layer, alias=None if shipped else alias, log=typer.echo)
        except (ValueError, OnnxInitError, ModelStoreError, ParityError) as exc:  # CamUnsupported is a ValueError
            raise typer.BadParameter(str(exc)) from exc
        if shipped:
            ship_alias(root, manifest.name, alias, manifest.version)


def evaluate_command(
    model: Annotated[str, typer.Option("--model", help="NAME@ALIAS or NAME@VERSION from the model store.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder or csv.", exists=True)],
    split: Annotated[
        str, typer.Option("--split", help="train | val | test | all (every labelled image, all splits together).")
    ] = "val",
    fmt: Annotated[str, typer.Option("--format", help="Dataset layout (auto-detected by default).")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Folder for confusion.png and evaluation.json (+ robustness.json).", file_okay=False
        ),
    ] = None,
    confusion: Annotated[Path | None, typer.Option("--confusion", help="Write the confusion matrix PNG here.")] = None,
    robustness: Annotated[
        bool,
        typer.Option(
            "--robustness",
            help="Also score the split under each image shift (crop, rotation, blur, JPEG, tone, downscale); "
            "--out adds robustness.json.",
        ),
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Run the model's int8 graph, the one the service serves on the CPU (default: the float graph).",
        ),
    ] = False,
) -> None:
    """Evaluate a stored ONNX model on a dataset split (accuracy, balanced accuracy, per-class table, ECE)."""
    from training.data.readers import READERS, SPLITS, DatasetLayoutError
    from training.evaluate import evaluate_loaded, load_for_evaluation
    from training.metrics import format_report, save_confusion_png

    if split not in (*SPLITS, "all"):
        fail(f"--split must be one of {', '.join(SPLITS)}, all (got {split!r})", 2)
    if fmt != "auto" and fmt not in READERS:
        fail(f"--format must be auto or one of {', '.join(READERS)} (got {fmt!r})", 2)
    try:
        resolved, ds = load_for_evaluation(model, data, split, fmt)
    except DatasetLayoutError as exc:
        fail(str(exc), 2)
    if int8:
        from training.evaluate import int8_graph

        try:
            resolved = int8_graph(resolved)
        except ValueError as exc:
            fail(str(exc), 2)
    res: dict[str, Any] = {**evaluate_loaded(resolved, ds, desc="unshifted" if robustness else None), "split": split}
    rep = res.pop("_report")
    if robustness:
        from training.robustness import RobustnessError, format_robustness, robustness_report

        try:
            res["robustness"] = robustness_report(resolved, ds, res)
        except RobustnessError as exc:
            fail(str(exc), 2)
    for png in [confusion, out / "confusion.png" if out else None]:
        if png is not None:
            save_confusion_png(rep["confusion"], res["confusion"]["labels"], png)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(res, indent=1))
        if robustness:
            (out / "robustness.json").write_text(json.dumps(res["robustness"], indent=1))
    if as_json:
        typer.echo(json.dumps(res, indent=1))
        return
    typer.echo(f"{res['model']} ({res['graph']} graph) on {res['dataset']} {split} ({res['n']} images)")
    typer.echo(format_report(rep))
    if "accuracy_shared" in res:
        typer.echo(f"shared classes ({len(res['shared_classes'])}): accuracy {res['accuracy_shared']:.4f} on "
                   f"{res['n_shared']} images (restricted argmax); unrestricted {res['accuracy']:.4f}")  # fmt: skip
    if robustness:
        typer.echo(f"\nrobustness ({len(res['robustness']['rows'])} shifts; drop = unshifted minus shifted accuracy)")
        typer.echo(format_robustness(res["robustness"]))


def register(app: typer.Typer) -> None:
    """Add `train`, `export` and `evaluate`."""
    app.command("train")(train_command)
    app.command("evaluate")(handle_errors(evaluate_command))
    app.command("export")(export_command)
