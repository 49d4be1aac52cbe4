"""Error injection: the kinds of mistakes real register extracts contain, at given rates.

One number, ``--error-rate`` (default 0.05), scales every kind; :class:`ErrorRates` turns
it into the rate of each kind. With 0 the registers are clean: still different layouts,
scripts, surname forms and placeholder dates, but no typos, duplicates or stale statuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.synth import calendar as cal

_CYRILLIC = "абвгдежзийклмнопрстуфхчшыэюяҳҷқғӯӣ"
_CYRILLIC_RU = "абвгдежзийклмнопрстуфхчшыэюя"
_LATIN = "abdefghijklmnopqrstuvyz"


@dataclass(frozen=True)
class ErrorRates:
    """Per-kind rates derived from the overall ``--error-rate``."""

    rate: float

    @property
    def typo(self) -> float:  # per name field: insert / delete / substitute / transpose
        return 0.5 * self.rate

    @property
    def scheme_mix(self) -> float:  # records not in the register's usual spelling
        return min(0.6, 6.0 * self.rate)

    @property
    def day_month_swap(self) -> float:
        return 0.2 * self.rate

    @property
    def date_typo(self) -> float:  # year off by one
        return 0.1 * self.rate

    @property
    def missing(self) -> float:  # per optional field
        return 0.4 * self.rate

    @property
    def duplicate(self) -> float:  # same person twice in a register, fresh record id
        return 0.3 * self.rate

    @property
    def name_swap(self) -> float:  # given name and surname swapped
        return 0.1 * self.rate

    @property
    def compound(self) -> float:  # compound given name split or joined the other way
        return min(1.0, 4.0 * self.rate)

    @property
    def absent(self) -> float:  # extra absence from a register, on top of its coverage
        return 0.5 * self.rate

    @property
    def wrong_pin(self) -> float:  # one digit changed or two adjacent digits swapped
        return 0.1 * self.rate

    @property
    def stale_status(self) -> float:  # the dead still active (roll, pension, ID, health)
        return min(1.0, 3.0 * self.rate)

    @property
    def minor_voter(self) -> float:  # 16–17-year-olds on the electoral roll
        return 0.5 * self.rate


def typos(
    values: np.ndarray,
    rate: float | np.ndarray,
    rng: np.random.Generator,
    russian: bool = False,
) -> None:
    """Change one character of a share ``rate`` (scalar or per row) of the strings, in place."""
    n = len(values)
    if n == 0:
        return
    hit = np.flatnonzero(rng.random(n) < rate)
    if len(hit) == 0:
        return
    ops = rng.integers(0, 4, len(hit))
    where = rng.random(len(hit))
    letter = rng.random(len(hit))
    cyr_alphabet = _CYRILLIC_RU if russian else _CYRILLIC
    for k, i in enumerate(hit.tolist()):
        text = values[i]
        if not text or len(text) < 3:
            continue
        alphabet = cyr_alphabet if text[0] >= "\u0400" else _LATIN
        new = alphabet[int(letter[k] * len(alphabet))]
        if text.isupper():
            new = new.upper()
        pos = 1 + int(where[k] * (len(text) - 2))  # keep the first letter: rarely mistyped
        op = ops[k]
        if op == 0:
            text = text[:pos] + new + text[pos:]
        elif op == 1:
            text = text[:pos] + text[pos + 1 :]
        elif op == 2:
            text = text[:pos] + new + text[pos + 1 :]
        else:
            text = text[: pos - 1] + text[pos] + text[pos - 1] + text[pos + 1 :]
        values[i] = text


def blank(values: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Empty a share ``rate`` of the values in place; returns the mask of emptied rows."""
    mask = rng.random(len(values)) < rate
    values[mask] = ""
    return mask


def swap_names(
    surname: np.ndarray, given: np.ndarray, rate: float, rng: np.random.Generator
) -> None:
    mask = rng.random(len(surname)) < rate
    surname[mask], given[mask] = given[mask].copy(), surname[mask].copy()


def date_errors(days: np.ndarray, rates: ErrorRates, rng: np.random.Generator) -> np.ndarray:
    """Day/month swaps (where the day could be a month) and years off by one."""
    days = days.copy()
    known = (days >= 0) & (days < cal.N_DAYS)
    safe = np.clip(days, 0, cal.N_DAYS - 1)
    y, m, d = cal.YEAR[safe], cal.MONTH[safe], cal.DAY[safe]
    swap = known & (d <= 12) & (d != m) & (rng.random(len(days)) < rates.day_month_swap)
    days[swap] = cal.from_parts(y[swap], d[swap], m[swap])
    shift = known & ~swap & (rng.random(len(days)) < rates.date_typo)
    delta = np.where(rng.random(len(days)) < 0.5, -1, 1)
    days[shift] = cal.from_parts(y[shift] + delta[shift], m[shift], d[shift])
    return days


def wrong_pin_digits(pins: np.ndarray, rate: float, rng: np.random.Generator) -> None:
    """Change one digit, or swap two adjacent digits, of a share ``rate`` of PINs in place."""
    hit = np.flatnonzero((rng.random(len(pins)) < rate) & (pins != ""))
    if len(hit) == 0:
        return
    pos = rng.integers(0, 8, len(hit))
    transpose = rng.random(len(hit)) < 0.3
    bump = rng.integers(1, 10, len(hit))
    for k, i in enumerate(hit.tolist()):
        chars = list(pins[i])
        p = int(pos[k])
        if transpose[k]:
            chars[p], chars[p + 1] = chars[p + 1], chars[p]
        else:
            chars[p] = str((int(chars[p]) + int(bump[k])) % 10)
        pins[i] = "".join(chars)
