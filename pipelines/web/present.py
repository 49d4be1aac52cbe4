"""How personal data is shown: masking for viewers, and CSV cells safe for spreadsheets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MASK = "***"

#: Golden-record and record fields that identify a person, and how each is masked for viewers.
#: Region and district are kept: they are the slicing dimensions of the dashboards.
NAME_FIELDS = ("surname", "given_name", "patronymic", "father_name", "mother_name")
DATE_FIELDS = ("birth_date", "death_date")
HIDDEN_FIELDS = ("locality", "address", "phone")
ID_FIELDS = ("pin", "record_id", "record_id_l", "record_id_r")


def mask_id(value: object) -> str | None:
    """A PIN or record ID with all but its last three characters hidden: ``***-***-123``."""
    if value is None or value == "":
        return None
    text = str(value)
    return f"***-***-{text[-3:]}" if len(text) > 3 else MASK


def mask_name(value: object) -> str | None:
    """Initial of each word and a mask: ``Karimov Ali`` -> ``K*** A***``."""
    if value is None or value == "":
        return None
    words = str(value).split()
    return " ".join(w[0] + MASK for w in words) if words else MASK


def mask_date(value: object) -> str | None:
    """Year only: ``1985-03-12`` -> ``1985``."""
    if value is None or value == "":
        return None
    return str(value)[:4]


def mask_value(field: str, value: Any) -> Any:
    """``value`` of ``field`` as a viewer may see it."""
    if value is None or value == "":
        return value
    if field in NAME_FIELDS:
        return mask_name(value)
    if field in DATE_FIELDS:
        return mask_date(value)
    if field in ID_FIELDS:
        return mask_id(value)
    if field in HIDDEN_FIELDS or field == "value":
        return MASK
    if field == "provenance" and isinstance(value, dict):
        # Which register a golden value came from, not which record (an ID number).
        return {k: {"register": v.get("register")} if isinstance(v, dict) else None
                for k, v in value.items()}
    if field == "record_ids" and isinstance(value, list):
        return [{"register": v.get("register")} if isinstance(v, dict) else None
                for v in value]
    return value


def mask_row(row: Mapping[str, Any], see_all: bool) -> dict[str, Any]:
    """A copy of ``row`` with every personal field masked unless ``see_all``."""
    if see_all:
        return dict(row)
    return {k: mask_value(k, v) for k, v in row.items()}


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: object) -> str:
    """A cell a spreadsheet will not run as a formula (OWASP CSV injection).

    A cell starting with ``= + - @``, a tab or a carriage return gets a leading single quote.
    """
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


__all__ = ["csv_safe", "mask_date", "mask_id", "mask_name", "mask_row", "mask_value"]
