"""Golden records: one value per attribute and person, chosen by survivorship rules.

For each attribute of ``persons`` (``schema.GOLDEN_ATTRIBUTES``) the candidates are the
person's records that have a value. They are ranked, first to last:

1. **usable before weak**: for ``pin``, a PIN with a valid check digit before any other;
   for ``birth_date``, an exact date before a partial one before a placeholder (01.01.YYYY);
2. **trust** (rule ``trust``, the default): the register's rank for the attribute under
   ``trust:`` in its YAML file (1 = most trusted; a register that does not list the
   attribute comes last);
3. **recency**: the newest ``source_updated_at`` first (records without it come after);
4. the record key (register, record_id), so that the choice never depends on file order.

For attributes whose rule is ``recency`` (by default ``address``, ``phone`` and
``locality``: people move, and the newest record knows it) steps 2 and 3 are swapped.
Rules can be changed in ``<config>/survivorship.yaml``::

    recency_first: [address, phone, locality]

``birth_date_quality`` always comes with ``birth_date`` from the same record. Each golden
value keeps the record it came from in ``provenance``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from matching.pin import valid_pin_mask
from matching.translit import name_key
from pipelines.errors import ConfigError
from pipelines.store import schema

log = logging.getLogger(__name__)

ATTRIBUTES = tuple(a for a in schema.GOLDEN_ATTRIBUTES if a != "birth_date_quality")
DEFAULT_RECENCY_FIRST = ("address", "phone", "locality")
_UNTRUSTED = 1_000_000
_QUALITY_RANK = {"exact": 0, "partial": 1, "placeholder": 2}


def load_rules(config_dir: str | Path) -> tuple[str, ...]:
    """The attributes chosen by recency first, from ``<config>/survivorship.yaml``."""
    path = Path(config_dir) / "survivorship.yaml"
    if not path.is_file():
        return DEFAULT_RECENCY_FIRST
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(data) - {"recency_first"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected "
                          "recency_first: [attribute, ...]")
    chosen = data.get("recency_first") or []
    bad = [a for a in chosen if a not in ATTRIBUTES]
    if bad:
        raise ConfigError(f"{path}: recency_first: {', '.join(map(str, bad))} is not a golden "
                          f"attribute; expected some of {', '.join(ATTRIBUTES)}")
    return tuple(chosen)


def golden_records(
    records: pd.DataFrame,
    mpi_id: pd.Series | np.ndarray,
    trust: Mapping[str, Mapping[str, int]],
    recency_first: tuple[str, ...] = DEFAULT_RECENCY_FIRST,
    *,
    provenance_as_json: bool = False,
) -> pd.DataFrame:
    """One golden record per MPI ID.

    Args:
        records: canonical records (``register``, ``record_id`` and the attributes;
            ``source_updated_at`` when known).
        mpi_id: the MPI ID of each record (same order as ``records``).
        trust: per register, its ``trust:`` ranks (``RegisterConfig.trust``).
        recency_first: attributes ranked by recency before trust.
        provenance_as_json: give ``provenance`` as canonical JSON text (what
            ``json.dumps(d, sort_keys=True)`` writes), built column-wise: much faster than
            a dict per person for a whole country.

    Returns:
        ``mpi_id``, the golden attributes, ``surname_key``, ``given_key`` and
        ``provenance`` (a dict per person, or its JSON text), sorted by ``mpi_id``.
    """
    ids = np.asarray(mpi_id, dtype=object)
    codes, uniques = pd.factorize(ids, sort=True)
    n_persons = len(uniques)
    n = len(records)
    register_text = _text(records["register"])
    record_id_text = _text(records["record_id"])
    reg_codes, registers = pd.factorize(register_text, sort=True)
    register = np.asarray(registers, dtype=object)[reg_codes] if n else np.empty(0, object)
    # Recency: newer first; as a rank so that it sorts with the integer keys below.
    if "source_updated_at" in records.columns:
        updated = _text(records["source_updated_at"])
        recency = (-pd.factorize(updated, sort=True)[0]).astype(np.int64)
        recency = np.where(updated.isna().to_numpy(), 1, recency)
    else:
        recency = np.zeros(n, dtype=np.int64)
    key_rank = np.empty(n, dtype=np.int64)
    key_rank[np.lexsort((pd.factorize(record_id_text, sort=True)[0], reg_codes))] = np.arange(n)

    out: dict[str, object] = {"mpi_id": uniques}
    sources: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for attr in ATTRIBUTES:
        values = (_text(records[attr]) if attr in records.columns
                  else pd.Series(pd.NA, index=records.index, dtype="string"))
        has = values.notna().to_numpy()
        ranks = np.array([int(trust.get(r, {}).get(attr, _UNTRUSTED)) for r in registers],
                         dtype=np.int64)
        trust_rank = ranks[reg_codes] if n else np.zeros(0, dtype=np.int64)
        if attr == "pin":
            weak = (~valid_pin_mask(values)).astype(np.int64)
        elif attr == "birth_date" and "birth_date_quality" in records.columns:
            q_codes, q_values = pd.factorize(_text(records["birth_date_quality"]))
            q_rank = np.array([_QUALITY_RANK.get(v, 3) for v in q_values] + [3],
                              dtype=np.int64)
            weak = q_rank[q_codes]  # code -1 (missing) takes the last entry: 3
        else:
            weak = np.zeros(n, dtype=np.int64)
        first, second = (recency, trust_rank) if attr in recency_first else (trust_rank, recency)
        idx = np.flatnonzero(has)
        order = idx[np.lexsort((key_rank[idx], second[idx], first[idx], weak[idx], codes[idx]))]
        person = codes[order]
        winner = order[np.r_[True, person[1:] != person[:-1]]] if order.size else order
        pick = np.full(n_persons, -1, dtype=np.int64)
        pick[codes[winner]] = winner
        out[attr] = _take(values, pick)
        sources[attr] = (codes[winner], winner)
        if attr == "birth_date":
            if "birth_date_quality" in records.columns:
                out["birth_date_quality"] = _take(_text(records["birth_date_quality"]), pick)
            else:
                out["birth_date_quality"] = pd.Series(pd.NA, index=range(n_persons),
                                                      dtype="string")
            sources["birth_date_quality"] = sources["birth_date"]

    golden = pd.DataFrame(out)
    golden["birth_date_quality"] = golden["birth_date_quality"].where(
        golden["birth_date"].notna(), "missing")
    golden["surname_key"] = _keys(golden["surname"])
    golden["given_key"] = _keys(golden["given_name"])
    golden["provenance"] = (_provenance_json if provenance_as_json else _provenance)(
        n_persons, sources, register, record_id_text)
    return golden


def _text(values: pd.Series) -> pd.Series:
    """A text column as it is when it is text already (no copy), else as ``string``."""
    if pd.api.types.is_string_dtype(values) and not pd.api.types.is_object_dtype(values):
        return values.reset_index(drop=True)
    return values.astype("string").reset_index(drop=True)


def _take(values: pd.Series, rows: np.ndarray) -> pd.Series:
    """``values`` at ``rows`` (-1: missing), keeping the column's text type."""
    return pd.Series(values.array.take(rows, allow_fill=True))


def _keys(values: pd.Series) -> np.ndarray:
    codes, uniques = pd.factorize(values)
    keys = np.array([name_key(v) for v in uniques] + [None], dtype=object)
    return keys[codes]  # code -1 (missing) takes the last entry: None


def _provenance(n: int, sources: dict[str, tuple[np.ndarray, np.ndarray]],
                register: np.ndarray, record_id: pd.Series | np.ndarray) -> list[dict]:
    """Per person: {attribute: {"register": ..., "record_id": ...}} for each golden value."""
    record_id = np.asarray(record_id, dtype=object)
    names = list(sources)
    columns = []
    for attr in names:
        person, row = sources[attr]
        column = np.full(n, None, dtype=object)
        column[person] = [{"register": r, "record_id": i}
                          for r, i in zip(register[row], record_id[row], strict=True)]
        columns.append(column)
    return [{a: v for a, v in zip(names, values, strict=True) if v is not None}
            for values in zip(*columns, strict=True)] if columns else [{}] * n


_PLAIN_JSON = r"^[ !#-\[\]-~]*$"  # printable ASCII but quote and backslash: JSON as it is


def _s(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


def _json_strings(text: pa.Array) -> pa.Array:
    """Each value as a JSON string literal (what ``json.dumps`` writes)."""
    quoted = pc.binary_join_element_wise(_s('"'), text, _s('"'), _s(""))
    plain = pc.fill_null(pc.match_substring_regex(text, _PLAIN_JSON), False).to_numpy(
        zero_copy_only=False)
    if plain.all():
        return quoted
    out = quoted.to_numpy(zero_copy_only=False).astype(object)
    out[~plain] = [json.dumps(v) for v in text.filter(pa.array(~plain)).to_pylist()]
    return pa.array(out, type=pa.large_string())


def _provenance_json(n: int, sources: dict[str, tuple[np.ndarray, np.ndarray]],
                     register: np.ndarray, record_id: pd.Series | np.ndarray) -> pd.Series:
    """:func:`_provenance` as ``json.dumps(..., sort_keys=True)`` text, per person (built
    column-wise with Arrow: a country's million persons in seconds)."""
    rows = [row for _, row in sources.values() if row.size]
    if not rows:
        return pd.Series(["{}"] * n, dtype="str")
    used = np.flatnonzero(np.bincount(np.concatenate(rows), minlength=len(record_id)))
    at = np.full(len(record_id), -1, dtype=np.int64)
    at[used] = np.arange(used.size)
    rid = _json_strings(pa.array(record_id, type=pa.large_string()).take(used))
    reg = _json_strings(pa.array(register[used], type=pa.large_string()))
    pieces = []
    for attr in sorted(sources):
        person, row = sources[attr]
        piece = pc.binary_join_element_wise(
            _s(f'"{attr}": {{"record_id": '), rid.take(at[row]), _s(', "register": '),
            reg.take(at[row]), _s("}, "), _s(""))
        slot = np.full(n, -1, dtype=np.int64)
        slot[person] = np.arange(person.size)
        pieces.append(pc.fill_null(piece.take(pa.array(slot, mask=slot < 0)), _s("")))
    # Each piece ends in ", "; the last one's is trimmed (a piece itself ends in "}").
    joined = pc.utf8_rtrim(pc.binary_join_element_wise(*pieces, _s("")), characters=", ")
    # Kept as Arrow text: a million persons' provenance as Python strings is gigabytes.
    return pd.Series(pd.arrays.ArrowStringArray(
        pc.binary_join_element_wise(_s("{"), joined, _s("}"), _s(""))))
