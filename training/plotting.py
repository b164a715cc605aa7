"""Whether plots can be drawn here: matplotlib is the optional `plots` extra, not a dependency of the service.

The service and the container image never draw anything, so they do without matplotlib; the evaluation report and the
training curves draw with it when it is installed (`make venv` and `make test` install it through the `dev` extra).
Without it, what would have drawn a plot skips it with a warning that says how to get it, and every figure, metric
and file that needs no plot is still written. Modules that draw import matplotlib inside the drawing functions, so
importing them costs nothing and works without the extra.
"""

from __future__ import annotations

import importlib.util
from typing import Final

PLOTS_EXTRA_INSTALL: Final = "pip install 'counterfeit-scan[plots]'"


def plots_available() -> bool:
    """True when matplotlib can be imported. Looked up without importing it, which would load its fonts and backends."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken or half-removed installation
        return False


def plots_missing(what: str) -> str:
    """The warning for `what` (e.g. "evaluation plots") not drawn because matplotlib is absent, with the install line."""
    return f"{what} not drawn: matplotlib is not installed (it is the optional plots extra: {PLOTS_EXTRA_INSTALL})"
