"""The settings document (spec §1, §2): parsing from JSON and msgpack, and every validation rule.

Most rules are checked by one table, `CASES`: a mutation of examples/acme.json and the exact error
lines it must produce (path and message).  The document is validated whole, so the table also pins
down that one mistake gives one error, not a cascade.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from engine import settings as S
from engine.settings import SettingsError, parse_settings

from .settings_cases import ACME, MINIMAL, NEW_NUMBER, RAW, TID, acme, errors_of, schedule_of

# --------------------------------------------------------------------------
# Mutations addressed by the same paths the errors use: "numbers[1].schedule.weekly.mon[0]"
# --------------------------------------------------------------------------

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _keys(path: str) -> list[str | int]:
    keys: list[str | int] = []
    for name, index in _STEP.findall(path):
        keys.append(name if name else int(index))
    return keys


def _parent(doc: Any, path: str) -> tuple[Any, str | int]:
    *head, last = _keys(path)
    for key in head:
        doc = doc[key]
    return doc, last


def put(path: str, value: Any):
    """Set a field; on a list, an index equal to its length appends."""
    def mutate(doc: dict) -> None:
        parent, last = _parent(doc, path)
        if isinstance(parent, list) and last == len(parent):
            parent.append(copy.deepcopy(value))
        else:
            parent[last] = copy.deepcopy(value)
    return mutate


def put_key(key: Any, value: Any):
    """Set a top-level key that is not a plain name."""
    def mutate(doc: dict) -> None:
        doc[key] = value
    return mutate


def drop(path: str):
    def mutate(doc: dict) -> None:
        parent, last = _parent(doc, path)
        del parent[last]
    return mutate


def case(name: str, *mutations, expect: str | list[str]):
    return pytest.param(mutations, [expect] if isinstance(expect, str) else expect, id=name)


AID = "(letters, digits, _ . : @ -, at most 64)"
TZ = 'is not an IANA time zone such as "America/Los_Angeles"'
PAIR = 'must be a pair ["HH:MM", "HH:MM"]'
E164 = "is not an E.164 number (+ and 8 to 15 digits)"
CROSS = "ends before it starts: an interval never crosses midnight, write two"
LOOP = "is one of the tenant's own numbers: forwarding there while the tenant is unavailable would loop"
MAIN = ("+14155550199 is the main_number, which may never be the default outbound number: "
        "choose another of the tenant's numbers")

CASES = [
    # --- the worked example of a refused push (several errors, each with its path)
    case("issue-example", put("numbers[3]", NEW_NUMBER), put("numbers[3].schedule.weekly.tue[0][0]", "25:00"),
         expect="numbers[3].schedule.weekly.tue[0]: '25:00' is not a time"),
    # --- required fields, at each level
    case("req-tenant", drop("tenant"), expect="tenant: is required"),
    case("req-currency", drop("currency"), expect="currency: is required"),
    case("req-status", drop("status"), expect="status: is required"),
    case("req-chat_mode", drop("chat_mode"), expect="chat_mode: is required"),
    case("req-lead_trigger", drop("lead_trigger"), expect="lead_trigger: is required"),
    case("req-line-kind", put("lines[1]", {"id": "trunk"}), expect="lines[1].kind: is required"),
    case("req-line-id", put("lines[1]", {"kind": "sip_trunk"}), expect="lines[1].id: is required"),
    case("req-rate-field", drop("lines[0].rates[1].increment_s"), expect="lines[0].rates[1].increment_s: is required"),
    case("req-number-country", put("numbers[3]", NEW_NUMBER), drop("numbers[3].country"),
         expect="numbers[3].country: is required"),
    case("req-number-number", drop("numbers[1].number"), expect="numbers[1].number: is required"),
    case("req-number-line", drop("numbers[1].line"), expect="numbers[1].line: is required"),
    case("req-rental-field", drop("numbers[1].rental.renews_on"), expect="numbers[1].rental.renews_on: is required"),
    case("req-timezone", drop("numbers[1].schedule.timezone"), expect="numbers[1].schedule.timezone: is required"),
    case("req-action", put("numbers[1].offhours_action", {}), expect="numbers[1].offhours_action.action: is required"),
    case("req-user-id", drop("users[0].id"), expect="users[0].id: is required"),
    case("req-group-id", put("queue_groups[2]", {"members": []}), expect="queue_groups[2].id: is required"),
    case("req-topup-enabled", drop("auto_topup.enabled"), expect="auto_topup.enabled: is required"),
    case("req-topup-amount", drop("auto_topup.amount"),
         expect="auto_topup.amount: is required when auto top-up is enabled"),
    case("req-backup-line", drop("backup.line"), expect="backup.line: is required"),
    case("req-forward-to", put("numbers[1].offhours_action", {"action": "forward"}),
         expect="numbers[1].offhours_action.to: is required when the action is forward"),
    # --- unknown fields, at each level (and keys that are not plain names are quoted)
    case("unknown-top", put("colour", "red"), expect="colour: unknown field"),
    case("unknown-top-empty-key", put_key("", 1), expect="'': unknown field"),
    case("unknown-top-odd-key", put_key("a: b", 1), expect="'a: b': unknown field"),
    case("unknown-line", put("lines[0].trunk", "x"), expect="lines[0].trunk: unknown field"),
    case("unknown-rate", put("lines[0].rates[0].currency", "USD"), expect="lines[0].rates[0].currency: unknown field"),
    case("unknown-rate-and-missing", drop("lines[0].rates[0].increment_s"), put("lines[0].rates[0].x", 1),
         expect=["lines[0].rates[0].x: unknown field", "lines[0].rates[0].increment_s: is required"]),
    case("unknown-number", put("numbers[1].label", "main"), expect="numbers[1].label: unknown field"),
    case("unknown-rental-and-missing", drop("numbers[1].rental.renews_on"), put("numbers[1].rental.x", 1),
         expect=["numbers[1].rental.x: unknown field", "numbers[1].rental.renews_on: is required"]),
    case("unknown-schedule", put("numbers[1].schedule.dst", True), expect="numbers[1].schedule.dst: unknown field"),
    case("unknown-action", put("numbers[1].offhours_action.after_s", 20),
         expect="numbers[1].offhours_action.after_s: unknown field"),
    case("unknown-user", put("users[0].name", "Ann"), expect="users[0].name: unknown field"),
    case("unknown-group", put("queue_groups[0].strategy", "ring_all"),
         expect="queue_groups[0].strategy: unknown field"),
    case("unknown-topup", put("auto_topup.card", "visa"), expect="auto_topup.card: unknown field"),
    case("unknown-backup-and-missing", drop("backup.line"), put("backup.x", 1),
         expect=["backup.x: unknown field", "backup.line: is required"]),
    # --- wrong types, at each level
    case("type-tenant", put("tenant", ["acme"]), expect="tenant: must be a string, not list"),
    case("type-lines", put("lines[1]", "trunk"), expect="lines[1]: must be an object, not str"),
    case("type-rates", put("lines[0].rates", {"1": "0.02"}), expect="lines[0].rates: must be a list, not dict"),
    case("type-rate", put("lines[0].rates[1]", ["44", "0.0350", 1]),
         expect="lines[0].rates[1]: must be an object, not list"),
    case("type-number", put("numbers[1]", "+14155550199"), expect="numbers[1]: must be an object, not str"),
    case("type-number-line", put("numbers[1].line", 1), expect="numbers[1].line: must be a string, not int"),
    case("type-rental", put("numbers[1].rental", "5.00"), expect="numbers[1].rental: must be an object, not str"),
    case("type-schedule", put("numbers[1].schedule", []), expect="numbers[1].schedule: must be an object, not list"),
    case("type-timezone", put("numbers[1].schedule.timezone", -5),
         expect="numbers[1].schedule.timezone: must be a string, not int"),
    case("type-weekly", put("numbers[1].schedule.weekly", [["08:00", "12:00"]]),
         expect="numbers[1].schedule.weekly: must be an object of weekdays, not list"),
    case("type-weekday", put("numbers[1].schedule.weekly.mon", "08:00"),
         expect="numbers[1].schedule.weekly.mon: must be a list, not str"),
    case("type-interval", put("numbers[1].schedule.weekly.mon[0]", "08:00-12:00"),
         expect=f"numbers[1].schedule.weekly.mon[0]: '08:00-12:00' {PAIR}"),
    case("type-interval-short", put("numbers[1].schedule.weekly.mon[0]", ["08:00"]),
         expect=f"numbers[1].schedule.weekly.mon[0]: ['08:00'] {PAIR}"),
    case("type-interval-long", put("numbers[1].schedule.weekly.mon[0]", ["08:00", "09:00", "10:00"]),
         expect=f"numbers[1].schedule.weekly.mon[0]: ['08:00', '09:00', '10:00'] {PAIR}"),
    case("type-time", put("numbers[1].schedule.weekly.mon[0][0]", 800),
         expect="numbers[1].schedule.weekly.mon[0]: must be a string, not int"),
    case("type-holidays", put("numbers[1].schedule.holidays", "2026-12-25"),
         expect="numbers[1].schedule.holidays: must be a list, not str"),
    case("type-holiday", put("numbers[1].schedule.holidays[0]", 20261126),
         expect="numbers[1].schedule.holidays[0]: must be a string, not int"),
    case("type-action", put("numbers[1].offhours_action", "voicemail"),
         expect="numbers[1].offhours_action: must be an object, not str"),
    case("type-route_to", put("numbers[1].route_to", ["sales"]),
         expect="numbers[1].route_to: must be a string, not list"),
    case("type-users", put("users", {"u1": {}}), expect="users: must be a list, not dict"),
    case("type-user", put("users[0]", "u1"), expect="users[0]: must be an object, not str"),
    case("type-user-groups", put("users[0].groups", "sales"), expect="users[0].groups: must be a list, not str"),
    case("type-user-group", put("users[0].groups[0]", 1), expect="users[0].groups[0]: must be a string, not int"),
    case("type-members", put("queue_groups[0].members", "u1"),
         expect="queue_groups[0].members: must be a list, not str"),
    case("type-member", put("queue_groups[0].members[0]", None),
         expect="queue_groups[0].members[0]: must be a string, not NoneType"),
    case("type-topup", put("auto_topup", True), expect="auto_topup: must be an object, not bool"),
    case("type-backup", put("backup", "+14155550111"), expect="backup: must be an object, not str"),
    case("type-backup-line", put("backup.line", 1), expect="backup.line: must be a string, not int"),
    case("type-blacklist", put("blacklist", "+14155550666"), expect="blacklist: must be a list, not str"),
    case("type-blacklist-none", put("offhours_blacklist", None),
         expect="offhours_blacklist: must be a list, not NoneType"),
    case("type-pickup", put("pickup_code", 8), expect="pickup_code: must be a string, not int"),
    # --- booleans
    case("bool-block", put("block_anonymous", "yes"), expect="block_anonymous: must be true or false, not 'yes'"),
    case("bool-inbound_only", put("numbers[1].inbound_only", 1),
         expect="numbers[1].inbound_only: must be true or false, not 1"),
    case("bool-requires_documents", put("numbers[1].requires_documents", None),
         expect="numbers[1].requires_documents: must be true or false, not None"),
    case("bool-topup", put("auto_topup.enabled", "true"),
         expect="auto_topup.enabled: must be true or false, not 'true'"),
    # --- enumerations
    case("enum-currency", put("currency", "GBP"), expect="currency: 'GBP' is not one of USD, EUR"),
    case("enum-currency-case", put("currency", "usd"), expect="currency: 'usd' is not one of USD, EUR"),
    case("enum-status", put("status", "paused"), expect="status: 'paused' is not one of active, suspended, disabled"),
    case("enum-chat", put("chat_mode", "chat"),
         expect="chat_mode: 'chat' is not one of chat_per_call, single_chat, none"),
    case("enum-lead", put("lead_trigger", "on_ring"),
         expect="lead_trigger: 'on_ring' is not one of on_answer, on_hangup"),
    case("enum-kind", put("lines[1]", {"id": "t", "kind": "pstn"}),
         expect="lines[1].kind: 'pstn' is not one of rented, sip_trunk, byoc"),
    case("enum-action", put("numbers[1].offhours_action.action", "hangup"),
         expect="numbers[1].offhours_action.action: 'hangup' is not one of reject, voicemail, forward"),
    case("action-target-not-forward", put("numbers[1].offhours_action.to", "+14155550123"),
         expect="numbers[1].offhours_action.to: only a forward action has a target, not voicemail"),
    # --- ids
    case("id-tenant", put("tenant", "ac:me"),
         expect=f"tenant: 'ac:me' {TID}"),
    case("id-tenant-empty", put("tenant", ""),
         expect=f"tenant: '' {TID}"),
    case("id-user", put("users[0].id", "u 1"), expect=f"users[0].id: 'u 1' is not a valid id {AID}"),
    case("id-too-long", put("users[0].id", "u" * 65), expect=f"users[0].id: '{'u' * 56}... is not a valid id {AID}"),
    case("id-member", put("queue_groups[0].members[1]", "-u2"),
         expect=f"queue_groups[0].members[1]: '-u2' is not a valid id {AID}"),
    case("id-line", put("lines[1]", {"id": "trunk/1", "kind": "byoc"}),
         expect=f"lines[1].id: 'trunk/1' is not a valid id {AID}"),
    # --- duplicates
    case("dup-line", put("lines[1]", {"id": "rent-1", "kind": "byoc"}), expect="lines[1].id: 'rent-1' is used twice"),
    case("dup-group", put("queue_groups[2]", {"id": "sales"}), expect="queue_groups[2].id: 'sales' is used twice"),
    case("dup-user", put("users[2]", {"id": "u1"}), expect="users[2].id: 'u1' is used twice"),
    case("dup-number", put("numbers[3]", {"number": "+14155550100", "line": "rent-1", "country": "US"}),
         expect="numbers[3].number: +14155550100 is listed twice"),
    case("dup-prefix", put("lines[0].rates[2]", {"prefix": "1", "per_minute": "0.01", "increment_s": 6}),
         expect="lines[0].rates[2].prefix: '1' is listed twice on this line"),
    # --- E.164 numbers
    case("e164-no-plus", put("main_number", "14155550199"), expect=f"main_number: '14155550199' {E164}"),
    case("e164-short", put("numbers[1].number", "+1415555"), expect=f"numbers[1].number: '+1415555' {E164}"),
    case("e164-long", put("blacklist[0]", "+1234567890123456"), expect=f"blacklist[0]: '+1234567890123456' {E164}"),
    case("e164-leading-zero", put("offhours_blacklist[0]", "+0415555077"),
         expect=f"offhours_blacklist[0]: '+0415555077' {E164}"),
    case("e164-spaces", put("numbers[1].offhours_action", {"action": "forward", "to": "+1 415 555 0123"}),
         expect=f"numbers[1].offhours_action.to: '+1 415 555 0123' {E164}"),
    case("e164-backup", put("backup.number", "anonymous"), expect=f"backup.number: 'anonymous' {E164}"),
    case("e164-caller-id", put("users[0].caller_id", "+1415555010O"),
         expect=f"users[0].caller_id: '+1415555010O' {E164}"),
    case("e164-type", put("blacklist[0]", 14155550666), expect="blacklist[0]: must be a string, not int"),
    # --- countries
    case("country-unknown", put("numbers[1].country", "XX"),
         expect="numbers[1].country: 'XX' is not an ISO 3166 country code such as \"US\""),
    case("country-lowercase", put("numbers[1].country", "us"),
         expect="numbers[1].country: 'us' is not an ISO 3166 country code such as \"US\""),
    case("country-mismatch", put("numbers[1].country", "GB"),
         expect="numbers[1].number: +14155550199 does not start with +44, the code of GB"),
    case("country-mismatch-gb", put("numbers[2].country", "FR"),
         expect="numbers[2].number: +442071234567 does not start with +33, the code of FR"),
    # --- references between sections
    case("ref-number-line", put("numbers[1].line", "trunk-9"),
         expect="numbers[1].line: line 'trunk-9' is not in lines"),
    case("ref-route_to", put("numbers[1].route_to", "billing"),
         expect="numbers[1].route_to: queue group 'billing' is not in queue_groups"),
    case("ref-user-group", put("users[0].groups[1]", "billing"),
         expect="users[0].groups[1]: queue group 'billing' is not in queue_groups"),
    case("ref-backup-line", put("backup.line", "trunk-9"), expect="backup.line: line 'trunk-9' is not in lines"),
    case("backup-own-number", put("backup.number", "+14155550100"), expect=f"backup.number: +14155550100 {LOOP}"),
    case("backup-own-main-number", put("backup.number", "+14155550199"), expect=f"backup.number: +14155550199 {LOOP}"),
    # --- caller IDs: the tenant's own numbers, usable outbound
    case("cid-default-foreign", put("default_caller_id", "+14155550999"),
         expect="default_caller_id: +14155550999 is not one of the tenant's numbers; a caller ID must be"),
    case("cid-user-foreign", put("users[1].caller_id", "+442071234568"),
         expect="users[1].caller_id: +442071234568 is not one of the tenant's numbers; a caller ID must be"),
    case("cid-default-inbound-only", put("default_caller_id", "+442071234567"), put("numbers[2].inbound_only", True),
         expect=["users[1].caller_id: +442071234567 is inbound-only and cannot be a caller ID",
                 "default_caller_id: +442071234567 is inbound-only and cannot be a caller ID"]),
    case("cid-user-inbound-only", put("users[0].caller_id", "+14155550199"),
         expect="users[0].caller_id: +14155550199 is inbound-only and cannot be a caller ID"),
    # --- main_number is never the default caller ID (spec §2 rule 2), whatever else is wrong with it
    case("main-is-default", put("default_caller_id", "+14155550199"), put("numbers[1].inbound_only", False),
         expect=f"default_caller_id: {MAIN}"),
    case("main-is-default-inbound-only", put("default_caller_id", "+14155550199"),
         expect=["default_caller_id: +14155550199 is inbound-only and cannot be a caller ID",
                 f"default_caller_id: {MAIN}"]),
    case("main-is-default-foreign", put("default_caller_id", "+14155550199"), put("main_number", "+14155550199"),
         drop("numbers[1]"),
         expect=["default_caller_id: +14155550199 is not one of the tenant's numbers; a caller ID must be",
                 f"default_caller_id: {MAIN}"]),
    # --- pickup code
    case("pickup-letters", put("pickup_code", "*8a"),
         expect="pickup_code: '*8a' must be 2 to 8 of the characters 0-9 * #"),
    case("pickup-short", put("pickup_code", "*"), expect="pickup_code: '*' must be 2 to 8 of the characters 0-9 * #"),
    case("pickup-long", put("pickup_code", "*12345678"),
         expect="pickup_code: '*12345678' must be 2 to 8 of the characters 0-9 * #"),
    case("pickup-plus", put("pickup_code", "+8"), expect="pickup_code: '+8' must be 2 to 8 of the characters 0-9 * #"),
    case("pickup-space", put("pickup_code", "* 8"),
         expect="pickup_code: '* 8' must be 2 to 8 of the characters 0-9 * #"),
    case("pickup-dialable", put("pickup_code", "88"),
         expect="pickup_code: '88' must start with * or #, or it collides with dialable numbers"),
    case("pickup-dialable-hash-later", put("pickup_code", "8#"),
         expect="pickup_code: '8#' must start with * or #, or it collides with dialable numbers"),
    # --- times and intervals
    case("time-25", put("numbers[0].schedule.weekly.mon[0][1]", "25:00"),
         expect="numbers[0].schedule.weekly.mon[0]: '25:00' is not a time"),
    case("time-minutes", put("numbers[0].schedule.weekly.mon[0][0]", "09:60"),
         expect="numbers[0].schedule.weekly.mon[0]: '09:60' is not a time"),
    case("time-one-digit", put("numbers[0].schedule.weekly.mon[0][0]", "9:00"),
         expect="numbers[0].schedule.weekly.mon[0]: '9:00' is not a time"),
    case("time-seconds", put("numbers[0].schedule.weekly.mon[0][0]", "09:00:00"),
         expect="numbers[0].schedule.weekly.mon[0]: '09:00:00' is not a time"),
    case("time-24-30-end", put("numbers[0].schedule.weekly.mon[0][1]", "24:30"),
         expect="numbers[0].schedule.weekly.mon[0]: '24:30' is not a time"),
    case("time-24-start", put("numbers[0].schedule.weekly.mon[0]", ["24:00", "24:00"]),
         expect="numbers[0].schedule.weekly.mon[0]: '24:00' can only end an interval, not start one"),
    case("time-both-bad", put("numbers[0].schedule.weekly.mon[0]", ["24:00", "25:00"]),
         expect=["numbers[0].schedule.weekly.mon[0]: '24:00' can only end an interval, not start one",
                 "numbers[0].schedule.weekly.mon[0]: '25:00' is not a time"]),
    case("interval-crosses-midnight", put("numbers[0].schedule.weekly.mon[0]", ["22:00", "02:00"]),
         expect=f"numbers[0].schedule.weekly.mon[0]: 22:00-02:00 {CROSS}"),
    case("interval-ends-at-00", put("numbers[0].schedule.weekly.mon[0]", ["22:00", "00:00"]),
         expect=f"numbers[0].schedule.weekly.mon[0]: 22:00-00:00 {CROSS}"),
    case("interval-empty", put("numbers[0].schedule.weekly.mon[0]", ["09:00", "09:00"]),
         expect=f"numbers[0].schedule.weekly.mon[0]: 09:00-09:00 {CROSS}"),
    case("weekday-name", put("numbers[0].schedule.weekly.monday", [["09:00", "17:00"]]),
         expect="numbers[0].schedule.weekly.monday: 'monday' is not a weekday (mon, tue, wed, thu, fri, sat, sun)"),
    case("weekday-capital", put("numbers[0].schedule.weekly.Sat", []),
         expect="numbers[0].schedule.weekly.Sat: 'Sat' is not a weekday (mon, tue, wed, thu, fri, sat, sun)"),
    # --- time zones
    case("tz-unknown", put("numbers[0].schedule.timezone", "Mars/Olympus_Mons"),
         expect=f"numbers[0].schedule.timezone: 'Mars/Olympus_Mons' {TZ}"),
    case("tz-typo", put("numbers[0].schedule.timezone", "America/Los_Angles"),
         expect=f"numbers[0].schedule.timezone: 'America/Los_Angles' {TZ}"),
    case("tz-dst-abbreviation", put("numbers[0].schedule.timezone", "PDT"),
         expect=f"numbers[0].schedule.timezone: 'PDT' {TZ}"),
    case("tz-offset", put("numbers[0].schedule.timezone", "UTC+02:00"),
         expect=f"numbers[0].schedule.timezone: 'UTC+02:00' {TZ}"),
    case("tz-directory", put("numbers[0].schedule.timezone", "America"),
         expect=f"numbers[0].schedule.timezone: 'America' {TZ}"),
    case("tz-path", put("numbers[0].schedule.timezone", "../../etc/passwd"),
         expect=f"numbers[0].schedule.timezone: '../../etc/passwd' {TZ}"),
    case("tz-absolute", put("numbers[0].schedule.timezone", "/etc/localtime"),
         expect=f"numbers[0].schedule.timezone: '/etc/localtime' {TZ}"),
    case("tz-empty", put("numbers[0].schedule.timezone", ""), expect=f"numbers[0].schedule.timezone: '' {TZ}"),
    case("tz-nul", put("numbers[0].schedule.timezone", "UTC\x00"),
         expect=f"numbers[0].schedule.timezone: 'UTC\\x00' {TZ}"),
    case("tz-long", put("numbers[0].schedule.timezone", "Z" * 5000),
         expect=f"numbers[0].schedule.timezone: '{'Z' * 56}... {TZ}"),
    # --- dates
    case("date-feb-30", put("numbers[0].schedule.holidays[0]", "2026-02-30"),
         expect="numbers[0].schedule.holidays[0]: '2026-02-30' is not a date (YYYY-MM-DD)"),
    case("date-feb-29-non-leap", put("numbers[0].schedule.holidays[1]", "2026-02-29"),
         expect="numbers[0].schedule.holidays[1]: '2026-02-29' is not a date (YYYY-MM-DD)"),
    case("date-month-13", put("numbers[1].rental.renews_on", "2026-13-01"),
         expect="numbers[1].rental.renews_on: '2026-13-01' is not a date (YYYY-MM-DD)"),
    case("date-short", put("numbers[0].schedule.holidays[0]", "2026-12-5"),
         expect="numbers[0].schedule.holidays[0]: '2026-12-5' is not a date (YYYY-MM-DD)"),
    case("date-compact", put("numbers[0].schedule.holidays[0]", "20261225"),
         expect="numbers[0].schedule.holidays[0]: '20261225' is not a date (YYYY-MM-DD)"),
    case("date-datetime", put("numbers[0].schedule.holidays[0]", "2026-12-25T00:00"),
         expect="numbers[0].schedule.holidays[0]: '2026-12-25T00:00' is not a date (YYYY-MM-DD)"),
    case("date-european", put("numbers[0].schedule.holidays[0]", "25.12.2026"),
         expect="numbers[0].schedule.holidays[0]: '25.12.2026' is not a date (YYYY-MM-DD)"),
    # --- money: decimal strings only
    case("money-float", put("lines[0].rates[0].per_minute", 0.02),
         expect='lines[0].rates[0].per_minute: 0.02 must be a string such as "0.0200": money is exact, never a float'),
    case("money-int", put("numbers[1].rental.monthly_fee", 5),
         expect='numbers[1].rental.monthly_fee: 5 must be a string such as "5.00": '
                'money is written as a decimal string'),
    case("money-bool", put("auto_topup.amount", True), expect="auto_topup.amount: must be a string, not bool"),
    case("money-exponent", put("auto_topup.amount", "2e1"), expect="auto_topup.amount: '2e1' is not a decimal amount"),
    case("money-comma", put("auto_topup.amount", "20,00"), expect="auto_topup.amount: '20,00' is not a decimal amount"),
    case("money-currency-sign", put("auto_topup.amount", "$20"),
         expect="auto_topup.amount: '$20' is not a decimal amount"),
    case("money-bare-dot", put("auto_topup.amount", ".5"), expect="auto_topup.amount: '.5' is not a decimal amount"),
    case("money-nan", put("auto_topup.amount", "NaN"), expect="auto_topup.amount: 'NaN' is not a decimal amount"),
    case("money-empty", put("auto_topup.amount", ""), expect="auto_topup.amount: '' is not a decimal amount"),
    case("money-cents", put("numbers[1].rental.monthly_fee", "5.001"),
         expect="numbers[1].rental.monthly_fee: '5.001' has more than 2 decimal places"),
    case("money-rate-places", put("lines[0].rates[0].per_minute", "0.0000001"),
         expect="lines[0].rates[0].per_minute: '0.0000001' has more than 6 decimal places"),
    case("money-negative", put("numbers[1].rental.monthly_fee", "-1.00"),
         expect="numbers[1].rental.monthly_fee: '-1.00' is outside 0 .. 1000000000"),
    case("money-rate-max", put("lines[0].rates[0].per_minute", "1000.01"),
         expect="lines[0].rates[0].per_minute: '1000.01' is outside 0 .. 1000"),
    case("money-topup-zero", put("auto_topup.amount", "0.00"),
         expect="auto_topup.amount: '0.00' is outside 0.01 .. 1000000000"),
    case("money-topup-huge", put("auto_topup.amount", "1000000000.01"),
         expect="auto_topup.amount: '1000000000.01' is outside 0.01 .. 1000000000"),
    # --- rates
    case("prefix-plus", put("lines[0].rates[1].prefix", "+44"),
         expect="lines[0].rates[1].prefix: '+44' must be 1 to 15 digits (a country code and more, no +)"),
    case("prefix-empty", put("lines[0].rates[1].prefix", ""),
         expect="lines[0].rates[1].prefix: '' must be 1 to 15 digits (a country code and more, no +)"),
    case("prefix-long", put("lines[0].rates[1].prefix", "4" * 16),
         expect=f"lines[0].rates[1].prefix: '{'4' * 16}' must be 1 to 15 digits (a country code and more, no +)"),
    case("prefix-type", put("lines[0].rates[1].prefix", 44),
         expect="lines[0].rates[1].prefix: must be a string, not int"),
    case("increment-zero", put("lines[0].rates[1].increment_s", 0),
         expect="lines[0].rates[1].increment_s: 0 is outside 1 .. 3600"),
    case("increment-hour-plus", put("lines[0].rates[1].increment_s", 3601),
         expect="lines[0].rates[1].increment_s: 3601 is outside 1 .. 3600"),
    case("increment-string", put("lines[0].rates[1].increment_s", "60"),
         expect="lines[0].rates[1].increment_s: must be a whole number, not '60'"),
    case("increment-float", put("lines[0].rates[1].increment_s", 1.5),
         expect="lines[0].rates[1].increment_s: must be a whole number, not 1.5"),
    case("increment-bool", put("lines[0].rates[1].increment_s", True),
         expect="lines[0].rates[1].increment_s: must be a whole number, not True"),
]


@pytest.mark.parametrize(("mutations", "expected"), CASES)
def test_rule(mutations, expected):
    doc = acme()
    for mutate in mutations:
        mutate(doc)
    assert errors_of(doc) == expected
    # The same document on the wire gives the same errors.
    assert errors_of(json.dumps(doc).encode()) == expected
    assert errors_of(msgpack.packb(doc)) == expected


# Errors that bring others in their wake (what refers to a refused entry is reported too): the
# first error is the one that matters.
@pytest.mark.parametrize(("mutate", "first"), [
    (put("lines", {"rent-1": {}}), "lines: must be a list, not dict"),
    (put("lines[0].kind", "pstn"), "lines[0].kind: 'pstn' is not one of rented, sip_trunk, byoc"),
    (put("queue_groups", "sales"), "queue_groups: must be a list, not str"),
    (put("numbers", None), "numbers: must be a list, not NoneType"),
    (drop("numbers[0].country"), "numbers[0].country: is required"),
])
def test_rule_with_followers(mutate, first):
    doc = acme()
    mutate(doc)
    errors = errors_of(doc)
    assert errors[0] == first
    assert len(errors) > 1


# --------------------------------------------------------------------------
# Parsing the example
# --------------------------------------------------------------------------


def test_example_parses_the_same_from_json_msgpack_str_and_dict():
    from_json = parse_settings(RAW)
    assert from_json == parse_settings(msgpack.packb(ACME))
    assert from_json == parse_settings(RAW.decode())
    assert from_json == parse_settings(acme())
    assert from_json == parse_settings(RAW, "json")
    assert from_json == parse_settings(msgpack.packb(ACME), "msgpack")
    assert from_json == parse_settings(b"  \n" + RAW)
    assert from_json.document == ACME


def test_example_model():
    s = parse_settings(RAW)
    assert (s.tenant, s.currency, s.status, s.chat_mode, s.lead_trigger) == (
        "acme", "USD", "active", "chat_per_call", "on_answer")
    assert (s.default_caller_id, s.main_number, s.pickup_code) == ("+14155550100", "+14155550199", "*8")
    assert s.backup == S.Backup("+14155550111", "rent-1")
    assert s.block_anonymous is False
    assert [n.number for n in s.numbers] == ["+14155550100", "+14155550199", "+442071234567"]
    n0, n1, n2 = s.numbers
    flags = (n0.requires_documents, n0.inbound_only, n1.inbound_only, n2.requires_documents)
    assert flags == (True, False, True, False)
    assert n0.offhours_action == S.OffhoursAction("forward", "+14155550123")
    assert n1.offhours_action == S.OffhoursAction("voicemail")
    assert n2.offhours_action == S.OffhoursAction("reject")  # the default
    assert (n0.route_to, n2.route_to, n2.schedule) == ("sales", "support", None)
    assert n0.rental == S.Rental(Decimal("5.00"), dt.date(2026, 12, 1))
    assert n0.schedule == S.Schedule(
        "America/Los_Angeles", (((540, 1080),), ((540, 1080),), (), (), (), (), ()), (dt.date(2026, 12, 25),))
    assert s.users == (S.User("u1", "+14155550100", ("sales",)), S.User("u3", "+442071234567", ("support",)))
    assert s.queue_groups == (S.QueueGroup("sales", ("u1", "u2")), S.QueueGroup("support", ("u3", "u2")))
    assert s.group_members() == {"sales": ("u1", "u2"), "support": ("u3", "u2")}
    assert s.user_groups() == {"u1": {"sales"}, "u3": {"support"}, "u2": {"sales", "support"}}
    assert (s.blacklist, s.offhours_blacklist) == (("+14155550666",), ("+14155550777",))


def test_money_is_exact_decimal():
    s = parse_settings(msgpack.packb(ACME))
    rate = s.lines[0].rates[0]
    assert rate == S.Rate("1", Decimal("0.0200"), 60)
    assert type(rate.per_minute) is Decimal and str(rate.per_minute) == "0.0200"
    assert s.lines[0].rates[1].per_minute * 3 == Decimal("0.1050")
    assert type(s.auto_topup.amount) is Decimal and str(s.auto_topup.amount) == "20.00"
    assert s.auto_topup == S.AutoTopup(True, Decimal("20.00"))
    assert [str(n.rental.monthly_fee) for n in s.numbers if n.rental] == ["5.00", "5.00", "4.50"]
    # Values that a float would get wrong stay exact.
    doc = acme()
    doc["lines"][0]["rates"][0]["per_minute"] = "0.100001"
    doc["auto_topup"]["amount"] = "999999999.99"
    s = parse_settings(doc)
    assert s.lines[0].rates[0].per_minute == Decimal("0.100001")
    assert s.auto_topup.amount == Decimal("999999999.99")


def test_json_number_as_money_is_refused_and_says_why():
    text = RAW.replace(b'"per_minute": "0.0200"', b'"per_minute": 0.0200')
    assert text != RAW
    assert errors_of(text) == [
        'lines[0].rates[0].per_minute: 0.0200 must be a string such as "0.0200": money is exact, never a float']
    text = RAW.replace(b'"amount": "20.00"', b'"amount": 20')
    assert errors_of(text) == [
        'auto_topup.amount: 20 must be a string such as "20.00": money is written as a decimal string']


def test_msgpack_float_as_money_is_refused_and_says_why():
    doc = acme()
    doc["numbers"][0]["rental"]["monthly_fee"] = 0.1 + 0.2
    assert errors_of(msgpack.packb(doc)) == [
        'numbers[0].rental.monthly_fee: 0.30000000000000004 must be a string such as "0.0200": '
        "money is exact, never a float"]


def test_minimal_document_and_defaults():
    s = parse_settings(MINIMAL)
    assert s == S.Settings("t", "EUR", "active", "none", "on_hangup")
    assert s.auto_topup == S.AutoTopup(False, None)
    assert (s.lines, s.numbers, s.users, s.queue_groups, s.blacklist) == ((), (), (), (), ())
    # null means absent for the optional references
    s = parse_settings({**MINIMAL, "default_caller_id": None, "main_number": None, "pickup_code": None,
                        "auto_topup": None, "backup": None})
    assert (s.default_caller_id, s.main_number, s.pickup_code, s.backup) == (None, None, None, None)


def test_24_00_ends_a_day():
    s = parse_settings(RAW)
    ny = s.numbers[1].schedule
    assert ny is not None
    assert ny.weekly[0] == ((480, 720), (780, 1440))
    assert ny.weekly[1] == ny.weekly[2] == ny.weekly[3] == ((0, 1440),)
    assert ny.weekly[4] == ((0, 1050),)
    assert ny.weekly[5] == ny.weekly[6] == ()


def test_intervals_are_sorted_and_two_halves_across_midnight_are_fine():
    doc = acme()
    doc["numbers"][0]["schedule"]["weekly"] = {"fri": [["22:00", "24:00"], ["00:00", "02:00"]], "sat": []}
    s = parse_settings(doc)
    assert schedule_of(s, 0).weekly[4] == ((0, 120), (1320, 1440))
    assert schedule_of(s, 0).weekly[5] == ()


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe", "America/St_Johns"])
def test_real_zones_are_accepted(zone):
    doc = acme()
    doc["numbers"][0]["schedule"]["timezone"] = zone
    assert schedule_of(parse_settings(doc), 0).timezone == zone


def test_holidays_leap_day_and_order():
    doc = acme()
    doc["numbers"][0]["schedule"]["holidays"] = ["2028-02-29", "2026-12-25", "2028-02-29"]
    s = parse_settings(doc)
    assert schedule_of(s, 0).holidays == (dt.date(2026, 12, 25), dt.date(2028, 2, 29))


def test_nanp_number_may_be_in_any_nanp_country():
    doc = acme()
    doc["numbers"][1]["country"] = "CA"  # +1 is shared by the NANP countries
    assert parse_settings(doc).numbers[1].country == "CA"


# --------------------------------------------------------------------------
# Whole-document behaviour
# --------------------------------------------------------------------------


def test_all_errors_of_a_document_are_reported_at_once():
    doc = acme()
    doc["currency"] = "GBP"
    doc["colour"] = "red"
    doc["pickup_code"] = "88"
    doc["lines"][0]["rates"][1]["per_minute"] = 0.035
    doc["numbers"][0]["schedule"]["weekly"]["tue"][0] = ["09:00", "25:00"]
    doc["numbers"][0]["schedule"]["holidays"].append("2026-02-30")
    doc["numbers"][1]["route_to"] = "billing"
    doc["numbers"][2]["rental"]["monthly_fee"] = "4.505"
    doc["users"][0]["groups"].append("billing")
    doc["queue_groups"][1]["members"].append("u 4")
    doc["auto_topup"]["amount"] = "0"
    doc["backup"]["number"] = "+14155550100"
    doc["blacklist"].append("666")
    expected = [
        "colour: unknown field",
        "currency: 'GBP' is not one of USD, EUR",
        'lines[0].rates[1].per_minute: 0.035 must be a string such as "0.0200": money is exact, never a float',
        f"queue_groups[1].members[2]: 'u 4' is not a valid id {AID}",
        "numbers[0].schedule.weekly.tue[0]: '25:00' is not a time",
        "numbers[0].schedule.holidays[1]: '2026-02-30' is not a date (YYYY-MM-DD)",
        "numbers[1].route_to: queue group 'billing' is not in queue_groups",
        "numbers[2].rental.monthly_fee: '4.505' has more than 2 decimal places",
        "users[0].groups[1]: queue group 'billing' is not in queue_groups",
        "pickup_code: '88' must start with * or #, or it collides with dialable numbers",
        "auto_topup.amount: '0' is outside 0.01 .. 1000000000",
        f"backup.number: +14155550100 {LOOP}",
        f"blacklist[1]: '666' {E164}",
    ]
    with pytest.raises(SettingsError) as info:
        parse_settings(json.dumps(doc))
    assert info.value.errors == expected
    assert len(info.value.errors) == 13
    message = str(info.value)
    assert message.startswith("settings refused, 13 errors:\n  - colour: unknown field\n")
    assert all(f"  - {line}" in message for line in expected)


def test_one_error_is_singular():
    assert str(SettingsError(["tenant: is required"])) == "settings refused, 1 error:\n  - tenant: is required"


def test_long_error_lists_are_cut_in_the_message_not_in_errors():
    doc = acme()
    doc["blacklist"] = ["666"] * 130
    errors = errors_of(doc)
    # The first 100 bad entries are named, the rest counted.
    assert errors[:2] == [f"blacklist[0]: '666' {E164}", f"blacklist[1]: '666' {E164}"]
    assert errors[99] == f"blacklist[99]: '666' {E164}"
    assert errors[100:] == ["blacklist: 30 more entries are not E.164 numbers"]
    with pytest.raises(SettingsError) as info:
        parse_settings(doc)
    assert str(info.value).endswith("\n  ... and 51 more")
    assert str(info.value).count("\n  - ") == 50


def test_a_refused_push_changes_nothing():
    doc = acme()
    doc["numbers"][0]["schedule"]["weekly"]["mon"][0][1] = "25:00"
    before = copy.deepcopy(doc)
    with pytest.raises(SettingsError):
        parse_settings(doc)
    assert doc == before  # the input is not touched, and nothing is returned: all or nothing
