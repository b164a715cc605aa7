"""`counterfeit-scan`: serve, catalog import/export, index rebuild, scan."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from cli.bulk import scan_batch
from cli.common import make_settings, open_catalog, open_core, open_database
from cli.db import database
from cli.options import all_other_settings, console_options, engine_options, import_options, scoring_options
from cli.quality import calibrate, evaluate
from cli.train import train
from embeddings import ModelLoadError
from reference_catalog import ManifestError, read_manifest, write_manifest
from service.catalog.writer import ImportRow
from service.models.serving import serving_spec
from service.scanning.photo_prep import PhotoInput


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Counterfeit risk for marketplace listing photos, by similarity to a brand's reference catalog."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@all_other_settings
@engine_options
@scoring_options
@console_options
@import_options
def serve(**flags: Any) -> None:
    """Run the HTTP service (OpenAPI docs at /docs)."""
    import uvicorn

    from service.app import create_app

    settings = make_settings(**flags)
    logging.getLogger().setLevel(logging.INFO)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        http=settings.server.http_parser,
        loop=settings.server.event_loop,
    )


@cli.group()
def catalog() -> None:
    """Import and export reference images."""


@catalog.command("import")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", help="Keep only rows whose 'split' column equals this.")
@engine_options
def catalog_import(manifest: Path, split: str | None, **flags: Any) -> None:
    """Import a CSV manifest (path,brand,product,label) and update the index. Re-running it adds nothing."""
    try:
        read = read_manifest(manifest, split)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    rows: list[ImportRow] = []
    errors = [(f"line {line}", reason) for line, reason in read.errors]
    for row in read.rows:
        try:
            data = row.path.read_bytes()
        except OSError as exc:
            errors.append((f"line {row.line}", f"cannot read {row.path}: {exc.strerror}"))
            continue
        source = row.extra.get("source") or str(row.path.name)
        name = f"line {row.line}"
        rows.append(
            ImportRow(name, PhotoInput(data, row.path.name), row.brand, row.product, row.label, source, row.extra.get("group"))
        )
    with open_core(make_settings(**flags)) as core:
        summary = core.writer.import_rows(rows, show_progress=sys.stderr.isatty(), actor="cli")
        core.index_keeper.save()
        errors.extend(summary.errors or [])
        result = {
            "manifest": str(manifest),
            "rows": len(read.rows) + len(read.errors),
            "added": summary.added,
            "duplicates": summary.duplicates,
            "errors": [{"row": name, "reason": reason} for name, reason in errors],
            "index_version": core.model.index.version,
            "index_size": len(core.model.index),
        }
    click.echo(json.dumps(result, indent=2))
    if errors:
        sys.exit(1)


@catalog.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--brand", help="Export only this brand.")
@engine_options
def catalog_export(out_dir: Path, brand: str | None, **flags: Any) -> None:
    """Write the catalog's images and a manifest.csv that `catalog import` reads back."""
    settings = make_settings(**flags)
    from reference_catalog import BlobStore, CatalogRepository

    with open_database(settings) as db:
        repo = CatalogRepository(db)
        groups, refs = repo.shoot_groups(), repo.all_images()
    blobs = BlobStore(settings.blob_dir)
    rows = []
    for ref in refs:
        if brand is not None and ref.brand != brand:
            continue
        suffix = {"image/png": ".png", "image/webp": ".webp"}.get(ref.media_type, ".jpg")
        relative = Path("images") / f"{ref.sha256}{suffix}"
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / relative).write_bytes(blobs.get(ref.sha256))
        rows.append((relative.as_posix(), ref.brand, ref.product, ref.label, ref.source, groups.get(ref.key)))
    write_manifest(out_dir / "manifest.csv", rows)
    click.echo(json.dumps({"exported": len(rows), "manifest": str(out_dir / "manifest.csv")}))


@cli.group()
def index() -> None:
    """Maintain the vector index."""


@index.command("rebuild")
@engine_options
def index_rebuild(**flags: Any) -> None:
    """Re-embed every catalog image with the configured model and replace the index."""
    with open_core(make_settings(**flags)) as core:
        rebuilt = core.index_keeper.rebuild(show_progress=sys.stderr.isatty())
        click.echo(
            json.dumps(
                {"index_version": rebuilt.version, "index_size": len(rebuilt), "model": core.model.embedder.info.as_dict()},
                indent=2,
            )
        )


@cli.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--brand", help="Compare only with this brand's references.")
@click.option("--product", help="Compare only with this product's references.")
@click.option("--listing-id", help="Listing identifier, echoed and recorded.")
@engine_options
@scoring_options
def scan(photos: tuple[Path, ...], brand: str | None, product: str | None, listing_id: str | None, **flags: Any) -> None:
    """Scan one listing's photos and print the same JSON as POST /v1/scan."""
    inputs = [PhotoInput(path.read_bytes(), path.name) for path in photos]
    with open_core(make_settings(**flags)) as core:
        try:
            result = core.pipeline.scan(inputs, brand, product, listing_id, actor="cli")
        except ValueError as exc:  # a service error (service/errors.py), ImageRejected, a bad name
            raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(result.plain(), indent=2))


@cli.group()
def model() -> None:
    """Inspect, activate and roll back models."""


@model.command("info")
@engine_options
def model_info(**flags: Any) -> None:
    """Load the served model (the activated one, else the settings') and print its fingerprint and runtime."""
    from embeddings import load_embedder

    settings = make_settings(**flags)
    try:
        embedder = load_embedder(serving_spec(settings), settings.export_dir)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(embedder.info.as_dict(), indent=2))


cli.add_command(evaluate)
cli.add_command(calibrate)
cli.add_command(scan_batch)
cli.add_command(train)
cli.add_command(database)


@model.command("activate")
@click.argument(
    "checkpoint_file", metavar="CHECKPOINT", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--to-model", help="Activate an open_clip architecture instead of a checkpoint (with --to-pretrained).")
@click.option("--to-pretrained", help="Pretrained tag for --to-model.")
@engine_options
def model_activate(checkpoint_file: Path | None, to_model: str | None, to_pretrained: str | None, **flags: Any) -> None:
    """Embed the catalog with another model into a new index, then make it the active model.

    A service running on the same data directory switches to it within a few seconds, without downtime.
    """
    from dataclasses import replace

    from service.models.registry import ModelRecord

    if (checkpoint_file is None) == (to_model is None):
        raise click.UsageError("give a CHECKPOINT or --to-model (with --to-pretrained)")
    settings = make_settings(**flags)
    with open_core(settings) as core:
        base = core.model.embedder.spec
        if checkpoint_file is not None:
            spec = replace(base, checkpoint=core.registry.store_checkpoint(checkpoint_file))
        else:
            spec = replace(base, name=str(to_model), pretrained=to_pretrained or None, checkpoint=None)
        try:
            prepared = core.models.prepare(spec, show_progress=sys.stderr.isatty())
        except ModelLoadError as exc:
            raise click.ClickException(str(exc)) from exc
        info = prepared.embedder.info
        previous = core.model.embedder.info
        replacing = ModelRecord.of(core.model.embedder.spec, previous.fingerprint, previous.weights)
        core.registry.record(ModelRecord.of(spec, info.fingerprint, info.weights), replacing)
    click.echo(json.dumps({"active": info.as_dict(), "index_version": prepared.index.version,
                           "index_size": len(prepared.index), "previous": previous.as_dict()}, indent=2))  # fmt: skip


@model.command("list")
@engine_options
def model_list(**flags: Any) -> None:
    """The active model and the ones `rollback` can return to, most recent first."""
    from dataclasses import asdict

    from service.models.registry import ModelRegistry

    registry = ModelRegistry(make_settings(**flags).storage.data_dir)
    active = registry.active()
    click.echo(json.dumps({"active": asdict(active) if active else None,
                           "history": [asdict(record) for record in registry.history()]}, indent=2))  # fmt: skip


@model.command("rollback")
@engine_options
def model_rollback(**flags: Any) -> None:
    """Make the previously active model active again (a running service follows)."""
    from dataclasses import asdict

    from service.models.registry import ModelRegistry, NothingToRollBack

    try:
        record = ModelRegistry(make_settings(**flags).storage.data_dir).rollback()
    except NothingToRollBack as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"active": asdict(record)}, indent=2))


@cli.group()
def keys() -> None:
    """API keys: admin (everything), brand (its brands' catalog, scans and feedback), scanner (scan only)."""


@keys.command("create")
@click.option("--role", type=click.Choice(["admin", "brand", "scanner"]), required=True)
@click.option("--brand", "brands", multiple=True, help="A brand this key may manage (repeat for several); brand keys only.")
@click.option("--name", default="", help="Who or what the key is for.")
@engine_options
def keys_create(role: str, brands: tuple[str, ...], name: str, **flags: Any) -> None:
    """Create a key. The key is printed once and stored only as a hash: keep it."""
    from reference_catalog import AuditEvent

    with open_catalog(make_settings(**flags)) as (store, audit):
        try:
            record, token = store.create(role, list(brands), name)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        audit.record(AuditEvent("cli", "key.create", record["key_id"], None, {"role": role, "brands": list(brands)}))
    click.echo(json.dumps({**record, "key": token}, indent=2))


@keys.command("list")
@engine_options
def keys_list(**flags: Any) -> None:
    """Keys with their role, brands and state (never the secrets)."""
    with open_catalog(make_settings(**flags)) as (store, _):
        click.echo(json.dumps({"keys": store.list()}, indent=2))


@keys.command("revoke")
@click.argument("key_id")
@engine_options
def keys_revoke(key_id: str, **flags: Any) -> None:
    """Revoke a key at once (requests with it get 401)."""
    from reference_catalog import AuditEvent

    with open_catalog(make_settings(**flags)) as (store, audit):
        record = store.revoke(key_id)
        if record is None:
            raise click.ClickException(f"no key {key_id!r}")
        audit.record(AuditEvent("cli", "key.revoke", key_id, None, {}))
    click.echo(json.dumps(record, indent=2))


def main() -> None:
    cli(auto_envvar_prefix=None)
