"""The PIN check digit (Luhn over 8 digits + 1), as a data steward would check it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from matching.errors import MatchingError
from matching.pin import is_valid_pin, pin_check_digit, pin_check_digits, valid_pin_mask


def _reference_luhn_valid(number: str) -> bool:
    """Textbook Luhn over any digit string, written independently of matching.pin."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return total % 10 == 0


@pytest.mark.parametrize(
    ("body", "check"),
    [
        ("12345678", "2"),  # worked example of the module docstring
        ("00000000", "0"),
        ("00000001", "8"),  # the last body digit is doubled: 2 -> check 8
        ("00000010", "9"),  # the one before it is not: 1 -> check 9
        ("99999999", "8"),
        ("40000000", "6"),
    ],
)
def test_check_digit_of_known_bodies(body: str, check: str) -> None:
    assert pin_check_digit(body) == check
    assert is_valid_pin(body + check)
    assert _reference_luhn_valid(body + check)


@pytest.mark.parametrize(
    ("pin", "valid", "why"),
    [
        ("123456782", True, "correct check digit"),
        ("123456781", False, "wrong check digit"),
        ("123456783", False, "wrong check digit"),
        ("123456882", False, "one digit mistyped"),
        ("213456782", False, "two adjacent digits swapped"),
        ("000000000", True, "all zeros is well formed"),
        ("12345678", False, "8 digits: check digit missing"),
        ("1234567820", False, "10 digits"),
        ("12345678 2", False, "space inside"),
        ("12345678A", False, "letter"),
        ("１２３４５６７８２", False, "full-width digits are not ASCII"),
        ("", False, "empty"),
    ],
)
def test_is_valid_pin(pin: str, valid: bool, why: str) -> None:
    assert is_valid_pin(pin) is valid, why


def test_luhn_catches_every_single_digit_error() -> None:
    pin = "123456782"
    assert is_valid_pin(pin)
    for pos in range(9):
        for digit in "0123456789":
            if digit != pin[pos]:
                assert not is_valid_pin(pin[:pos] + digit + pin[pos + 1 :])


@pytest.mark.parametrize("body", ["1234567", "123456789", "1234567a", ""])
def test_check_digit_rejects_a_malformed_body(body: str) -> None:
    with pytest.raises(MatchingError, match="8 digits"):
        pin_check_digit(body)


def test_vectorised_forms_agree_with_the_scalar_ones() -> None:
    rng = np.random.default_rng(5)
    bodies = rng.integers(0, 10**8, 2000)
    checks = pin_check_digits(bodies)
    pins = [f"{b:08d}{c}" for b, c in zip(bodies, checks, strict=True)]
    assert all(pin_check_digit(p[:8]) == p[8] for p in pins)
    broken = [p[:8] + str((int(p[8]) + 1) % 10) for p in pins[:500]]
    values = pd.Series(pins + broken + [None, "", "12345678", "12345678x"], dtype="string")
    mask = valid_pin_mask(values)
    assert mask.dtype == bool
    assert mask[: len(pins)].all()
    assert not mask[len(pins) :].any()
    assert list(valid_pin_mask(["123456782", np.nan, "123456781"])) == [True, False, False]
