"""The personal identification number (PIN) and its check digit.

A PIN has 9 digits: an 8-digit body followed by one check digit computed with the Luhn
algorithm (ISO/IEC 7812-1, "mod 10"):

1. Starting from the rightmost digit of the body and moving left, double every second
   digit (the rightmost body digit is doubled, the one left of it is not, and so on).
2. Where doubling gives a two-digit number, subtract 9 (the same as adding its digits).
3. Add all the digits; the check digit is the amount that brings the sum up to the next
   multiple of 10: ``(10 - sum % 10) % 10``.

A whole PIN is valid when the same sum over all 9 digits (doubling every second digit
counting from the check digit, which itself is not doubled) is a multiple of 10.

Example: body ``12345678``; doubled digits 8, 6, 4, 2 give 7 (16-9), 3 (12-9), 8, 4; the
others 7, 5, 3, 1; the sum is 38, so the check digit is 2 and the PIN is ``123456782``.

Luhn detects every single wrong digit and every swap of two adjacent digits except 09/90;
a PIN that passes the check can still be someone else's, so a valid PIN is strong but not
conclusive evidence.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from matching.errors import MatchingError

__all__ = [
    "PIN_LENGTH",
    "is_valid_pin",
    "pin_check_digit",
    "pin_check_digits",
    "valid_pin_mask",
]

PIN_LENGTH = 9
_BODY_LENGTH = PIN_LENGTH - 1

# Luhn: value of a digit once doubled (two-digit results reduced by 9).
_DOUBLED = np.array([0, 2, 4, 6, 8, 1, 3, 5, 7, 9], dtype=np.int64)


def pin_check_digit(body8: str) -> str:
    """Return the Luhn check digit for an 8-digit PIN body.

    Raises:
        MatchingError: when ``body8`` is not exactly 8 ASCII digits.
    """
    if len(body8) != _BODY_LENGTH or not (body8.isascii() and body8.isdigit()):
        raise MatchingError(f"a PIN body has {_BODY_LENGTH} digits, got {body8!r}")
    total = 0
    for position, char in enumerate(reversed(body8)):
        digit = ord(char) - 48
        total += int(_DOUBLED[digit]) if position % 2 == 0 else digit
    return str((10 - total % 10) % 10)


def is_valid_pin(pin: str) -> bool:
    """True when ``pin`` is 9 ASCII digits whose last digit is the Luhn check of the rest."""
    if not isinstance(pin, str) or len(pin) != PIN_LENGTH:
        return False
    if not (pin.isascii() and pin.isdigit()):
        return False
    return pin_check_digit(pin[:_BODY_LENGTH]) == pin[-1]


def pin_check_digits(bodies: np.ndarray) -> np.ndarray:
    """Luhn check digits (int64 array) of integer PIN bodies in ``[0, 10**8)``."""
    bodies = np.asarray(bodies, dtype=np.int64)
    total = np.zeros(bodies.shape, dtype=np.int64)
    rest = bodies.copy()
    for position in range(_BODY_LENGTH):  # position 0 = rightmost body digit
        digit = rest % 10
        rest //= 10
        total += _DOUBLED[digit] if position % 2 == 0 else digit
    return (10 - total % 10) % 10


def valid_pin_mask(series: pd.Series | np.ndarray | list) -> np.ndarray:
    """Vectorised :func:`is_valid_pin`: a boolean array, False for missing or malformed values."""
    values = pd.Series(series, dtype="string")
    shaped = values.str.fullmatch(r"[0-9]{9}").fillna(False).to_numpy(dtype=bool)
    result = np.zeros(len(values), dtype=bool)
    if not shaped.any():
        return result
    joined = "".join(values[shaped].tolist()).encode("ascii")
    digits = (np.frombuffer(joined, dtype=np.uint8).reshape(-1, PIN_LENGTH) - 48).astype(np.int64)
    # Columns 0..8 left to right; the check digit (column 8) is not doubled, column 7 is.
    doubled_columns = [c for c in range(PIN_LENGTH) if (PIN_LENGTH - 1 - c) % 2 == 1]
    digits[:, doubled_columns] = _DOUBLED[digits[:, doubled_columns]]
    result[shaped] = digits.sum(axis=1) % 10 == 0
    return result
