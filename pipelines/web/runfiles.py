"""What the console reads from a run's folder (``<data-dir>/runs/<run_id>/``).

- ``link/report.json``: counts, thresholds, blocking report;
- ``link/model.json``: the model's parameters per comparison level;
- ``link/pairs.parquet``: scored pairs (match weight per pair, per register pair);
- ``validate/summary.json``: data-quality results per register;
- ``validate/data_docs/``: Great Expectations Data Docs;
- ``validate/<register>.parquet`` (else ``extract/``): the records, for the pair view.

Files are read once and cached by (path, modification time, size): a page of the match
report of a run with millions of pairs then costs a dictionary lookup, and a rerun that
replaces a file is picked up.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")

#: Record fields shown side by side on the pair page, in this order.
RECORD_FIELDS = (
    "pin", "surname", "given_name", "patronymic", "sex", "birth_date", "birth_date_quality",
    "death_date", "father_name", "mother_name", "region", "district", "locality", "address",
    "phone",
)

_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_SIZE = 64
_LOCK = threading.Lock()


def _cached(path: Path, kind: str, load: Callable[[Path], Any]) -> Any:
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), kind, st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = load(path)
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


class RunFiles:
    """The files of one run, read lazily."""

    def __init__(self, data_dir: Path, run_id: str) -> None:
        if not _RUN_ID.match(run_id):
            raise ValueError("not a run id")
        self.run_id = run_id
        self.dir = Path(data_dir) / "runs" / run_id

    def _json(self, rel: str) -> dict | None:
        return _cached(self.dir / rel, "json", lambda p: json.loads(p.read_text("utf-8")))

    @property
    def link_report(self) -> dict | None:
        return self._json("link/report.json")

    @property
    def model(self) -> dict | None:
        return self._json("link/model.json")

    @property
    def validation(self) -> dict | None:
        return self._json("validate/summary.json")

    @property
    def data_docs_dir(self) -> Path:
        return self.dir / "validate" / "data_docs"

    def has_data_docs(self) -> bool:
        return (self.data_docs_dir / "index.html").is_file()

    def thresholds(self) -> dict[str, float] | None:
        """Link and review thresholds as probabilities, from the report or the model."""
        for doc in (self.link_report, self.model):
            if doc and isinstance(doc.get("thresholds"), dict):
                th = doc["thresholds"]
                return {k: float(th[k]) for k in ("link", "review") if k in th}
        return None

    def pair_summary(self) -> dict | None:
        """Weights and per-register-pair counts of ``link/pairs.parquet`` (cached)."""
        return _cached(self.dir / "link" / "pairs.parquet", "summary", _summarise_pairs)

    def records(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """The run's records for (register, record_id) keys; missing ones are left out."""
        found: dict[tuple[str, str], dict] = {}
        by_register: dict[str, list[str]] = {}
        for register, record_id in keys:
            by_register.setdefault(register, []).append(record_id)
        for register, ids in by_register.items():
            if not re.match(r"^[A-Za-z0-9_-]{1,64}$", register):
                continue
            for step in ("validate", "extract"):
                path = self.dir / step / f"{register}.parquet"
                if not path.is_file():
                    continue
                table = _read_records(path, tuple(sorted(set(ids))))
                for row in table:
                    found[(register, str(row["record_id"]))] = row
                break
        return found


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Integer codes and their labels of a text column (dictionary encoding in Arrow)."""
    array = column.combine_chunks()
    encoded = array if pa.types.is_dictionary(array.type) else pc.dictionary_encode(array)
    codes = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [str(v) for v in encoded.dictionary.to_pylist()]


def _summarise_pairs(path: Path) -> dict:
    # Millions of pairs: integer codes and numpy, never a Python object per pair.
    names = set(pq.read_schema(path).names)
    cols = [c for c in ("register_l", "register_r", "match_weight", "match_probability")
            if c in names]
    # Chunks of a dictionary column may carry different dictionaries: one for all.
    table = pq.read_table(path, columns=cols).unify_dictionaries()
    weights = table.column("match_weight").to_numpy().astype(np.float64)
    summary: dict[Any, Any] = {"weights": weights, "prob": None, "pair_code": None,
                               "pair_labels": []}
    if {"register_l", "register_r", "match_probability"} <= set(cols):
        left, left_labels = _codes(table.column("register_l"))
        right, right_labels = _codes(table.column("register_r"))
        summary["prob"] = table.column("match_probability").to_numpy().astype(np.float64)
        summary["pair_code"] = left * len(right_labels) + right
        summary["pair_labels"] = [f"{a} – {b}" for a in left_labels for b in right_labels]
    return summary


def band_counts(summary: dict, thresholds: dict[str, float]) -> list[dict]:
    """Scored, linked and review pair counts per register pair (cached per thresholds)."""
    key = ("bands", thresholds.get("link"), thresholds.get("review"))
    if key in summary:
        return summary[key]
    prob, code, labels = summary["prob"], summary["pair_code"], summary["pair_labels"]
    merged: dict[str, list[int]] = {}
    if prob is not None and len(labels):
        linked = prob >= thresholds.get("link", 1.0)
        in_review = (prob >= thresholds.get("review", 0.0)) & ~linked
        n_all = np.bincount(code, minlength=len(labels))
        n_linked = np.bincount(code, weights=linked, minlength=len(labels))
        n_review = np.bincount(code, weights=in_review, minlength=len(labels))
        for label, a, lk, rv in zip(labels, n_all, n_linked, n_review, strict=True):
            if a == 0:
                continue
            # "civil – health" and "health – civil" are one register pair.
            name = " – ".join(sorted(label.split(" – ")))
            row = merged.setdefault(name, [0, 0, 0])
            row[0] += int(a)
            row[1] += int(lk)
            row[2] += int(rv)
    rows = [{"pair": k, "scored": v[0], "linked": v[1], "review": v[2]}
            for k, v in sorted(merged.items())]
    summary[key] = rows
    return rows


def cached_in(summary: dict, key: tuple, make: Callable[[], Any]) -> Any:
    """A value derived from a pair summary, computed once per summary and key."""
    if key not in summary:
        summary[key] = make()
    return summary[key]


def _read_records(path: Path, ids: tuple[str, ...]) -> list[dict]:
    names = pq.read_schema(path).names
    cols = ["record_id"] + [c for c in RECORD_FIELDS if c in names]
    try:
        table = pq.read_table(path, columns=cols, filters=[("record_id", "in", list(ids))])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        log.warning("cannot read records from %s: %s", path, exc)
        return []
    return table.to_pylist()


__all__ = ["RECORD_FIELDS", "RunFiles", "band_counts", "cached_in"]
