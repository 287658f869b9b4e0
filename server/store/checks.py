"""Argument checks shared by the SQLite store's modules: a store refuses bad arguments with ValueError
before any SQL runs (the service turns that into INVALID_ARGUMENT)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.settings import E164, tenant_id_problem

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_str(name: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    if not allow_empty and not value:
        raise ValueError(f"{name} must not be empty")
    return value


def _check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {type(value).__name__}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name} {value} does not fit in 64 bits")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise ValueError(f"{name} must be bytes, not {type(value).__name__}")


def _check_numbers(name: str, value: object) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of numbers, not {type(value).__name__}")
    for i, number in enumerate(value):
        _check_str(f"{name}[{i}]", number)
    return list(value)


def _check_tenant(value: object, name: str = "tenant") -> str:
    """A tenant id by the one rule of engine.settings (the store refuses any other)."""
    problem = tenant_id_problem(value)
    if problem:
        raise ValueError(f"{name}: {problem}")
    assert isinstance(value, str)
    return value


def _check_e164(name: str, value: object) -> str:
    _check_str(name, value)
    assert isinstance(value, str)
    if not E164.fullmatch(value):
        raise ValueError(f"{name} {value[:32]!r} is not an E.164 number (+ and 8 to 15 digits)")
    return value
