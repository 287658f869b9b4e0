"""Money as callgate holds it: exact integer micro-units of a currency (1.00 = 1_000_000), never a float.

The one converter between a decimal amount and micro-units, both ways, for
the engine (rates, balances) and the server (ledger, top-ups, replies).
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["MICRO", "check_int", "format_amount", "to_micro"]

MICRO = 1_000_000

# The store keeps money in SQLite/PostgreSQL 64-bit integers: an amount that
# does not fit would overflow there, so it is refused at the way in.
_MAX_MICRO = 2**63 - 1

# ASCII digits only: `Decimal()` alone would also take "1_000", " 5 ", "NaN"
# and non-ASCII digits, none of which is a money amount.  An exponent is
# allowed because `str(Decimal)` may write one ("1E+3", "5E-7").
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def to_micro(amount: str | Decimal) -> int:
    """A decimal amount in micro-units, exactly: "20.00" -> 20_000_000.

    Raises ValueError for text that is not a decimal number, for NaN and
    infinities, for more than 6 decimal places of value ("0.0000001"; trailing
    zeros such as "1.5000000" are fine) and for amounts beyond a 64-bit
    integer of micro-units.  A float is refused (TypeError): it is not exact.
    """
    if isinstance(amount, str):
        if not _DECIMAL_TEXT.fullmatch(amount):
            raise ValueError(f"amount {amount!r} is not a decimal number such as \"20.00\"")
        value = Decimal(amount)
    elif isinstance(amount, Decimal):
        value = amount
        if not value.is_finite():
            raise ValueError(f"amount {amount!r} is not a finite number")
    else:
        raise TypeError(f"amount must be a decimal string or Decimal, not {type(amount).__name__}: "
                        "money is exact, never a float")
    # Integer arithmetic on the decimal's digits: multiplying the Decimal by
    # 10**6 would round silently past the context's 28 digits.
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    coefficient = int("".join(map(str, digits)) or "0")
    shift = exponent + 6               # micro = coefficient * 10**shift
    if coefficient == 0:
        micro = 0
    elif shift >= 0:
        # Bound the shift before raising 10 to it: "1E+999999" must not build a huge int.
        if len(digits) + shift > 19:
            raise ValueError(f"amount {amount!r} is too large")
        micro = coefficient * 10**shift
    else:
        # A fraction of a micro-unit is representable only if the dropped digits are all zero.
        if -shift > len(digits) or coefficient % 10**-shift:
            raise ValueError(f"amount {amount!r} has more than 6 decimal places")
        micro = coefficient // 10**-shift
    if micro > _MAX_MICRO:
        raise ValueError(f"amount {amount!r} is too large")
    return -micro if sign else micro


def check_int(name: str, value: object) -> int:
    # bool is an int subclass; True as an amount is a bug, not 1 micro-unit.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def format_amount(micro: int) -> str:
    """Micro-units as a decimal string: 20_000_000 -> "20.00", -1_500_000 -> "-1.50", 3_500 -> "0.0035".

    At least two decimals; more only when the amount has them (trailing zeros
    beyond the cents are dropped).
    """
    check_int("micro", micro)
    whole, frac = divmod(abs(micro), MICRO)
    decimals = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{'-' if micro < 0 else ''}{whole}.{decimals}"
