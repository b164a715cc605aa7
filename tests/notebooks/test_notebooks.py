"""The notebooks in notebooks/ run top to bottom (executed here, so that they cannot rot)."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

from tests.helpers import REPO_ROOT, shared_set

NOTEBOOKS = REPO_ROOT / "notebooks"


@pytest.mark.parametrize("name", ["evaluate_sneakers.ipynb"])
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = shared_set("sneakers").parent  # skips when ../shared/data is absent
    monkeypatch.setenv("COUNTERFEIT_SCAN_SHARED_DATA", str(shared))
    monkeypatch.setenv("COUNTERFEIT_SCAN_NOTEBOOK_DIR", str(tmp_path))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    printed = "".join(
        o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "stream"
    )
    assert "roc_auc" in printed and "unrelated_not_in_catalog_rate" in printed
    assert (tmp_path / "report" / "report.html").is_file()
