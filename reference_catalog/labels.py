"""The labels a reference image can carry."""

from typing import Literal

Label = Literal["authentic", "counterfeit"]
LABELS: tuple[str, ...] = ("authentic", "counterfeit")
