"""`emoserve models ...`: list, show, pull, publish, promote, rollback, verify, remove."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from emoserve_cli.common import fail, handle_errors, load_settings, open_store, out_console
from model_store import ArtifactCorrupt, InvalidName, ModelRef, StoreEvent, parse_ref
from model_store.catalog import Catalog
from model_store.hashing import sha256_file
from model_store.pull import pull as pull_model
from model_store.release import pack as pack_release
from service.settings import Settings

app = typer.Typer(help="Manage the versioned model store.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AliasOpt = Annotated[str, typer.Option("--alias", "-a", help="Alias to move.")]


@app.command("list")
@handle_errors
def list_models(as_json: JsonOpt = False) -> None:
    """List every model version (local and shipped) with its aliases and verified sha256."""
    store = open_store(load_settings())
    rows: list[dict[str, Any]] = []
    for summary in store.summaries():
        by_version: dict[int, list[str]] = {}
        for alias, v in summary.aliases.items():
            by_version.setdefault(v, []).append(alias)
        for v in summary.versions:
            m = summary.manifests[v]
            try:
                store.get(ModelRef(summary.name, version=v))
                status = "verified"
            except ArtifactCorrupt as exc:
                status = f"CORRUPT: {exc}"
            rows.append(
                {
                    "name": summary.name,
                    "version": v,
                    "task": m.task,
                    "family": m.family,
                    "aliases": sorted(by_version.get(v, [])),
                    "sha256": next(f.sha256 for f in m.files if f.path == m.model_file),
                    "status": status,
                    "layer": summary.layers[v],
                }
            )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out_console.print(f"no models in {store.storage.description}; try `emoserve models pull yunet-2023mar`")
        return
    out_console.print(f"models in {store.storage.description} (and shipped with the package):")
    for r in rows:
        aliases = ",".join(r["aliases"]) or "-"
        out_console.print(
            f"{r['name']}@{r['version']}  {r['task']}/{r['family']}  aliases: {aliases}  "
            f"sha256: {r['sha256']}  {r['status']}  ({r['layer']})",
            soft_wrap=True,
        )


@app.command()
@handle_errors
def show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS")], as_json: JsonOpt = False
) -> None:
    """Show a version's manifest, the model's aliases and the alias history."""
    store = open_store(load_settings())
    r = parse_ref(ref)
    manifest = store.manifest(r)
    info = {
        "manifest": manifest.model_dump(mode="json"),
        "aliases": store.aliases(r.name),
        "alias_history": store.alias_history(r.name),
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        out_console.print_json(json.dumps(info))


@app.command()
@handle_errors
def pull(
    name: Annotated[
        str, typer.Argument(help="Catalog name, e.g. yunet-2023mar, or a release, e.g. emotion-ferplus8@3")
    ],
    mirror: Annotated[
        Path | None, typer.Option(help="Mirror folder searched first (default EMOSERVE_MODEL_MIRROR)")
    ] = None,
    allow_unverified: Annotated[
        bool, typer.Option(help="Accept a file whose sha256 the catalog does not record (and record it)")
    ] = False,
) -> None:
    """Fetch a catalog model (mirror first, then its sources), verify, convert and publish it.

    NAME@VERSION installs one of our own earlier versions from its release artifact, under that version."""
    settings = load_settings(model_mirror=mirror)
    store = open_store(settings)
    cat = Catalog.load(settings.catalog) if settings.catalog else Catalog.load()
    result = pull_model(store, name, catalog=cat, mirror=settings.model_mirror, allow_unverified=allow_unverified)
    m = result.manifest
    verb = "already present as" if result.already_present else "published"
    out_console.print(f"{verb} {m.name}@{m.version} from {result.source}; aliases: {store.aliases(m.name)}")


@app.command()
@handle_errors
def pack(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME@ALIAS) to pack")],
    out: Annotated[Path, typer.Option(help="Folder the artifact is written to")] = Path("."),
) -> None:
    """Write a version as a release artifact (NAME-VERSION.tar, the same bytes every time) and print the
    catalog entry's sha256 and size; `emoserve models pull NAME@VERSION` installs it back."""
    store = open_store(load_settings())
    path = pack_release(store, ref, out)
    out_console.print(f"{path}  sha256: {sha256_file(path)}  size: {path.stat().st_size}", soft_wrap=True)


@app.command()
@handle_errors
def catalog(as_json: JsonOpt = False) -> None:
    """List the models the catalog knows how to pull, and the release artifacts of our earlier versions."""
    settings = load_settings()
    cat = Catalog.load(settings.catalog) if settings.catalog else Catalog.load()
    rows: list[dict[str, Any]] = [
        {
            "name": e.name,
            "task": e.task,
            "family": e.family,
            "licence": e.licence,
            "sources": [s.describe() for s in e.sources],
            "sha256_origin": e.sha256_origin,
        }
        for e in cat.entries.values()
    ]
    rows += [  # our own earlier versions, installed from release artifacts under their own version numbers
        {"name": r.ref, "task": "release", "family": "-", "licence": "see its manifest",
         "sources": [s.describe() for s in r.sources], "sha256_origin": r.sha256_origin, "config": r.config}
        for r in cat.releases.values()
    ]  # fmt: skip
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="catalog")
    for col in ("name", "task", "family", "licence", "sources"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["task"], r["family"], r["licence"], "\n".join(r["sources"]))
    out_console.print(table)


@app.command()
@handle_errors
def publish(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The ONNX file")],
    manifest: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Manifest fields as JSON or YAML (no files/version)")
    ],
    card: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="MODEL_CARD.md")] = None,
    alias: Annotated[str | None, typer.Option(help="Alias to point at the new version")] = None,
    version: Annotated[int | None, typer.Option(help="Explicit version (default: next)")] = None,
) -> None:
    """Publish an ONNX file with its manifest as a new immutable version."""
    store = open_store(load_settings())
    try:
        draft = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        fail(f"{manifest} is not valid JSON/YAML: {exc}", 2)
    if not isinstance(draft, dict):
        fail(f"{manifest} must hold a mapping of manifest fields", 2)
    try:
        m = store.publish(
            draft,
            {"model.onnx": model},
            version=version,
            card=card.read_text(encoding="utf-8") if card else None,
            alias=alias,
        )
    except ValueError as exc:  # pydantic validation of the manifest
        if isinstance(exc, InvalidName):
            raise
        fail(f"invalid manifest {manifest}: {exc}", 2)
    out_console.print(f"published {m.name}@{m.version}; aliases: {store.aliases(m.name)}")


@app.command()
@handle_errors
def promote(
    name: Annotated[str, typer.Argument()],
    version: Annotated[int, typer.Argument()],
    alias: AliasOpt = "production",
) -> None:
    """Point NAME@ALIAS (default production) at VERSION."""
    settings = load_settings()
    store = open_store(settings)
    previous = store.set_alias(name, alias, version)
    out_console.print(f"{name}@{alias}: {previous if previous is not None else '-'} -> {version}")
    _announce(settings, StoreEvent("alias", name, version, alias))


@app.command()
@handle_errors
def rollback(name: Annotated[str, typer.Argument()], alias: AliasOpt = "production") -> None:
    """Point NAME@ALIAS back at the version it had before its last change.

    A version that is not in the store (an earlier version the package no longer ships) is pulled first from
    its release artifact (mirror first, then its sources)."""
    settings = load_settings()
    store = open_store(settings)
    before = store.aliases(name).get(alias)
    wanted = store.rollback_target(name, alias)
    if wanted not in store.versions(name):
        cat = Catalog.load(settings.catalog) if settings.catalog else Catalog.load()
        pulled = pull_model(store, f"{name}@{wanted}", catalog=cat, mirror=settings.model_mirror)
        out_console.print(f"published {name}@{wanted} from {pulled.source}")
    target = store.rollback(name, alias)
    out_console.print(f"{name}@{alias}: {before} -> {target}")
    _announce(settings, StoreEvent("alias", name, target, alias))


def _announce(settings: Settings, event: StoreEvent) -> None:
    """Tell running services (through Redis, when configured) so that every replica reloads."""
    if settings.redis_url:
        from service.serving.events import publish_sync

        if publish_sync(settings.redis_url, event):
            out_console.print("announced to running services through Redis")


@app.command()
@handle_errors
def verify(
    ref: Annotated[str | None, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Verify every version of every model")] = False,
) -> None:
    """Check the sha256 and size of every file against the manifest."""
    store = open_store(load_settings())
    if all_ == (ref is not None):
        fail("give either a model reference or --all", 2)
    if ref is not None:
        m = store.verify(ref)
        out_console.print(f"ok {m.name}@{m.version}")
        return
    results = store.verify_all()
    bad = [(r, e) for r, e in results if e]
    for r, e in results:
        out_console.print(f"{'FAIL' if e else 'ok'} {r}" + (f": {e}" if e else ""), soft_wrap=True)
    if bad:
        fail(f"{len(bad)} of {len(results)} artifact(s) failed verification", 4)
    out_console.print(f"{len(results)} artifact(s) verified")


@app.command()
@handle_errors
def remove(ref: Annotated[str, typer.Argument(help="NAME@VERSION")]) -> None:
    """Delete an unreferenced version from the writable store."""
    store = open_store(load_settings())
    r = parse_ref(ref)
    if r.version is None:
        fail("remove needs an explicit version: NAME@VERSION", 2)
    store.remove(r.name, r.version)
    out_console.print(f"removed {r}")
