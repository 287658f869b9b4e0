"""The settings documents the settings tests share: examples/acme.json and how to read a refusal."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from engine import settings as S
from engine.settings import SettingsError, parse_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "acme.json"
RAW = EXAMPLE.read_bytes()
ACME: dict[str, Any] = json.loads(RAW)

# A fourth number that parses, to attach errors to without touching the numbers others refer to.
NEW_NUMBER = {"number": "+14155550155", "line": "rent-1", "country": "US",
              "schedule": {"timezone": "America/Chicago", "weekly": {"tue": [["09:00", "17:00"]]}}}
TID = "is not a valid tenant id (1 to 64 letters, digits, _ . -, starting with a letter or a digit)"
MINIMAL = {"tenant": "t", "currency": "EUR", "status": "active", "chat_mode": "none", "lead_trigger": "on_hangup"}


def acme() -> dict[str, Any]:
    return copy.deepcopy(ACME)


def schedule_of(s: S.Settings, i: int) -> S.Schedule:
    schedule = s.numbers[i].schedule
    assert schedule is not None
    return schedule


def errors_of(data: Any, fmt: str | None = None) -> list[str]:
    with pytest.raises(SettingsError) as info:
        parse_settings(data, fmt)
    assert info.value.errors, "a SettingsError always lists its errors"
    return info.value.errors
