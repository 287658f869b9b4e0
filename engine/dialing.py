"""Dialling facts of a country, taken from phonenumbers' metadata.

A number's `country` in the settings decides how a caller or destination
written the way SIP headers carry it in practice is read (spec §1):

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


@functools.cache
def code_lengths() -> dict[str, frozenset[int]]:
    """Every country calling code -> the lengths its national numbers may have (all its regions together)."""
    found: dict[str, set[int]] = {}
    for region in phonenumbers.SUPPORTED_REGIONS:
        d = country_dialing(region)
        if d is not None:
            found.setdefault(d.country_code, set()).update(d.national_lengths)
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        meta = PhoneMetadata.metadata_for_nongeo_region(code)
        desc = meta.general_desc if meta is not None else None
        found.setdefault(str(code), set()).update(n for n in ((desc.possible_length if desc else None) or ())
                                                  if 1 <= n <= 15)
    return {code: frozenset(lengths) for code, lengths in found.items()}


def plausible_e164(digits: str) -> bool:
    """The digits of an E.164 number could be a real one: an assigned country code followed by a national
    number of a length that code has (the test for a caller's second reading, docs/decisions.md)."""
    table = code_lengths()
    return any(digits[:k] in table and len(digits) - k in table[digits[:k]] for k in (1, 2, 3))
