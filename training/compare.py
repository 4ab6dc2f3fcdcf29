"""The method's comparison study: train and evaluate each model with and without class-balancing
augmentation and write the table (markdown + CSV: model, params, augmentation, val accuracy, macro F1,
train time).

Training goes through the training package's API, imported lazily:

    from training.train import train_run
    train_run(config: dict, data_dir: Path, out_dir: Path) -> dict   # metrics

`config` holds "model", "model_kwargs", "pretrained", "epochs", "augment" ("none" | "balanced"),
"seed", and any extra keys passed with `--set key=value`. From the returned metrics this module reads
the validation accuracy ("val_accuracy" | "accuracy" | "val_acc"), the macro F1 ("macro_f1" | "val_macro_f1"
| "f1_macro"), the parameter count ("params", else counted here) and the training time
("train_time_s", else the wall time of the call).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

TrainFn = Callable[[dict[str, Any], Path, Path], dict[str, Any]]
FIELDS = ["model", "params", "augmentation", "val_accuracy", "macro_f1", "train_time_s", "run_dir"]


@dataclass
class Row:
    model: str
    params: int
    augmentation: str
    val_accuracy: float
    macro_f1: float
    train_time_s: float
    run_dir: str


def count_params(name: str, num_classes: int, model_kwargs: dict[str, Any]) -> int:
    from training.models import create_model

    model = create_model(name, num_classes, 1, pretrained=False, **model_kwargs)
    return sum(p.numel() for p in model.parameters())


def default_train_fn() -> TrainFn:
    try:
        from training.train import train_run
    except ImportError as exc:
        raise RuntimeError(f"compare needs training.train.train_run(config, data_dir, out_dir): {exc}") from exc
    fn: TrainFn = train_run
    return fn


def run_comparison(
    models: Sequence[str],
    augments: Sequence[str],
    data_dir: Path,
    out_dir: Path,
    epochs: int,
    base_config: dict[str, Any] | None = None,
    model_kwargs: dict[str, dict[str, Any]] | None = None,
    train_fn: TrainFn | None = None,
    num_classes: int = 7,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Train every (model, augmentation) pair and write `comparison.md` / `comparison.csv` into `out_dir`."""
    train = train_fn or default_train_fn()
    rows: list[Row] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in models:
        kwargs = dict((model_kwargs or {}).get(name, {}))
        # `pretrained` may be given per model (ImageNet weights exist for a few backbones only)
        pretrained = bool(kwargs.pop("pretrained", (base_config or {}).get("pretrained", False)))
        label = f"{name} (ImageNet init)" if pretrained else name
        for aug in augments:
            run_dir = out_dir / f"{name}{'-imagenet' if pretrained else ''}-{aug}"
            config = {**(base_config or {}), "model": name, "model_kwargs": kwargs, "epochs": epochs, "augment": aug,
                      "pretrained": pretrained}  # fmt: skip
            log(f"[compare] {label} augment={aug} -> {run_dir}")
            t0 = time.perf_counter()
            metrics = train(config, data_dir, run_dir)
            wall = time.perf_counter() - t0
            params = int(metrics.get("params") or count_params(name, num_classes, kwargs))
            acc, f1 = float(metrics["val_accuracy"]), float(metrics["macro_f1"])  # what train_run returns
            took = float(metrics.get("train_time_s") or wall)
            rows.append(Row(label, params, aug, acc, f1, took, str(run_dir)))
            write_tables(rows, out_dir)  # keep partial results if a later run fails
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | params | augmentation | val accuracy | macro F1 | train time |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.params / 1e6:.2f}M | {r.augmentation} | {r.val_accuracy * 100:.2f}% "
            f"| {r.macro_f1:.4f} | {_duration(r.train_time_s)} |"
        )
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def write_tables(rows: Sequence[Row], out_dir: Path) -> tuple[Path, Path]:
    md, csv_path = out_dir / "comparison.md", out_dir / "comparison.csv"
    md.write_text(markdown_table(rows))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
    return md, csv_path


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def compare_command(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder given to the trainer.")],
    models: Annotated[str, typer.Option(help="Comma-separated registry names.")] = "cnn,resnet18,mobilenet_fer",
    augment: Annotated[str, typer.Option(help="Comma-separated: none, balanced.")] = "none,balanced",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the runs and the tables.")] = Path(
        "runs/compare"
    ),
    model_kwargs: Annotated[
        str | None, typer.Option(help='JSON per model, e.g. \'{"vit_b16": {"input_size": 112}}\'.')
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Extra training config key=value (JSON).")] = None,
) -> None:
    """Train and evaluate each model with and without class balancing; write comparison.md/.csv."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    augs = [a.strip() for a in augment.split(",") if a.strip()]
    bad = [a for a in augs if a not in ("none", "balanced")]
    if bad:
        raise typer.BadParameter(f"unknown augmentation {bad}; use none and/or balanced")
    from training.models import list_models

    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; known: {', '.join(list_models())}")
    rows = run_comparison(
        names, augs, data, out, epochs, _parse_set(set_ or []), json.loads(model_kwargs) if model_kwargs else None,
        log=typer.echo,
    )  # fmt: skip
    typer.echo(markdown_table(rows))
    typer.echo(f"tables: {out / 'comparison.md'}, {out / 'comparison.csv'}")


def register(app: typer.Typer) -> None:
    """Add `emoserve compare`."""
    app.command("compare")(compare_command)
