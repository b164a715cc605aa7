"""The report directory: metrics.json, four valid PNGs and a self-contained, escaped report.html."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from tests import imaging
from tests.training.factory import match, record
from training.evaluation import EvalRecord, compute_metrics
from training.evaluation.mistakes import worst_mistakes
from training.evaluation.plots import PLOT_FILES, write_plots
from training.evaluation.report import write_report

HOSTILE = "<script>alert('x')</script>"


def listings(tmp_path: Path) -> list[EvalRecord]:
    photo = tmp_path / "query.jpg"
    photo.write_bytes(imaging.jpeg(1, (640, 480)))
    evidence = [
        match("air-force-1", label="counterfeit", similarity=0.91, image_id="ref-fake"),
        match("air-force-1", label="authentic", similarity=0.88, image_id="ref-gone"),
        match("dunk", label="authentic", similarity=0.80, image_id="ref-real"),
    ]
    reasons = [{"code": "nearest_reference", "message": f"closest is {HOSTILE} & co"}]
    rows = [
        record("authentic", 0.95, verdict="likely_counterfeit", photos=[str(photo)], matches=evidence, reasons=reasons),
        record("counterfeit", 0.05, verdict="likely_authentic", photos=[str(tmp_path / "missing.jpg")], matches=evidence),
        record("unrelated", 0.5, verdict="needs_review", photos=[str(photo)], matches=evidence),
        record("unrelated", 0.1, verdict="not_in_catalog"),
    ]
    rows += [record("authentic", s / 20, verdict="likely_authentic") for s in range(8)]
    rows += [record("counterfeit", 0.6 + s / 20, verdict="likely_counterfeit") for s in range(8)]
    return rows


def reference_image(image_id: str) -> bytes | None:
    # An RGBA PNG (flattened onto white for JPEG) and a portrait JPEG; "ref-gone" has no bytes.
    images = {
        "ref-fake": imaging.encode(imaging.noise_image(2, (300, 200), "RGBA"), "PNG"),
        "ref-real": imaging.jpeg(3, (200, 300)),
    }
    return images.get(image_id)


def test_report_writes_metrics_plots_and_escaped_html(tmp_path: Path) -> None:
    records = listings(tmp_path)
    metrics = compute_metrics(records, n_bootstrap=100)
    out = tmp_path / "report"
    path = write_report(out, records, metrics, reference_image)

    assert path == out / "report.html"
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == metrics
    for name in PLOT_FILES.values():
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            image.verify()

    html = path.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == len(PLOT_FILES)
    assert html.count('src="data:image/jpeg;base64,') >= 4  # query photos and the two reference images that exist
    assert HOSTILE not in html and "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in html
    assert "image unavailable" in html  # the missing query photo and the reference image that returned None
    assert 'alt="match 1: counterfeit Nike/air-force-1 reference image ref-fake"' in html
    assert "roc_auc" in html and "unrelated photo matched the catalog" in html
    assert len(html) < 1_000_000
    thumbnail = html.split('src="data:image/jpeg;base64,', 1)[1].split('"', 1)[0]
    with Image.open(io.BytesIO(base64.b64decode(thumbnail))) as image:
        assert max(image.size) <= 160  # the 640 x 480 query photo, shrunk


def test_plots_cope_with_degenerate_data(tmp_path: Path) -> None:
    records = [record("authentic", 0.3, verdict="not_in_catalog")]
    paths = write_plots(tmp_path, records, compute_metrics(records, n_bootstrap=0))
    assert [p.name for p in paths] == list(PLOT_FILES.values())
    assert all(p.stat().st_size > 1000 for p in paths)
    report = write_report(tmp_path / "empty", [], compute_metrics([], n_bootstrap=0), reference_image)
    assert "No mistakes to show." in report.read_text(encoding="utf-8")


def test_worst_mistakes_take_turns_and_put_wrong_verdicts_first() -> None:
    records = [
        record("authentic", 0.99, verdict="needs_review"),
        record("authentic", 0.90, verdict="likely_counterfeit"),
        record("authentic", 0.10, verdict="likely_authentic"),  # right: not a mistake
        record("counterfeit", 0.20, verdict="likely_authentic"),
        record("counterfeit", 0.95, verdict="likely_counterfeit"),  # right
        record("unrelated", 0.5, verdict="needs_review", matches=[match("dunk", similarity=0.7)]),
        record("unrelated", 0.5, verdict="not_in_catalog"),  # right
    ]
    found = worst_mistakes(records, n=10)
    assert [(m.kind, m.record.score) for m in found] == [
        ("authentic_scored_high", 0.90),
        ("counterfeit_scored_low", 0.20),
        ("unrelated_matched", 0.5),
        ("authentic_scored_high", 0.99),
    ]
    assert len(worst_mistakes(records, n=2)) == 2
