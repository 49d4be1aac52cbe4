"""Blocking: which record pairs are compared at all.

Each rule is a list of columns; two records are a candidate pair under a rule when they agree
on every column of it (a record missing any of them is not blocked by that rule). Rules are
OR-ed: a pair found by several rules is kept once, credited to the first rule that found it.
Pairs are generated in numpy from the sorted block keys, never one Python loop per block.

A rule with ``swap_with`` compares one record's ``columns`` with the other record's
``swap_with`` columns (a given name written in the surname field). Each pair of columns is
factorised jointly, so that a value has one code in both columns, and each record gets two
keys in one code space: its ``columns`` key and its ``swap_with`` key. A block is the records
whose first key is k (one side) and those whose second key is k (the other side); the pairs
are the cross product of the two sides, in either direction, a record never paired with
itself.

A block larger than ``max_block_size`` records (a placeholder birth date shared by thousands,
the commonest given name) would produce millions of useless pairs: it is dropped and reported
with its key, so that a steward sees which value caused it. Keys are never logged.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from matching.errors import MatchingWarning
from matching.settings import BlockingRule

__all__ = [
    "BlockingReport",
    "CandidatePairs",
    "RuleReport",
    "block_records",
    "rule_key",
    "swap_rule_keys",
]

log = logging.getLogger(__name__)

# oversized blocks listed per rule in the report (the largest first); the rest are counted
MAX_REPORTED_BLOCKS = 50


@dataclass
class RuleReport:
    """What one blocking rule contributed."""

    rule: str
    columns: list[str]
    records_without_key: int
    blocks: int
    pairs: int
    """Pairs the rule generated (before removing those found by earlier rules)."""
    new_pairs: int
    cumulative_pairs: int
    oversized_blocks: int
    oversized_records: int
    oversized_examples: list[dict[str, Any]] = field(default_factory=list)
    """The largest dropped blocks: ``{"key": {column: value}, "size": records}``."""
    skipped: str | None = None
    true_pairs_new: int | None = None
    cumulative_recall: float | None = None
    swap_with: list[str] | None = None
    """For a swapped rule, the columns matched against the other record's ``columns``."""


@dataclass
class BlockingReport:
    """Pairs per rule, cumulative pairs and (with a truth) the recall of true pairs."""

    n_records: int
    max_block_size: int
    rules: list[RuleReport]
    total_pairs: int
    true_pairs: int | None = None
    recall: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_records": self.n_records,
            "max_block_size": self.max_block_size,
            "total_pairs": self.total_pairs,
            "true_pairs": self.true_pairs,
            "recall": self.recall,
            "rules": [vars(r) for r in self.rules],
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per rule, for the match report."""
        rows = [{k: v for k, v in vars(r).items() if k != "oversized_examples"}
                for r in self.rules]
        return pd.DataFrame(rows)


@dataclass
class CandidatePairs:
    """Deduplicated candidate pairs (``left < right``, record positions).

    Attributes:
        left, right: record positions of each pair.
        rule: index (into ``rule_names``) of the first rule that found the pair.
        rule_names: the rules that ran, in order.
        keys: per rule, the block key of each record (``-1``: no key, or its block was
            dropped as oversized), used to select a rule's pairs again for training.
        report: the blocking report.
        swap_keys: per swapped rule, each record's key on the ``swap_with`` side (same code
            space as its ``keys``).
    """

    n_records: int
    left: np.ndarray
    right: np.ndarray
    rule: np.ndarray
    rule_names: list[str]
    keys: dict[str, np.ndarray]
    report: BlockingReport
    swap_keys: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.left.size)

    def agree_on_rule(self, name: str) -> np.ndarray:
        """Mask of the candidate pairs that the rule ``name`` generates."""
        return _agree(self.keys[name], self.swap_keys.get(name), self.left, self.right)


def _agree(key: np.ndarray, swap: np.ndarray | None, left: np.ndarray,
           right: np.ndarray) -> np.ndarray:
    """Mask of the pairs a rule with these keys generates (``swap``: its other side)."""
    kl = key[left]
    if swap is None:
        return (kl >= 0) & (kl == key[right])
    kr = key[right]
    return ((kl >= 0) & (kl == swap[right])) | ((kr >= 0) & (kr == swap[left]))


def _column_codes(series: pd.Series) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    return codes.astype(np.int64, copy=False), len(uniques)


def _combine(parts: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """One int64 key from several code arrays (``-1`` where any part is ``-1``).

    Mixed-radix digits while the product of the cardinalities fits in int64; the partial key
    is re-factorised (made dense) only when the next digit would overflow.
    """
    key = parts[0][0].copy()
    card = max(parts[0][1], 1)
    for codes, k in parts[1:]:
        k = max(k, 1)
        valid = (key >= 0) & (codes >= 0)
        if card * k >= 2**62:
            dense = np.full(key.size, -1, dtype=np.int64)
            dense[valid] = pd.factorize(key[valid])[0]
            key, card = dense, int(dense.max()) + 1 if valid.any() else 1
        # in place on our own copy: half the time of np.where over new temporaries
        np.multiply(key, k, out=key)
        np.add(key, codes, out=key)
        np.copyto(key, -1, where=~valid)
        card *= k
    return key


def rule_key(records: pd.DataFrame, columns: Sequence[str],
             cache: dict[str, tuple[np.ndarray, int]] | None = None) -> np.ndarray:
    """Block key per record for ``columns`` (int64; ``-1`` where any column is missing)."""
    cache = {} if cache is None else cache
    for col in columns:
        if col not in cache:
            cache[col] = _column_codes(records[col])
    return _combine([cache[col] for col in columns])


def swap_rule_keys(records: pd.DataFrame, columns: Sequence[str], swap_with: Sequence[str],
                   cache: dict[str, tuple[np.ndarray, int]] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The two keys of a swapped rule per record, in one code space (``-1``: missing).

    The ``columns`` key of record a equals the ``swap_with`` key of record b exactly when
    ``a[columns[i]] == b[swap_with[i]]`` for every i.
    """
    cache = {} if cache is None else cache
    n = len(records)
    parts = []
    for col_a, col_b in zip(columns, swap_with, strict=True):
        if col_a == col_b:
            if col_a not in cache:
                cache[col_a] = _column_codes(records[col_a])
            codes, k = cache[col_a]
            parts.append((np.concatenate([codes, codes]), k))
        else:
            joint = f"{col_a}\x00{col_b}"
            if joint not in cache:
                values = pd.concat([records[col_a], records[col_b]], ignore_index=True)
                cache[joint] = _column_codes(values)
            parts.append(cache[joint])
    key = _combine(parts)
    return key[:n].copy(), key[n:].copy()


def _cross_pairs(key_a: np.ndarray, key_b: np.ndarray, max_block_size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (left < right, distinct) of records a, b with ``key_a[a] == key_b[b]``.

    Returns (left, right, block keys, records per block on each side, block sizes) where the
    last three describe every block with both sides (its size is the records on both sides)
    so that oversized blocks can be reported.
    """
    va, vb = np.flatnonzero(key_a >= 0), np.flatnonzero(key_b >= 0)
    oa = va[np.argsort(key_a[va], kind="stable")]
    ob = vb[np.argsort(key_b[vb], kind="stable")]
    ua, start_a, count_a = np.unique(key_a[oa], return_index=True, return_counts=True)
    ub, start_b, count_b = np.unique(key_b[ob], return_index=True, return_counts=True)
    common, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
    na, nb = count_a[ia], count_b[ib]
    sizes = na + nb
    keep = sizes <= max_block_size
    sa, sb, ka_n, kb_n = start_a[ia][keep], start_b[ib][keep], na[keep], nb[keep]
    per_block = ka_n * kb_n
    total = int(per_block.sum())
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, common, np.stack([na, nb]), sizes
    block_of = np.repeat(np.arange(per_block.size), per_block)
    local = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(per_block) - per_block,
                                                         per_block)
    i, j = np.divmod(local, kb_n[block_of])
    a = oa[sa[block_of] + i]
    b = ob[sb[block_of] + j]
    distinct = a != b
    a, b = a[distinct], b[distinct]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    # both directions of a full swap give the same pair: keep it once
    flat = np.unique(lo.astype(np.int64) * max(key_a.size, 1) + hi)
    left, right = np.divmod(flat, max(key_a.size, 1))
    return left, right, common, np.stack([na, nb]), sizes


def _pairs_from_key(key: np.ndarray, max_block_size: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All i<j pairs within blocks of at most ``max_block_size`` records.

    Returns (left, right, sorted record positions, block starts, block sizes) where the last
    three describe every block (kept or not) so that oversized blocks can be reported.
    """
    valid = np.flatnonzero(key >= 0)
    k = key[valid]
    order = np.argsort(k, kind="stable")
    idx = valid[order]  # ascending within a block, so left < right below
    ks = k[order]
    if ks.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, idx, empty, empty
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    sizes = np.diff(np.r_[starts, ks.size])
    keep = (sizes >= 2) & (sizes <= max_block_size)
    k_starts, k_sizes = starts[keep], sizes[keep]
    n_elem = int(k_sizes.sum())
    if n_elem == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, idx, starts, sizes
    # position of each element of the kept blocks in the sorted order, and its block's size
    block_of = np.repeat(np.arange(k_sizes.size), k_sizes)
    local = np.arange(n_elem) - np.repeat(np.cumsum(k_sizes) - k_sizes, k_sizes)
    pos = k_starts[block_of] + local
    counts = k_sizes[block_of] - 1 - local  # partners after this element in its block
    total = int(counts.sum())
    left_pos = np.repeat(pos, counts)
    first = np.cumsum(counts) - counts
    right_pos = np.arange(total, dtype=np.int64) - np.repeat(first - pos - 1, counts)
    return idx[left_pos], idx[right_pos], idx, starts, sizes


def block_records(
    records: pd.DataFrame,
    rules: Sequence[BlockingRule],
    max_block_size: int,
    truth: np.ndarray | pd.Series | None = None,
) -> CandidatePairs:
    """Candidate pairs of ``records`` under the OR of ``rules``.

    Args:
        records: standardised records; positions ``0 .. n-1`` are the record indices.
        rules: blocking rules; a rule naming a column absent from ``records`` is skipped with
            a :class:`MatchingWarning`.
        max_block_size: blocks with more records are dropped and reported.
        truth: optional person id per record; the report then gives the recall of true pairs.

    Returns:
        The deduplicated :class:`CandidatePairs` with its :class:`BlockingReport`.
    """
    n = len(records)
    dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
    truth_codes = None
    true_total = None
    if truth is not None:
        truth_codes, _ = pd.factorize(np.asarray(truth), use_na_sentinel=True)
        if truth_codes.size != n:
            warnings.warn(f"truth has {truth_codes.size} values for {n} records: recall not "
                          "computed", MatchingWarning, stacklevel=2)
            truth_codes = None
        else:
            c = np.bincount(truth_codes[truth_codes >= 0]).astype(np.int64)
            true_total = int((c * (c - 1) // 2).sum())

    cache: dict[str, tuple[np.ndarray, int]] = {}
    # effective keys (and swap-side keys) of the rules already applied
    earlier: list[tuple[np.ndarray, np.ndarray | None]] = []
    lefts: list[np.ndarray] = []
    rights: list[np.ndarray] = []
    rule_ids: list[np.ndarray] = []
    names: list[str] = []
    keys: dict[str, np.ndarray] = {}
    swap_keys: dict[str, np.ndarray] = {}
    reports: list[RuleReport] = []
    cumulative = 0
    true_found = 0
    if n == 0:
        warnings.warn("no records to block: no candidate pairs", MatchingWarning, stacklevel=2)

    for rule in rules:
        missing_cols = [c for c in rule.all_columns if c not in records.columns]
        swap = list(rule.swap_with) if rule.swap_with is not None else None
        if missing_cols:
            msg = (f"blocking rule {rule.name!r} skipped: column(s) "
                   f"{', '.join(missing_cols)} not in the records")
            warnings.warn(msg, MatchingWarning, stacklevel=2)
            reports.append(RuleReport(rule.name, list(rule.columns), n, 0, 0, 0, cumulative,
                                      0, 0, skipped=msg, swap_with=swap))
            continue
        examples = []
        if rule.swap_with is None:
            key = rule_key(records, rule.columns, cache) if n else np.empty(0, dtype=np.int64)
            swap_key = None
            without_key = int((key < 0).sum())
            left, right, idx, starts, sizes = _pairs_from_key(key, max_block_size)
            over = np.flatnonzero(sizes > max_block_size)
            over_sizes = sizes[over]
            order = over[np.argsort(-sizes[over], kind="stable")][:MAX_REPORTED_BLOCKS]
            example_rows = [int(idx[starts[b]]) for b in order]
            # drop the records of oversized blocks from the effective key (see dedup below)
            for b in over:
                key[idx[starts[b]:starts[b] + sizes[b]]] = -1
            n_blocks = int((sizes >= 2).sum())
        else:
            if n:
                key, swap_key = swap_rule_keys(records, rule.columns, rule.swap_with, cache)
            else:
                key = swap_key = np.empty(0, dtype=np.int64)
            without_key = int(((key < 0) & (swap_key < 0)).sum())
            left, right, block_keys, _, sizes = _cross_pairs(key, swap_key, max_block_size)
            over = np.flatnonzero(sizes > max_block_size)
            over_sizes = sizes[over]
            order = over[np.argsort(-sizes[over], kind="stable")][:MAX_REPORTED_BLOCKS]
            first_a = {}
            if order.size:
                wanted = block_keys[order]
                hit = np.flatnonzero(np.isin(key, wanted))
                _, at = np.unique(key[hit], return_index=True)
                first_a = dict(zip(key[hit][at].tolist(), hit[at].tolist(), strict=True))
            example_rows = [first_a[int(block_keys[b])] for b in order]
            if over.size:
                dropped = np.isin(key, block_keys[over])
                dropped_swap = np.isin(swap_key, block_keys[over])
                key[dropped] = -1
                swap_key[dropped_swap] = -1
            n_blocks = int(sizes.size)
        for b, row_at in zip(order, example_rows, strict=True):
            row = records.iloc[row_at]
            examples.append({"key": {c: _plain(row[c]) for c in rule.columns},
                             "size": int(sizes[b])})
        if over.size:
            log.warning("blocking rule %s: %d oversized block(s) (%d records) dropped; "
                        "see the blocking report", rule.name, over.size, int(over_sizes.sum()))
        generated = int(left.size)
        if earlier and left.size:
            seen = np.zeros(left.size, dtype=bool)
            for prev, prev_swap in earlier:
                seen |= _agree(prev, prev_swap, left, right)
            left, right = left[~seen], right[~seen]
        cumulative += int(left.size)
        rep = RuleReport(
            rule=rule.name, columns=list(rule.columns),
            records_without_key=without_key,
            blocks=n_blocks, pairs=generated, new_pairs=int(left.size),
            cumulative_pairs=cumulative, oversized_blocks=int(over.size),
            oversized_records=int(over_sizes.sum()), oversized_examples=examples,
            swap_with=swap,
        )
        if truth_codes is not None:
            tl = truth_codes[left]
            new_true = int(((tl >= 0) & (tl == truth_codes[right])).sum())
            true_found += new_true
            rep.true_pairs_new = new_true
            rep.cumulative_recall = true_found / true_total if true_total else None
        reports.append(rep)
        log.info("blocking rule %s: %d pairs, %d new, %d cumulative", rule.name, generated,
                 rep.new_pairs, cumulative)
        rule_ids.append(np.full(left.size, len(names), dtype=np.int8))
        names.append(rule.name)
        keys[rule.name] = key
        if swap_key is not None:
            swap_keys[rule.name] = swap_key
        earlier.append((key, swap_key))
        lefts.append(left.astype(dtype, copy=False))
        rights.append(right.astype(dtype, copy=False))

    if rules and not names:
        warnings.warn("no blocking rule could run on these records: no candidate pairs",
                      MatchingWarning, stacklevel=2)
    left_all = np.concatenate(lefts) if lefts else np.empty(0, dtype=dtype)
    right_all = np.concatenate(rights) if rights else np.empty(0, dtype=dtype)
    rule_all = np.concatenate(rule_ids) if rule_ids else np.empty(0, dtype=np.int8)
    report = BlockingReport(
        n_records=n, max_block_size=max_block_size, rules=reports, total_pairs=cumulative,
        true_pairs=true_total,
        recall=(true_found / true_total if true_total else None) if truth_codes is not None
        else None,
    )
    return CandidatePairs(n, left_all, right_all, rule_all, names, keys, report,
                          swap_keys)


def _plain(value: Any) -> Any:
    if value is pd.NA or value is None:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
