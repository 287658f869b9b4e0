"""The tenant settings document (spec §1): `parse_settings` and every public name of its three parts.

A document is decoded strictly (`settings_decode`: JSON or msgpack, no
duplicate keys, UTF-8 only), then validated whole (`settings_rules`: every
problem collected with the path of the field it concerns and reported at once
in one `SettingsError`) into the typed model (`settings_model`).  Nothing is
half applied: `parse_settings` either returns a complete `Settings` or raises.

Import these names from here (`engine.settings`) or from `engine`; the three
modules are how the work is divided, not three APIs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .settings_decode import BOMS, MAX_DOCUMENT_BYTES, MAX_INT_DIGITS, Unfit, document_format, load_document
from .settings_model import (
    AMOUNT_DECIMALS,
    MAX_AMOUNT,
    MAX_INCREMENT_S,
    MAX_LIST,
    MAX_RATE,
    RATE_DECIMALS,
    WEEKDAYS,
    AutoTopup,
    Backup,
    Line,
    Number,
    OffhoursAction,
    QueueGroup,
    Rate,
    Rental,
    Schedule,
    Settings,
    SettingsError,
    User,
)
from .settings_rules import E164, TENANT_ID, check_tenant_id, tenant_id_problem, validate

__all__ = [
    "AMOUNT_DECIMALS",
    "BOMS",
    "E164",
    "MAX_AMOUNT",
    "MAX_DOCUMENT_BYTES",
    "MAX_INCREMENT_S",
    "MAX_INT_DIGITS",
    "MAX_LIST",
    "MAX_RATE",
    "RATE_DECIMALS",
    "TENANT_ID",
    "WEEKDAYS",
    "AutoTopup",
    "Backup",
    "Line",
    "Number",
    "OffhoursAction",
    "QueueGroup",
    "Rate",
    "Rental",
    "Schedule",
    "Settings",
    "SettingsError",
    "Unfit",
    "User",
    "check_tenant_id",
    "document_format",
    "load_document",
    "parse_settings",
    "tenant_id_problem",
    "validate",
]


def parse_settings(data: bytes | str | Mapping[str, Any], fmt: str | None = None) -> Settings:
    """Validate a whole settings document; return the model or raise SettingsError.

    `data` is JSON or msgpack (`fmt` "json", "msgpack" or None to guess, as
    `load_document`), or a document already decoded.
    """
    doc = load_document(data, fmt) if isinstance(data, (bytes, bytearray, str)) else data
    return validate(doc)
