"""Callers without "+" (spec §7): a line's `caller_format`, and the fail-safe check of every reading under auto.

A proxy that drops the "+" sends a Polish caller +48 500 600 700 as
`48500600700`.  On a number in a country whose national numbers have 11
digits that also reads as a national number; under `auto` both readings are
checked against the blacklists, so a listed caller is refused either way.
Every case runs on the compiled core and on the reference.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from engine import compile_settings, parse_settings
from engine.reference import Reference

from .serving import EXAMPLE

POLISH = "+48500600700"
SENT = POLISH[1:]                      # as a proxy that drops the "+" sends it
TUESDAY_1030_UTC = 1796121000          # 2026-12-01 10:30 UTC
# a number in each country where 11 digits are a national length, so that SENT reads two ways there
NUMBERS = {"DE": "+493012345678", "JP": "+81312345678", "IN": "+911123456789", "IT": "+390612345678",
           "IL": "+97221234567", "AU": "+61212345678", "BR": "+551112345678"}


def document(caller_format: str | None, **lists: list[str]) -> dict[str, Any]:
    doc = json.loads(EXAMPLE.read_text())
    if caller_format is not None:
        doc["lines"][0]["caller_format"] = caller_format
    doc["numbers"] += [{"number": n, "line": "rent-1", "country": c, "route_to": "sales"} for c, n in NUMBERS.items()]
    doc.update(lists)
    return doc


def decide(kind: str, doc: dict[str, Any], caller: str, called: str, at: int = TUESDAY_1030_UTC) -> Any:
    settings = parse_settings(copy.deepcopy(doc))
    if kind == "core":
        return compile_settings(settings, version=1).inbound(caller, called, at).to_decision("inbound")
    return Reference(settings, version=1).inbound(caller, called, at)


IMPLEMENTATIONS = pytest.mark.parametrize("kind", ["core", "reference"])


@IMPLEMENTATIONS
@pytest.mark.parametrize("country", sorted(NUMBERS))
def test_bare_digits_of_a_listed_caller_are_refused_under_auto(kind: str, country: str) -> None:
    doc = document(None, blacklist=[POLISH])
    d = decide(kind, doc, SENT, NUMBERS[country])
    assert (d.verdict, d.reason, d.caller) == ("REJECT", "BLACKLISTED", POLISH), d
    if country == "AU":  # 11 digits are no national length there: they read one way, as E.164
        assert d.caller_readings == ()
    else:
        assert len(d.caller_readings) == 2 and d.caller_readings[1] == POLISH
        assert d.caller_readings[0].endswith(SENT) and d.caller_readings[0] != POLISH  # the national reading
    # the same caller with its "+" reads one way, and is refused the same
    d = decide(kind, doc, POLISH, NUMBERS[country])
    assert (d.reason, d.caller, d.caller_readings) == ("BLACKLISTED", POLISH, ())
    # not listed: routed, and both readings are shown
    d = decide(kind, document(None), SENT, NUMBERS[country])
    assert d.verdict == "ROUTE" and (country == "AU" or (d.caller, len(d.caller_readings)) == (d.caller_readings[0], 2))


@IMPLEMENTATIONS
def test_the_off_hours_list_is_checked_in_every_reading_too(kind: str) -> None:
    doc = document("auto", offhours_blacklist=[POLISH])
    doc["numbers"][3]["schedule"] = {"timezone": "Europe/Berlin", "weekly": {}}   # DE: always off
    d = decide(kind, doc, SENT, NUMBERS["DE"])
    assert (d.reason, d.caller) == ("OFF_HOURS_BLOCKED", POLISH)


@IMPLEMENTATIONS
@pytest.mark.parametrize("country", sorted(NUMBERS))
def test_a_stated_format_reads_one_way(kind: str, country: str) -> None:
    listed = {"blacklist": [POLISH]}
    d = decide(kind, document("international", **listed), SENT, NUMBERS[country])
    assert (d.reason, d.caller, d.caller_readings) == ("BLACKLISTED", POLISH, ())
    d = decide(kind, document("national", **listed), SENT, NUMBERS[country])
    assert d.verdict == "ROUTE" and d.caller != POLISH and d.caller.endswith(SENT) and d.caller_readings == ()
    d = decide(kind, document("e164", **listed), SENT, NUMBERS[country])
    assert (d.verdict, d.reason) == ("ERROR", "INVALID_CALLER")                  # the trunk always sends "+"
    d = decide(kind, document("e164", **listed), POLISH, NUMBERS[country])
    assert d.reason == "BLACKLISTED"


@IMPLEMENTATIONS
def test_national_format_reads_trunk_prefixes(kind: str) -> None:
    doc = document("national", blacklist=["+493087654321", "+48500600700"])
    assert decide(kind, doc, "03087654321", NUMBERS["DE"]).caller == "+493087654321"   # national prefix 0
    assert decide(kind, doc, "3087654321", NUMBERS["DE"]).caller == "+493087654321"    # without it
    assert decide(kind, doc, "0048500600700", NUMBERS["DE"]).caller == POLISH          # international prefix
    assert decide(kind, doc, "anonymous", NUMBERS["DE"]).verdict == "ROUTE"            # withheld, any format


@IMPLEMENTATIONS
def test_auto_keeps_one_reading_where_there_is_one(kind: str) -> None:
    doc = document("auto")
    for caller in ("+14155550123", "004915112345678", "015112345678"):
        assert decide(kind, doc, caller, NUMBERS["DE"]).caller_readings == ()
    # a US number: 11 digits starting with the trunk prefix 1 read the same both ways
    assert decide(kind, doc, "14155550123", "+14155550199").caller_readings == ()


def test_a_line_without_the_field_is_auto_and_old_snapshots_load() -> None:
    import msgpack

    from engine.snapshot import dumps, loads

    settings = parse_settings(document(None))
    assert settings.lines[0].caller_format == "auto"
    snap = compile_settings(settings, version=1)
    saved = msgpack.unpackb(dumps(snap), raw=False)
    del saved["arrays"]["line_format"]                                    # a blob saved before the field
    old = loads(msgpack.packb(saved), 1)
    assert old.inbound(SENT, NUMBERS["DE"], TUESDAY_1030_UTC).caller_readings == (
        snap.inbound(SENT, NUMBERS["DE"], TUESDAY_1030_UTC).caller_readings) != ()


def test_the_setting_is_validated() -> None:
    from engine.settings import SettingsError

    doc = document("fax")
    with pytest.raises(SettingsError, match=r"lines\[0\].caller_format: 'fax' is not one of auto, e164, "
                                            "international, national"):
        parse_settings(doc)
