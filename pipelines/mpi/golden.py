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

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
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
) -> pd.DataFrame:
    """One golden record per MPI ID.

    Args:
        records: canonical records (``register``, ``record_id`` and the attributes;
            ``source_updated_at`` when known).
        mpi_id: the MPI ID of each record (same order as ``records``).
        trust: per register, its ``trust:`` ranks (``RegisterConfig.trust``).
        recency_first: attributes ranked by recency before trust.

    Returns:
        ``mpi_id``, the golden attributes, ``surname_key``, ``given_key`` and
        ``provenance`` (a dict per person), sorted by ``mpi_id``.
    """
    ids = np.asarray(mpi_id, dtype=object)
    codes, uniques = pd.factorize(ids, sort=True)
    n_persons = len(uniques)
    register = records["register"].astype(str).to_numpy(dtype=object)
    record_id = records["record_id"].astype(str).to_numpy(dtype=object)
    # Recency: newer first; as a rank so that it sorts with the integer keys below.
    if "source_updated_at" in records.columns:
        updated = records["source_updated_at"].astype("string")
        recency = (-pd.Series(pd.factorize(updated, sort=True)[0])).to_numpy()
        recency = np.where(updated.isna().to_numpy(), 1, recency)
    else:
        recency = np.zeros(len(records), dtype=np.int64)
    key_rank = pd.factorize(pd.Series(register + "\x00" + record_id), sort=True)[0]

    out: dict[str, object] = {"mpi_id": uniques}
    sources: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    registers = sorted(set(register))
    for attr in ATTRIBUTES:
        values = (records[attr].astype("string") if attr in records.columns
                  else pd.Series(pd.NA, index=records.index, dtype="string"))
        has = values.notna().to_numpy()
        rank_by_register = {r: int(trust.get(r, {}).get(attr, _UNTRUSTED)) for r in registers}
        trust_rank = pd.Series(register).map(rank_by_register).to_numpy(dtype=np.int64)
        if attr == "pin":
            weak = (~valid_pin_mask(values)).astype(np.int64)
        elif attr == "birth_date" and "birth_date_quality" in records.columns:
            weak = records["birth_date_quality"].astype("string").map(_QUALITY_RANK).fillna(3)
            weak = weak.to_numpy(dtype=np.int64)
        else:
            weak = np.zeros(len(records), dtype=np.int64)
        first, second = (recency, trust_rank) if attr in recency_first else (trust_rank, recency)
        idx = np.flatnonzero(has)
        order = idx[np.lexsort((key_rank[idx], second[idx], first[idx], weak[idx], codes[idx]))]
        person = codes[order]
        winner = order[np.r_[True, person[1:] != person[:-1]]] if order.size else order
        column = np.full(n_persons, None, dtype=object)
        column[codes[winner]] = values.to_numpy(dtype=object)[winner]
        out[attr] = column
        sources[attr] = (codes[winner], winner)
        if attr == "birth_date":
            quality = np.full(n_persons, None, dtype=object)
            if "birth_date_quality" in records.columns:
                quality[codes[winner]] = records["birth_date_quality"].astype("string") \
                    .to_numpy(dtype=object)[winner]
            out["birth_date_quality"] = quality
            sources["birth_date_quality"] = sources["birth_date"]

    golden = pd.DataFrame(out)
    golden["birth_date_quality"] = golden["birth_date_quality"].where(
        golden["birth_date"].notna(), "missing")
    golden["surname_key"] = _keys(golden["surname"])
    golden["given_key"] = _keys(golden["given_name"])
    golden["provenance"] = _provenance(n_persons, sources, register, record_id)
    return golden


def _keys(values: pd.Series) -> np.ndarray:
    uniques = values.dropna().unique()
    mapping = {v: name_key(v) for v in uniques}
    keys = values.map(mapping).astype(object)
    return keys.where(keys.notna(), None).to_numpy(dtype=object)


def _provenance(n: int, sources: dict[str, tuple[np.ndarray, np.ndarray]],
                register: np.ndarray, record_id: np.ndarray) -> list[dict]:
    """Per person: {attribute: {"register": ..., "record_id": ...}} for each golden value."""
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
