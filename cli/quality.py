"""`evaluate` and `calibrate`: scan labelled query manifests and measure (or calibrate) the scores."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np

from cli.common import make_settings, open_core
from cli.options import engine_options, scoring_options, settings_options
from embeddings import ImageRejected
from reference_catalog import ManifestError, read_manifest
from service.core import ServiceCore
from service.models.calibration import save_calibrator
from service.scanning.photo_prep import PhotoInput
from service.scanning.result import ImageResultOut, ScanResult
from service.scanning.scoring import FEATURES

QUERY_LABELS = ("authentic", "counterfeit", "unrelated")


@dataclass
class QueryListing:
    name: str
    paths: list[Path]
    truth: str
    brand: str | None
    product: str | None
    group: str | None = None


def read_queries(manifests: Sequence[Path], split: str | None) -> tuple[list[QueryListing], list[tuple[str, str]]]:
    """Listings from labelled manifests: rows sharing a `listing_id` form one listing, others stand alone."""
    listings: dict[str, QueryListing] = {}
    errors: list[tuple[str, str]] = []
    for manifest in manifests:
        try:
            read = read_manifest(manifest, split, labels=QUERY_LABELS, require_brand=False, split_required=False)
        except ManifestError as exc:
            raise click.ClickException(str(exc)) from exc
        errors.extend((f"{manifest.parent.name}/{manifest.name} line {line}", reason) for line, reason in read.errors)
        for row in read.rows:
            where = f"{manifest.parent.name}/{manifest.name} line {row.line}"
            if row.label != "unrelated" and not (row.brand and row.product):
                errors.append((where, f"a row labelled {row.label} needs brand and product"))
                continue
            if not row.path.is_file():
                errors.append((where, f"no such file {row.path}"))
                continue
            key = f"{manifest.resolve()}::" + (
                f"listing {row.extra['listing_id']}" if row.extra.get("listing_id") else f"line {row.line}"
            )
            listing = listings.setdefault(
                key,
                QueryListing(
                    row.extra.get("listing_id") or where,
                    [],
                    row.label,
                    row.brand or None,
                    row.product or None,
                    row.extra.get("group") or None,
                ),
            )
            if listing.truth != row.label:
                errors.append((where, f"listing {listing.name} mixes labels {listing.truth} and {row.label}"))
                continue
            listing.paths.append(row.path)
    return list(listings.values()), errors


def scan_queries(core: ServiceCore, queries: Sequence[QueryListing]) -> list[ScanResult | ImageRejected]:
    photos = [[PhotoInput(path.read_bytes(), path.name) for path in listing.paths] for listing in queries]
    return core.pipeline.scan_many(photos, show_progress=sys.stderr.isatty())


def manifest_digest(manifests: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for manifest in manifests:
        digest.update(manifest.read_bytes())
    return digest.hexdigest()


@click.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", help="Keep only rows whose 'split' column equals this (manifests without one: all rows).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Report directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for the 95% intervals.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--uncalibrated", is_flag=True, help="Ignore a fitted calibrator (to compare raw scores).")
@engine_options
@scoring_options
def evaluate(
    manifests: tuple[Path, ...],
    split: str | None,
    out_dir: Path | None,
    as_json: bool,
    bootstrap: int,
    seed: int,
    uncalibrated: bool,
    **flags: Any,
) -> None:
    """Scan labelled queries (authentic | counterfeit | unrelated) against the catalog and report how good the scores are."""
    from training.evaluation.comparison import compare_scores
    from training.evaluation.metrics import compute_metrics
    from training.evaluation.records import EvalRecord
    from training.evaluation.report import write_report

    queries, errors = read_queries(manifests, split)
    if not queries:
        raise click.ClickException("no query rows to evaluate" + (f" (first problem: {errors[0][1]})" if errors else ""))
    settings = make_settings(**flags)
    with open_core(settings) as core:
        if uncalibrated:
            core.models.set_calibrator(None)
        results = scan_queries(core, queries)
        records, votes = [], []
        for listing, result in zip(queries, results, strict=True):
            if isinstance(result, ImageRejected):
                errors.append((listing.name, str(result)))
                continue
            records.append(to_record(EvalRecord, listing, result))
            votes.append(float(result.features["score"]))
        metrics = compute_metrics(records, n_bootstrap=bootstrap, seed=seed)
        # What the service answered (the authenticity head where a brand has one) against the plain kNN vote.
        metrics["comparison"] = compare_scores(records, {"knn_vote": votes}, n_bootstrap=bootstrap, seed=seed)
        metrics["authenticity_head"] = core.model.heads.summary() if core.model.heads is not None else None
        metrics["model"] = core.model.embedder.info.as_dict()
        metrics["index_version"] = core.model.index.version
        metrics["calibrated"] = core.model.calibrator is not None
        metrics["manifests"] = [str(m) for m in manifests]
        metrics["split"] = split
        metrics["errors"] = [{"row": row, "reason": reason} for row, reason in errors]
        out = out_dir or settings.storage.data_dir / "reports" / datetime.now(UTC).strftime("eval-%Y%m%dT%H%M%SZ")
        report = write_report(out, records, metrics, reference_image(core))
        with open(out / "records.jsonl", "w", encoding="utf-8") as fh:  # one line per listing, for error analysis
            fh.writelines(json.dumps(dataclasses.asdict(record)) + "\n" for record in records)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo(summary_table(metrics))
        click.echo(f"report: {report}")
    if errors:
        click.echo(f"{len(errors)} rows could not be evaluated; see metrics.json 'errors'", err=True)


def reference_image(core: ServiceCore) -> Any:
    def read(image_id: str) -> bytes | None:
        ref = core.catalog.get_image(image_id)
        try:
            return core.blobs.get(ref.sha256) if ref is not None else None
        except OSError:
            return None

    return read


def to_record(record_type: Any, listing: QueryListing, result: ScanResult) -> Any:
    """One scan result as an evaluation record; the evidence shown is that of the photo with the closest match."""

    def closest(item: tuple[Path, ImageResultOut]) -> float:
        matches = item[1].matches
        return matches[0].similarity if matches else -1.0

    ranked = sorted(zip(listing.paths, result.images, strict=True), key=closest, reverse=True)
    best = ranked[0][1]
    return record_type(
        listing=listing.name,
        photos=[str(path) for path, _ in ranked],  # the photo whose evidence is shown comes first
        truth=listing.truth,
        brand=listing.brand,
        product=listing.product,
        # Rank by what the service answers (the calibrated risk when there is one); raw score where it gives none.
        score=float(result.risk if result.risk is not None else result.score or 0.0),
        risk=result.risk,
        calibrated=result.calibrated,
        verdict=result.verdict,
        matches=[match.model_dump() for match in best.matches],
        reasons=[reason.model_dump() for reason in result.reasons],
        group=listing.group,
    )


def summary_table(metrics: dict[str, Any]) -> str:
    names = [
        ("n_queries", "queries"),
        ("roc_auc", "ROC-AUC"),
        ("pr_auc", "PR-AUC"),
        ("tpr_at_fpr_1pct", "recall @ 1% FPR"),
        ("tpr_at_fpr_5pct", "recall @ 5% FPR"),
        ("likely_counterfeit_precision", "precision of likely_counterfeit"),
        ("needs_review_rate", "share sent to review"),
        ("ece", "expected calibration error"),
        ("product_recall_at_1", "product recall@1"),
        ("product_recall_at_5", "product recall@5"),
        ("unrelated_not_in_catalog_rate", "unrelated → not_in_catalog"),
    ]
    lines = []
    for key, label in names:
        value = metrics.get(key)
        interval = (metrics.get("ci") or {}).get(key)
        shown = "n/a" if value is None else (f"{value}" if isinstance(value, int) else f"{value:.3f}")
        if interval and interval[0] is not None:
            shown += f"  [{interval[0]:.3f}, {interval[1]:.3f}]"
        lines.append(f"{label:>34}: {shown}")
    for name, figures in ((metrics.get("comparison") or {}).get("signals") or {}).items():
        for key in ("roc_auc", "tpr_at_fpr_5pct"):
            figure = figures[key]
            if figure["value"] is None:
                continue
            shown = f"{figure['value']:.3f}" + (f"  [{figure['ci'][0]:.3f}, {figure['ci'][1]:.3f}]" if figure["ci"] else "")
            gap, gap_ci = figure["served_minus_this"], figure["served_minus_this_ci"]
            if gap is not None and gap_ci:
                noise = "inside the noise" if figure["inside_noise"] else "outside the noise"
                shown += f"; served - this {gap:+.3f} [{gap_ci[0]:+.3f}, {gap_ci[1]:+.3f}], {noise}"
            lines.append(f"{name + ' ' + key:>34}: {shown}")
    return "\n".join(lines)


@click.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", help="Keep only rows whose 'split' column equals this.")
@settings_options("calibration")
@click.option("--seed", type=int, default=0, show_default=True)
@engine_options
@scoring_options
def calibrate(manifests: tuple[Path, ...], split: str | None, seed: int, **flags: Any) -> None:
    """Fit the risk calibrator (Platt or isotonic, by held-out log-loss) and verdict bands on labelled listings."""
    from training.calibration import fit_calibrator

    queries, errors = read_queries(manifests, split)
    settings = make_settings(**flags)
    with open_core(settings) as core:
        core.models.set_calibrator(None)  # fit on raw features, never on a previous calibrator's output
        results = scan_queries(core, queries)
        rows, truths, groups = [], [], []
        skipped = 0
        for listing, result in zip(queries, results, strict=True):
            if isinstance(result, ImageRejected):
                errors.append((listing.name, str(result)))
            elif listing.truth == "unrelated" or result.verdict == "not_in_catalog":
                skipped += 1  # the service never calibrates these
            else:
                rows.append([float(result.features[name]) for name in FEATURES])
                truths.append(listing.truth == "counterfeit")
                groups.append(listing.group or listing.name)
        try:
            spec = fit_calibrator(
                np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES)),
                FEATURES,
                np.array(truths, dtype=bool),
                target_fpr=settings.calibration.target_fpr,
                target_miss_rate=settings.calibration.target_miss_rate,
                seed=seed,
                groups=groups,
            )
        except ValueError as exc:
            raise click.ClickException(f"cannot calibrate: {exc}") from exc
        spec.update(
            model_fingerprint=core.model.embedder.info.fingerprint,
            index_version=core.model.index.version,
            fitted_at=datetime.now(UTC).isoformat(),
            manifests=[str(m) for m in manifests],
            manifest_sha256=manifest_digest(manifests),
            split=split,
        )
        save_calibrator(core.models.calibrator_path, spec)
        path = core.models.calibrator_path
    click.echo(
        json.dumps(
            {
                "calibrator": str(path),
                "method": spec["method"],
                "thresholds": spec["thresholds"],
                "fit": spec["fit"],
                "skipped_unrelated_or_not_in_catalog": skipped,
                "errors": [{"row": r, "reason": e} for r, e in errors],
            },
            indent=2,
        )
    )
