"""Checks and escapes for the names and ids that come in from outside and go back out (JSON, logs, CSV cells).

Names, ids and sources refuse control characters (Unicode category Cc: NUL, C0, DEL, C1) and the line and paragraph
separators U+2028/U+2029; free text (a reviewer's note) may also hold newlines and tabs.

CSV cells that a spreadsheet would run as a formula (starting with =, +, -, @, tab or CR) are written with a leading
single quote, and read back without it: an export imports back to the same names.
"""

from __future__ import annotations

import unicodedata

REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
NOTE_ALLOWED = "\n\t"  # free text may hold newlines and tabs (\r\n from a browser's textarea: see `control_character`)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_ESCAPE = "'"


def control_character(text: str, allowed: str = "") -> str | None:
    """The first control character in `text` that `allowed` does not list, as an escape (e.g. '\\x00'); else None.

    When `allowed` has "\\n", "\\r" is taken as allowed as well where it starts a "\\r\\n" line break."""
    for i, char in enumerate(text):
        if char in allowed or unicodedata.category(char) not in REFUSED_CATEGORIES:
            continue
        if char == "\r" and "\n" in allowed and text[i + 1 : i + 2] == "\n":
            continue
        return ascii(char)[1:-1]
    return None


def csv_cell(value: str) -> str:
    """`value` as a CSV cell that spreadsheets show as text: a leading quote before what would start a formula.

    Values that already start with quotes before such a character get one more, so that `from_csv_cell` always
    gives back exactly `value`."""
    return CSV_ESCAPE + value if value.lstrip(CSV_ESCAPE).startswith(FORMULA_STARTS) else value


def from_csv_cell(value: str) -> str:
    """The value `csv_cell` wrote (a leading quote before a formula character is dropped); other cells unchanged."""
    if value.startswith(CSV_ESCAPE) and value.lstrip(CSV_ESCAPE).startswith(FORMULA_STARTS):
        return value[1:]
    return value
