"""The settings document against hostile and broken input: wrong types, undecodable bytes, size limits, every
field set to nothing, random values and mutations, duplicate keys, byte-order marks and other encodings, numbers
no field can hold.  Always a SettingsError with field paths, never another exception.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from engine import settings as S
from engine import settings_decode
from engine.settings import SettingsError, load_document, parse_settings

from .settings_cases import ACME, MINIMAL, RAW, TID, acme, errors_of

# --------------------------------------------------------------------------
# Wrong types at the top and undecodable bytes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "fmt", "expected"), [
    ([], None, "document: must be an object, not list"),
    (None, None, "document: must be an object, not NoneType"),
    (42, None, "document: must be an object, not int"),
    (b"[1, 2]", None, "document: must be an object, not list"),
    ("[]", None, "document: must be an object, not list"),
    ('"acme"', None, "document: must be an object, not str"),
    (b"null", "json", "document: must be an object, not NoneType"),
    (msgpack.packb([ACME]), None, "document: must be an object, not list"),
    (msgpack.packb("acme"), None, "document: must be an object, not str"),
    (msgpack.packb(None), None, "document: must be an object, not NoneType"),
])
def test_top_level_not_an_object(data, fmt, expected):
    assert errors_of(data, fmt) == [expected]


@pytest.mark.parametrize(("data", "fmt", "start"), [
    (b'{"tenant": "acme",}', None, "document: not valid JSON ("),
    (b"{", None, "document: not valid JSON ("),
    ("{'tenant': 'acme'}", None, "document: not valid JSON ("),
    (b'{"tenant": "\xff"}', None, "document: not UTF-8 (byte 0xff at offset 12)"),
    (RAW[:-3], None, "document: not valid JSON ("),
    (b"", "json", "document: not valid JSON ("),
    (b'{"a": 1e999999999999999999999}', None, "document: not valid JSON (a number is out of range)"),
    (b"", None, "document: not valid msgpack ("),
    (msgpack.packb(ACME)[:-5], None, "document: not valid msgpack ("),
    (msgpack.packb(ACME) + b"\x00", None, "document: not valid msgpack ("),
    (b"\xc1", None, "document: not valid msgpack ("),
    (b"\x81\xa1a\xc4", None, "document: not valid msgpack ("),
    (b"\x81\xa2\xff\xfe\x01", None, "document: not valid msgpack ("),  # a key that is not UTF-8
    (msgpack.packb({1: "int key"}), None, "document: key 1 is not a string: object keys are field names"),
    (msgpack.packb({(1, 2): "array key"}), None, "document: key [1, 2] is not a string"),
    (RAW, "msgpack", "document: not valid msgpack ("),
    (RAW.decode(), "msgpack", "document: msgpack must be bytes"),
])
def test_undecodable_documents(data, fmt, start):
    errors = errors_of(data, fmt)
    assert len(errors) == 1 and errors[0].startswith(start), errors
    assert "\n" not in errors[0]


def test_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown settings format 'yaml'"):
        load_document(RAW, "yaml")


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------


def test_document_larger_than_the_limit(monkeypatch):
    assert S.MAX_DOCUMENT_BYTES == settings_decode.MAX_DOCUMENT_BYTES  # the decoder's limit, public here too
    monkeypatch.setattr(settings_decode, "MAX_DOCUMENT_BYTES", 100)
    packed = msgpack.packb(ACME)
    assert errors_of(RAW) == [f"document: {len(RAW)} bytes is larger than the 100 byte limit"]
    assert errors_of(packed) == [f"document: {len(packed)} bytes is larger than the 100 byte limit"]
    assert errors_of(RAW.decode()) == [f"document: {len(RAW)} bytes is larger than the 100 byte limit"]
    monkeypatch.setattr(settings_decode, "MAX_DOCUMENT_BYTES", len(RAW))
    assert parse_settings(RAW).tenant == "acme"  # exactly at the limit is fine


LIMITS = [
    # (MAX_LIST key, largest length of the example's lists of that kind, path of the longest, its length)
    ("lines", "lines", 1),
    ("rates", "lines[0].rates", 2),
    ("numbers", "numbers", 3),
    ("users", "users", 2),
    ("queue_groups", "queue_groups", 2),
    ("blacklist", "blacklist", 1),
    ("offhours_blacklist", "offhours_blacklist", 1),
    ("holidays", "numbers[1].schedule.holidays", 2),
    ("intervals", "numbers[1].schedule.weekly.mon", 2),
    ("groups", "users[0].groups", 1),
    ("members", "queue_groups[0].members", 2),
]


@pytest.mark.parametrize(("key", "path", "length"), LIMITS)
def test_list_length_limits(monkeypatch, key, path, length):
    monkeypatch.setitem(S.MAX_LIST, key, length)
    assert parse_settings(RAW) is not None  # at the limit: accepted
    monkeypatch.setitem(S.MAX_LIST, key, length - 1)
    errors = errors_of(RAW)
    assert errors[0] == f"{path}: {length} entries is more than the limit of {length - 1}"


def test_every_list_limit_is_tested():
    assert {key for key, _, _ in LIMITS} == set(S.MAX_LIST)


# --------------------------------------------------------------------------
# Hostile inputs: always SettingsError, never another exception
# --------------------------------------------------------------------------


def _all_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _all_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _all_paths(v, (*prefix, i))
    return out


ACME_PATHS = _all_paths(ACME)


def _replace(doc: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def _packed(value: Any) -> bytes | None:
    try:
        return msgpack.packb(value)
    except OverflowError:  # ints beyond 64 bits: msgpack cannot carry them
        return None


def _parses_or_refuses(data: Any, fmt: str | None = None) -> None:
    try:
        result = parse_settings(data, fmt)
    except SettingsError as exc:
        assert exc.errors
        for line in exc.errors:
            assert isinstance(line, str) and "\n" not in line and len(line) < 400, line
            path, sep, message = line.partition(": ")
            assert path and sep and message, f"no field path in {line!r}"
    else:
        assert isinstance(result, S.Settings)


@pytest.mark.parametrize("path", ACME_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_none_or_deleted_at_every_field(path):
    _parses_or_refuses(_replace(ACME, path, None))
    _parses_or_refuses(msgpack.packb(_replace(ACME, path, None)))
    _parses_or_refuses(_replace(ACME, path, None, delete=True))


def test_deep_nesting():
    deep = "[" * 100_000 + "]" * 100_000
    assert errors_of(deep) == ["document: not valid JSON (nested too deeply)"]
    assert errors_of(deep.encode()) == ["document: not valid JSON (nested too deeply)"]
    obj = '{"a":' * 100_000 + "1" + "}" * 100_000
    assert errors_of(obj) == ["document: not valid JSON (nested too deeply)"]
    assert errors_of(b"\x91" * 100_000 + b"\xc0")[0].startswith("document: not valid msgpack (")
    # As deep as the decoders allow, in a field the validator quotes back: still a clean refusal.
    limit = sys.getrecursionlimit()
    for depth in range(limit - 40, limit + 5, 3):
        _parses_or_refuses('{"block_anonymous": ' + "[" * depth + "]" * depth + "}")
        _parses_or_refuses('{"block_anonymous": ' + '{"a":' * depth + "1" + "}" * depth + "}")
    for depth in (500, 1000, 1023, 1024, 1025):
        _parses_or_refuses(b"\x81\xafblock_anonymous" + b"\x91" * depth + b"\xc0")


def test_huge_values_are_quoted_short():
    doc = acme()
    doc["tenant"] = "x" * 1_000_000 + " "
    doc["users"][0]["id"] = ["y" * 1_000_000]
    doc["z" * 1_000_000] = 1
    doc["block_anonymous"] = 10 ** 5000  # only reachable from Python: repr() refuses such ints
    doc["lines"][0]["rates"][0]["increment_s"] = -10 ** 5000
    errors = errors_of(doc)
    assert errors == [
        f"'{'z' * 56}...: unknown field",
        f"tenant: '{'x' * 56}... {TID}",
        "block_anonymous: must be true or false, not <int>",
        "lines[0].rates[0].increment_s: <int> is outside 1 .. 3600",
        "users[0].id: must be a string, not list",
    ]


def test_msgpack_specific_values():
    doc = acme()
    doc["blacklist"] = msgpack.ExtType(5, b"\x00\x01")
    doc["pickup_code"] = b"*8"
    doc["numbers"][0]["schedule"]["holidays"][0] = msgpack.Timestamp(0)
    doc["lines"][0]["rates"][0]["increment_s"] = 2 ** 64 - 1
    errors = errors_of(msgpack.packb(doc))
    assert "pickup_code: must be a string, not bytes" in errors
    assert "numbers[0].schedule.holidays[0]: must be a string, not Timestamp" in errors
    assert f"lines[0].rates[0].increment_s: {2 ** 64 - 1} is outside 1 .. 3600" in errors
    # bytes keys: msgpack allows them; a document refuses them with their path, never a crash
    bytes_key: dict[Any, Any] = {b"tenant": "acme", **MINIMAL}
    assert errors_of(msgpack.packb(bytes_key)) == ["document: key b'tenant' is not a string: object keys are "
                                                   "field names"]
    weekly = _replace(ACME, ("numbers", 0, "schedule", "weekly"), {b"mon": [["09:00", "18:00"]]})
    assert errors_of(msgpack.packb(weekly)) == [
        "numbers[0].schedule.weekly: key b'mon' is not a string: object keys are field names"]


def test_non_string_keys_from_python():
    assert errors_of({1: "a", None: "b", (1, 2): "c", **MINIMAL}) == [
        "1: unknown field", "None: unknown field", "(1, 2): unknown field"]


def test_json_nan_and_infinity():
    for text in ('{"block_anonymous": NaN}', '{"block_anonymous": -Infinity}', '{"tenant": NaN}'):
        _parses_or_refuses(text)
    raw = RAW.replace(b'"per_minute": "0.0200"', b'"per_minute": NaN')
    assert errors_of(raw) == [
        'lines[0].rates[0].per_minute: NaN is not a JSON number; expected a decimal string such as "0.0200"']


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(sorted({k for p in ACME_PATHS for k in p if isinstance(k, str)} | {"", "x"}))
FAST = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(JSON_VALUES)
def test_random_json_values(value):
    _parses_or_refuses(value)
    _parses_or_refuses(json.dumps(value))
    if (packed := _packed(value)) is not None:
        _parses_or_refuses(packed)
    _parses_or_refuses({**MINIMAL, "x": value} if not isinstance(value, dict) else {**MINIMAL, **value})


@FAST
@given(st.sampled_from(ACME_PATHS), JSON_VALUES | FIELD_NAMES, st.sampled_from(["set", "delete", "add"]))
def test_random_mutations_of_the_example(path, value, how):
    if how == "add":
        parent = ACME
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and isinstance(value, str):
            doc = _replace(ACME, (*path[:-1], value), {"nested": value})  # a new or replaced key
        else:
            doc = _replace(ACME, path, value)
    else:
        doc = _replace(ACME, path, value, delete=how == "delete")
    _parses_or_refuses(doc)
    _parses_or_refuses(json.dumps(doc).encode())
    if (packed := _packed(doc)) is not None:
        _parses_or_refuses(packed)


# -- strict documents: duplicate keys, byte-order marks, encodings, values no field can hold ---------------------

def _duplicated(text: str, key: str, occurrence: int = 0) -> str:
    """The JSON text with the `occurrence`-th `"key":` given twice (the first value repeated before it)."""
    needle = f'"{key}":'
    at = -1
    for _ in range(occurrence + 1):
        at = text.index(needle, at + 1)
    return text[:at] + f'{needle} "x", ' + text[at:]


@pytest.mark.parametrize(("key", "occurrence", "path"), [
    ("tenant", 0, "document"),
    ("line", 1, "numbers[0]"),                       # the first "line" is the backup's
    ("timezone", 0, "numbers[0].schedule"),
    ("mon", 1, "numbers[1].schedule.weekly"),
    ("per_minute", 1, "lines[0].rates[1]"),
    ("enabled", 0, "auto_topup"),
])
def test_duplicate_keys_are_refused_with_their_path(key: str, occurrence: int, path: str) -> None:
    text = _duplicated(RAW.decode(), key, occurrence)
    assert json.loads(text)                              # plain json takes it (the last value wins)
    assert errors_of(text) == [f"{path}: duplicate key {key!r}"]
    assert errors_of(text.encode()) == [f"{path}: duplicate key {key!r}"]


def test_duplicate_keys_in_msgpack_and_several_at_once() -> None:
    packer = msgpack.Packer()
    top = b"\x82" + packer.pack("tenant") + packer.pack("acme") + packer.pack("tenant") + packer.pack("evil")
    assert errors_of(top) == ["document: duplicate key 'tenant'"]
    inner = msgpack.packb({**MINIMAL, "auto_topup": {"enabled": True, "amount": "1.00"}})
    map2 = b"\x82" + packer.pack("enabled") + packer.pack(True) + packer.pack("enabled") + packer.pack(False)
    twice = inner.replace(msgpack.packb({"enabled": True, "amount": "1.00"}), map2)
    assert errors_of(twice) == ["auto_topup: duplicate key 'enabled'"]
    text = _duplicated(_duplicated(RAW.decode(), "tenant"), "timezone")
    assert errors_of(text) == ["document: duplicate key 'tenant'", "numbers[0].schedule: duplicate key 'timezone'"]


@pytest.mark.parametrize(("data", "expected"), [
    (b"\xef\xbb\xbf" + RAW, "document: starts with a UTF-8 byte-order mark: save it as UTF-8 without a "
                            "byte-order mark"),
    ("\ufeff" + RAW.decode(), "document: starts with a byte-order mark (U+FEFF): remove it"),
    (RAW.decode().encode("utf-16"), "document: starts with a UTF-16 byte-order mark: save it as UTF-8 without a "
                                    "byte-order mark"),
    (RAW.decode().encode("utf-32"), "document: starts with a UTF-32 byte-order mark: save it as UTF-8 without a "
                                    "byte-order mark"),
    (RAW.decode().encode("utf-16-le"), "document: holds NUL bytes, as UTF-16 or UTF-32 text does: JSON documents "
                                       "are read as UTF-8 only"),
    (RAW.decode().encode("utf-16-be"), "document: starts with a NUL byte, as UTF-16 or UTF-32 text does: JSON "
                                       "documents are read as UTF-8 only"),
    (RAW.replace(b"Los_Angeles", b"Los_Angel\xe9s"), "document: not UTF-8 (byte 0xe9 at offset"),
])
def test_byte_order_marks_and_other_encodings_are_refused(data: bytes | str, expected: str) -> None:
    errors = errors_of(data)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_numbers_no_field_can_hold_are_refused_with_the_field() -> None:
    huge = "9" * 5000
    text = RAW.decode().replace('"increment_s": 60', f'"increment_s": {huge}', 1)
    assert errors_of(text) == ["lines[0].rates[0].increment_s: a whole number of 5000 digits does not fit any "
                               "field; expected 1 .. 3600"]
    text = RAW.decode().replace('"block_anonymous": false', f'"block_anonymous": -{huge}', 1)
    assert errors_of(text) == ["block_anonymous: a whole number of 5000 digits does not fit any field; expected "
                               "true or false"]
    text = RAW.decode().replace('"tenant": "acme"', '"tenant": Infinity', 1)
    assert errors_of(text) == ["tenant: Infinity is not a JSON number; expected a tenant id"]
    text = RAW.decode().replace('"holidays": ["2026-12-25"]', f'"holidays": [{huge}]', 1)
    assert errors_of(text) == ["numbers[0].schedule.holidays[0]: a whole number of 5000 digits does not fit any "
                               "field; expected a string"]
    assert all("set_int_max_str_digits" not in e for e in errors_of(f'{{"a": {huge}}}'))
    # a number within the digit limit is read as the number it is (and checked against its field)
    assert errors_of(RAW.decode().replace('"increment_s": 60', '"increment_s": ' + "9" * 30, 1)) == [
        f"lines[0].rates[0].increment_s: {'9' * 30} is outside 1 .. 3600"]


@FAST
@given(st.sampled_from([p for p in ACME_PATHS if p and isinstance(p[-1], str)]))
def test_a_duplicate_key_anywhere_is_refused_with_its_path(path: tuple) -> None:
    """Any key of the example given twice (an object built from pairs, as a decoder sees it) is named by path."""
    parent_path = path[:-1]
    text = json.dumps(ACME)
    parent = ACME
    for key in parent_path:
        parent = parent[key]
    pairs = ", ".join([f"{json.dumps(path[-1])}: 0"] + [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in parent.items()])
    assume(text.count(json.dumps(parent)) == 1)      # the object is found where the path says
    replaced = text.replace(json.dumps(parent), "{" + pairs + "}", 1)
    where = ""
    for key in parent_path:
        where += f"[{key}]" if isinstance(key, int) else (f".{key}" if where else key)
    errors = errors_of(replaced)
    assert f"{where or 'document'}: duplicate key {path[-1]!r}" in errors
