"""Dialling facts of a country, taken from phonenumbers' metadata.

A number's `country` in the settings decides how a caller or destination
written the way SIP headers carry it in practice is read (SPEC §1):

1. `+` and digits: E.164 as written.
2. the country's international prefix (`00`, `011` in NANP, `810` in
   Russia...) and digits: E.164 after the prefix.
3. the country's national (trunk) prefix (`0`, `1` in NANP, `8` in Russia)
   and digits: national, the country code replaces the trunk prefix.
4. other digits whose length is a national length of that country
   (10 in NANP, 9 in France...): national, the country code is prepended.
5. other digits: E.164 without its `+`.

The result must be 8 to 15 digits not starting with 0, or the number is
invalid.  Regions whose prefixes are patterns rather than plain digits use
the ITU default `00`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneMetadata


@dataclass(frozen=True, slots=True)
class CountryDialing:
    region: str
    country_code: str
    international_prefix: str
    national_prefix: str
    national_lengths: frozenset[int]


def _plain_digits(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.replace("~", "")
    return value if value.isdigit() else None


@functools.cache
def country_dialing(region: str) -> CountryDialing | None:
    """Dialling facts of an ISO 3166 region code, or None if unknown."""
    if region not in phonenumbers.SUPPORTED_REGIONS:
        return None
    meta = PhoneMetadata.metadata_for_region(region)
    if meta is None:  # pragma: no cover - SUPPORTED_REGIONS all have metadata
        return None
    ip = (
        _plain_digits(meta.international_prefix)
        or _plain_digits(meta.preferred_international_prefix)
        or "00"
    )
    np_ = _plain_digits(meta.national_prefix) or ""
    desc = meta.general_desc
    lengths = frozenset(n for n in ((desc.possible_length if desc else None) or ()) if 1 <= n <= 15)
    return CountryDialing(region, str(meta.country_code), ip, np_, lengths)
