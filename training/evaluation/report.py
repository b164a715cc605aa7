"""The evaluation report directory: `metrics.json`, the PNG plots and one self-contained `report.html`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any, Final

from training.evaluation.metrics import SCALAR_FIGURES
from training.evaluation.mistakes import KIND_TITLES, Mistake, worst_mistakes
from training.evaluation.plots import write_plots
from training.evaluation.records import TRUTHS, VERDICTS, EvalRecord
from training.evaluation.thumbnails import file_thumbnail_data_uri, png_data_uri, thumbnail_data_uri
from training.plotting import plots_missing

REPORT_FILE: Final = "report.html"
METRICS_FILE: Final = "metrics.json"
MATCHES_SHOWN: Final = 3
QUERY_PHOTOS_SHOWN: Final = 3

FIGURE_HELP: Final = {
    "roc_auc": "ROC-AUC of the raw score, counterfeit vs authentic (0.5 = chance)",
    "pr_auc": "PR-AUC (average precision), counterfeit = positive",
    "tpr_at_fpr_1pct": "share of fakes caught at the best score threshold flagging ≤ 1% of authentic listings",
    "tpr_at_fpr_5pct": "share of fakes caught at the best score threshold flagging ≤ 5% of authentic listings",
    "likely_counterfeit_precision": "share of likely_counterfeit verdicts that really are fakes",
    "likely_counterfeit_recall": "share of fakes given likely_counterfeit",
    "likely_counterfeit_fpr": "share of authentic listings given likely_counterfeit (over-enforcement)",
    "likely_authentic_miss_rate": "share of fakes given likely_authentic",
    "needs_review_rate": "share of catalog listings sent to human review",
    "catalog_not_in_catalog_rate": "share of catalog listings wrongly answered not_in_catalog",
    "ece": "expected calibration error of the risk (10 equal-width bins; 0 = perfectly calibrated)",
    "product_recall_at_1": "the top match names the right product",
    "product_recall_at_5": "one of the first 5 matches names the right product",
    "unrelated_not_in_catalog_rate": "share of unrelated photos correctly answered not_in_catalog",
}
PLOT_CAPTIONS: Final = {
    "roc.png": "ROC curve of the raw score, with the best operating points at 1% and 5% false-positive rate.",
    "score_histograms.png": "Raw score distribution for each true label.",
    "reliability.png": "Reliability diagram: observed share of fakes against the risk, with the number of rows per bin.",
    "confusion.png": "Verdicts by true label at the thresholds the scorer used.",
}
_STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.note{background:#fff3cd;padding:.5rem 1rem}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots figure{margin:0;max-width:34rem}.plots img{max-width:100%}
.mistake{border-top:1px solid #ccc;padding:.5rem 0}.strip{display:flex;flex-wrap:wrap;gap:.75rem}
.strip figure{margin:0;width:170px;font-size:.8rem}.query img{outline:3px solid #2166ac}
.missing{width:160px;height:120px;background:#eee;display:flex;align-items:center;justify-content:center;color:#555}
"""


def write_report(
    out_dir: Path,
    records: Sequence[EvalRecord],
    metrics: Mapping[str, Any],
    reference_image: Callable[[str], bytes | None],
    *,
    n_mistakes: int = 12,
    title: str = "Counterfeit-scan evaluation",
    notes: Sequence[str] = (),
) -> Path:
    """Write `metrics.json`, the plots and `report.html` into `out_dir`; return the path of `report.html`.

    `reference_image(image_id)` gives a matched reference image's bytes, or None when it cannot (a placeholder is
    shown). `notes` are shown at the top, e.g. "the model has random weights: these scores are meaningless". Without
    matplotlib (the optional `plots` extra) the page says so where the plots would be; everything else is the same.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a NaN would make the file unreadable to strict JSON parsers; figures use null instead.
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    plots = write_plots(out_dir, records, metrics)
    mistakes = worst_mistakes(records, n_mistakes)
    body = [
        f"<h1>{escape(title)}</h1>",
        *(f'<p class="note">{escape(note)}</p>' for note in notes),
        _summary(metrics),
        _figures_table(metrics),
        '<h2>Plots</h2><div class="plots">',
        *(_plot(path) for path in plots),
        "</div>" if plots else f'<p class="note">{escape(plots_missing("Plots"))}</p></div>',
        _verdict_table(metrics),
        _mistakes_section(mistakes, reference_image),
    ]
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>\n'
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    path = out_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


def _summary(metrics: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{metrics.get(f'n_{truth}', 0)} {truth}" for truth in TRUTHS)
    boot = metrics.get("bootstrap") or {}
    unit = "groups of near-identical queries" if boot.get("unit") == "group" else "listings"
    calibrated = metrics.get("calibrated")
    kinds = {True: "calibrated probabilities", False: "uncalibrated raw scores"}
    risk = kinds[calibrated] if isinstance(calibrated, bool) else "mixed or absent"
    return (
        f"<p>{escape(str(metrics.get('n_queries', 0)))} query listings ({escape(counts)}). Risks are {escape(risk)}. "
        f"Intervals: {escape(str(boot.get('n_resamples', 0)))} bootstrap resamples of {escape(unit)}, "
        f"{escape(str(round(100 * float(boot.get('level', 0.95)))))}% percentile intervals.</p>"
    )


def _figures_table(metrics: Mapping[str, Any]) -> str:
    intervals = metrics.get("ci") or {}
    rows = []
    for name in SCALAR_FIGURES:
        interval = intervals.get(name)
        shown = f"{_number(interval[0])} to {_number(interval[1])}" if interval else "n/a"
        rows.append(
            f'<tr><th scope="row"><code>{escape(name)}</code></th><td class="num">{_number(metrics.get(name))}</td>'
            f'<td class="num">{escape(shown)}</td><td>{escape(FIGURE_HELP.get(name, ""))}</td></tr>'
        )
    return (
        "<h2>Headline figures</h2><table><caption>Figures with 95% bootstrap intervals (n/a: does not apply)</caption>"
        '<thead><tr><th scope="col">figure</th><th scope="col">value</th><th scope="col">95% interval</th>'
        '<th scope="col">meaning</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
    )


def _plot(path: Path) -> str:
    caption = PLOT_CAPTIONS.get(path.name, path.stem)
    return f'<figure><img src="{png_data_uri(path)}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'


def _verdict_table(metrics: Mapping[str, Any]) -> str:
    counts = metrics.get("verdicts") or {}
    head = "".join(f'<th scope="col">{escape(v)}</th>' for v in VERDICTS)
    rows = "".join(
        f'<tr><th scope="row">{escape(t)}</th>'
        + "".join(f'<td class="num">{int(counts.get(t, {}).get(v, 0))}</td>' for v in VERDICTS)
        + "</tr>"
        for t in TRUTHS
    )
    return (
        '<h2>Verdicts</h2><table><caption>Rows: true label; columns: verdict</caption><thead><tr><th scope="col">truth</th>'
        f"{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def _mistakes_section(mistakes: Sequence[Mistake], reference_image: Callable[[str], bytes | None]) -> str:
    if not mistakes:
        return "<h2>Worst mistakes</h2><p>No mistakes to show.</p>"
    parts = [
        "<h2>Worst mistakes</h2><p>The most confident errors of each kind, each query photo (outlined) beside the "
        f"first {MATCHES_SHOWN} reference images its best photo matched.</p>"
    ]
    # The same reference image often explains several mistakes: decode and shrink it once.
    cache: dict[str, str | None] = {}

    def thumbnail(image_id: str) -> str | None:
        if image_id not in cache:
            data = reference_image(image_id)
            cache[image_id] = thumbnail_data_uri(data) if data is not None else None
        return cache[image_id]

    parts.extend(_mistake(m, thumbnail) for m in mistakes)
    return "\n".join(parts)


def _mistake(mistake: Mistake, reference_thumbnail: Callable[[str], str | None]) -> str:
    record = mistake.record
    product = "/".join(p for p in (record.brand, record.product) if p) or "no catalog product"
    heading = (
        f"{KIND_TITLES[mistake.kind]}: listing {record.listing} ({record.truth}, {product}) → {record.verdict}, "
        f"score {_number(record.score)}, risk {_number(record.risk)}"
    )
    figures = [_query_figure(record, photo, i) for i, photo in enumerate(record.photos[:QUERY_PHOTOS_SHOWN], 1)]
    if len(record.photos) > QUERY_PHOTOS_SHOWN:
        figures.append(f"<p>+{len(record.photos) - QUERY_PHOTOS_SHOWN} more photos</p>")
    figures.extend(
        _match_figure(match, rank, reference_thumbnail) for rank, match in enumerate(record.matches[:MATCHES_SHOWN], 1)
    )
    if not record.matches:
        figures.append("<p>No reference image matched.</p>")
    reasons = "".join(
        f"<li><code>{escape(str(r.get('code', '')))}</code> {escape(str(r.get('message', '')))}</li>" for r in record.reasons
    )
    return (
        f'<section class="mistake"><h3>{escape(heading)}</h3><div class="strip">{"".join(figures)}</div>'
        + (f"<ul>{reasons}</ul>" if reasons else "")
        + "</section>"
    )


def _query_figure(record: EvalRecord, photo: str, number: int) -> str:
    alt = f"query photo {number} of listing {record.listing}"
    caption = f"query photo {number}: {Path(photo).name}"
    return (
        f'<figure class="query">{_image(file_thumbnail_data_uri(photo), alt)}<figcaption>{escape(caption)}</figcaption></figure>'
    )


def _match_figure(match: Mapping[str, Any], rank: int, reference_thumbnail: Callable[[str], str | None]) -> str:
    image_id = str(match.get("image_id", ""))
    what = f"{match.get('label', '?')} {match.get('brand', '?')}/{match.get('product', '?')}"
    alt = f"match {rank}: {what} reference image {image_id}"
    caption = f"#{rank} {what}, similarity {_number(match.get('similarity'))}"
    uri = reference_thumbnail(image_id) if image_id else None
    return f"<figure>{_image(uri, alt)}<figcaption>{escape(caption)}</figcaption></figure>"


def _image(uri: str | None, alt: str) -> str:
    if uri is None:
        return f'<div class="missing" role="img" aria-label="{escape(alt)} (unavailable)">image unavailable</div>'
    return f'<img src="{uri}" alt="{escape(alt)}">'


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"
