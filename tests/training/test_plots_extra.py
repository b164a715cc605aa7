"""matplotlib is the optional `plots` extra: the service and CLI never import it, and reports do without it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT
from tests.training.factory import record
from training.evaluation import compute_metrics
from training.evaluation.plots import PLOT_FILES, write_plots
from training.evaluation.report import write_report
from training.finetune.outputs import CURVES_FILE, write_curves
from training.plotting import PLOTS_EXTRA_INSTALL, plots_available

ROOT = REPO_ROOT


def test_service_cli_and_report_modules_do_not_import_matplotlib() -> None:
    # A fresh interpreter: this one has matplotlib loaded by the other tests.
    code = (
        "import sys\n"
        "import service.app, cli.main, training.evaluation.report, training.finetune.outputs\n"
        "loaded = sorted(m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.fixture
def without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the plots extra were not installed: `import matplotlib` fails and its spec is not found."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not plots_available()


@pytest.mark.usefixtures("without_matplotlib")
def test_report_without_matplotlib_keeps_the_figures_and_says_how_to_get_plots(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [record("authentic", s / 10, verdict="likely_authentic") for s in range(5)]
    records += [record("counterfeit", 0.5 + s / 10, verdict="likely_counterfeit") for s in range(5)]
    metrics = compute_metrics(records, n_bootstrap=10)
    with caplog.at_level(logging.WARNING):
        assert write_plots(tmp_path / "plots", records, metrics) == []
        path = write_report(tmp_path / "report", records, metrics, lambda _: None)

    assert json.loads((tmp_path / "report" / "metrics.json").read_text(encoding="utf-8"))["roc_auc"] == metrics["roc_auc"]
    assert not any((tmp_path / "report" / name).exists() for name in PLOT_FILES.values())
    html = path.read_text(encoding="utf-8")
    assert "roc_auc" in html and "data:image/png" not in html
    assert "matplotlib is not installed" in html and "counterfeit-scan[plots]" in html
    assert any(PLOTS_EXTRA_INSTALL in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.usefixtures("without_matplotlib")
def test_training_curves_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    history: list[dict[str, Any]] = [{"epoch": 0, "val": {"roc_auc": 0.7}}, {"epoch": 1, "train_loss": 0.5, "val": None}]
    with caplog.at_level(logging.WARNING):
        assert write_curves(tmp_path, history, best_epoch=1) is None
    assert not (tmp_path / CURVES_FILE).exists()
    assert any(PLOTS_EXTRA_INSTALL in r.getMessage() for r in caplog.records)


def test_training_curves_are_drawn_with_matplotlib(tmp_path: Path) -> None:
    history: list[dict[str, Any]] = [{"epoch": 0, "val": {"roc_auc": 0.7}}, {"epoch": 1, "train_loss": 0.5, "val": None}]
    path = write_curves(tmp_path, history, best_epoch=1)
    assert path == tmp_path / CURVES_FILE and path.stat().st_size > 1000
