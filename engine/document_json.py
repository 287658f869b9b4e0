"""Settings documents as JSON, exactly: numbers with a fraction stay Decimal and are written back digit for digit.

The store keeps documents as JSON and rebuilds them (blacklist patches
replayed onto the last full document); the CLI adds imported numbers to a
document it read.  Neither may turn `0.0200` into `0.02` or a float.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_document(document: bytes) -> dict[str, Any]:
    """Parse a settings document; floats become Decimal so that re-serializing is exact."""
    doc = json.loads(document, parse_float=Decimal, parse_constant=_reject_constant)
    if not isinstance(doc, dict):
        raise ValueError(f"a settings document must be a JSON object, not {type(doc).__name__}")
    return doc


def dumps_document(doc: Mapping[str, Any], indent: int | None = None) -> bytes:
    """Compact JSON (`indent`: for people) with every Decimal written back digit for digit (json has no
    raw-number hook).

    Each Decimal is first written as a string holding a marker (a NUL, which
    json always escapes as \\u0000, and a random nonce, so no string of the
    document can be mistaken for one), then the quoted marker is replaced by
    the Decimal's text.
    """
    decimals: list[str] = []
    nonce = secrets.token_hex(8)

    def default(obj: object) -> str:
        if isinstance(obj, Decimal) and obj.is_finite():
            decimals.append(str(obj))
            return f"\x00{nonce}:{len(decimals) - 1}\x00"
        raise TypeError(f"cannot write {type(obj).__name__} {obj!r} as JSON")

    def encode(ensure_ascii: bool) -> bytes:
        decimals.clear()
        text = json.dumps(doc, separators=(",", ":") if indent is None else (",", ": "), indent=indent,
                          ensure_ascii=ensure_ascii, allow_nan=False, default=default)
        if decimals:
            marker = re.compile(r'"\\u0000' + nonce + r':(\d+)\\u0000"')
            text = marker.sub(lambda m: decimals[int(m.group(1))], text)
        return text.encode("utf-8")

    try:
        return encode(ensure_ascii=False)
    except UnicodeEncodeError:      # a lone surrogate from a \ud8xx escape: keep it escaped
        return encode(ensure_ascii=True)
