"""The checks every name, id and free text passes before the service stores or echoes it.

One set of rules for every way in (HTTP fields, the console's forms, import manifests and archives, the CLI), so that
what one door refuses no other lets through. A refusal is `InvalidValue` (service/errors.py), whose message names the
field and, escaped, the offending character: never the raw control character itself.
"""

from __future__ import annotations

from reference_catalog import LABELS
from reference_catalog.text import NOTE_ALLOWED, control_character
from service.errors import InvalidValue

MAX_NAME_LENGTH = 200
MAX_SOURCE_LENGTH = 500
MAX_NOTE_LENGTH = 2000


def check_text(value: str, field: str, max_length: int, allowed: str = "") -> str:
    """`value` if it is at most `max_length` characters and holds no control character but those in `allowed`
    (`reference_catalog.text.control_character`); else InvalidValue, which names the character escaped."""
    if len(value) > max_length:
        raise InvalidValue(f"{field} is longer than {max_length} characters")
    bad = control_character(value, allowed)
    if bad:
        raise InvalidValue(f"{field} contains control characters ({bad})")
    return value


def clean_name(value: str | None, field: str) -> str:
    """Validate a brand or product name: non-empty, bounded, printable."""
    text = (value or "").strip()
    if not text:
        raise InvalidValue(f"{field} is required")
    return check_text(text, field, MAX_NAME_LENGTH)


def clean_id(value: str | None, field: str) -> str | None:
    """An optional identifier (a listing_id): None when empty; bounded and printable, kept as given."""
    return check_text(value, field, MAX_NAME_LENGTH) if value else None


def clean_source(value: str | None, field: str = "source") -> str | None:
    """An optional provenance (a reference image's source, its photo shoot): None when empty; bounded, printable."""
    return check_text(value, field, MAX_SOURCE_LENGTH) if value else None


def clean_note(value: str | None) -> str | None:
    """A reviewer's free-text note: may hold line breaks and tabs, no other control character (NUL, ESC, ...)."""
    return check_text(value, "note", MAX_NOTE_LENGTH, NOTE_ALLOWED) if value else None


def check_label(label: str) -> str:
    """A reference image's label: one of `LABELS`."""
    if label not in LABELS:
        raise InvalidValue(f"label must be one of {', '.join(LABELS)}, not {label!r}")
    return label
