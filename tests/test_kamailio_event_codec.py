"""The callgate_events module's event encoding (integrations/kamailio/callgate_events/cg_event.c), built alone and
held to the script's `events_of`: for any call record and reply, the module's journal records carry byte for byte
the events the sender would have made of the raw record, or the module writes the raw record (it declines) —
never different events.  Declining is always safe; a wrong byte would bill the wrong user or lose a call."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_kamailio_spool import spool
from .test_kemi_record import Variables, kemi  # noqa: F401  (the script under a stand-in KSR)

SOURCE = Path(__file__).resolve().parent.parent / "integrations" / "kamailio" / "callgate_events" / "cg_event.c"
KINDS = ["RINGING", "ANSWERED", "ENDED", "RINGING,ANSWERED", "RINGING,ENDED"]
OUTCOMES = ["", "answered", "busy", "no_answer", "cancelled", "failed"]
AT, MONO, WALL = 1_800_000_000, 123_456_789, 1_800_000_000.25


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("cc") is None:
        pytest.fail("no C compiler (cc): .ci/run installs gcc")
    lib = tmp_path_factory.mktemp("codec") / "cg_event.so"
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", str(lib), str(SOURCE),
                    "-lz"], check=True, capture_output=True, timeout=120)
    c = ctypes.CDLL(str(lib))
    c.cg_prepare.restype = c.cg_event_records.restype = ctypes.c_size_t
    c.cg_prepare.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    c.cg_event_records.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p,
                                   ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int64, ctypes.c_double,
                                   ctypes.c_char_p, ctypes.c_size_t]
    c.cg_utf8_valid.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    c.cg_call_record.restype = c.cg_route_param.restype = ctypes.c_size_t
    c.cg_call_record.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p,
                                 ctypes.c_size_t]
    c.cg_route_param.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                                 ctypes.c_char_p, ctypes.c_size_t]
    return c


@pytest.fixture
def sender(kemi: tuple[Any, Variables]) -> Any:  # noqa: F811
    return kemi[0]()


def module_events(codec: Any, record: bytes, kinds: str, outcome: str, user: bytes | None) -> list[Any] | None:
    """The events the module writes for this reply (key, call, request), or None: it writes the raw record."""
    room = 4 * len(record) + 64
    prepared = ctypes.create_string_buffer(room)
    size = codec.cg_prepare(record, len(record), prepared, room)
    if size == 0:
        return None
    out = ctypes.create_string_buffer(65536 + 8 * len(record) + 3 * len(user or b""))
    n = codec.cg_event_records(prepared.raw[:size], size, kinds.encode(), outcome.encode(), user,
                               len(user or b""), AT, MONO, WALL, out, len(out))
    if n == 0:
        return None
    records, took, damage = spool.read_journal(out.raw[:n], MONO, raw=False)
    assert (took, damage) == (n, ""), "the module's records are whole and sound"
    assert all(r[0] == MONO and r[1] == WALL for r in records)
    return [r[2:] for r in records]


def script_events(sender: Any, record: bytes, kinds: str, outcome: str, user: bytes | None) -> list[Any] | None:
    """What the sender makes of the raw record the module would write instead (None: it refuses it)."""
    raw = b"R1\0" + b"\0".join((kinds.encode(), str(AT).encode(), outcome.encode(), record, user or b""))
    try:
        return [tuple(e) for e in sender.events_of(raw)]
    except ValueError:
        return None


def same(codec: Any, sender: Any, record: bytes, kinds: str, outcome: str, user: bytes | None) -> bool:
    """The module's events are the script's, or the module declines; True when it made them."""
    made = module_events(codec, record, kinds, outcome, user)
    if made is not None:
        assert made == script_events(sender, record, kinds, outcome, user), (record, kinds, user)
    return made is not None


TYPICAL = {"call": "a84b4c76e66710@pc33/1", "tenant": "acme", "dir": "inbound", "user": "sales-1",
           "caller": "+14155550000", "called": "+14155550199", "line": ""}


def test_a_typical_call_is_made_in_c_byte_for_byte(codec: Any, sender: Any) -> None:
    record = json.dumps(TYPICAL, separators=(",", ":")).encode()
    for kinds in KINDS:
        for user in (None, b"alice", "Zo\u00eb \U0001f600".encode()):
            assert same(codec, sender, record, kinds, "busy" if "ENDED" in kinds else "", user)
    made = module_events(codec, record, "RINGING,ANSWERED", "", b"alice")
    assert made is not None and [key for key, _, _ in made] == [f"{TYPICAL['call']}:RINGING",
                                                               f"{TYPICAL['call']}:ANSWERED"]


@pytest.mark.parametrize("fields", [
    {**TYPICAL, "dir": "outbound", "user": "u3"},                 # an outbound call names its caller
    {**TYPICAL, "dir": "outbound", "user": ""},
    {**TYPICAL, "user": ""},                                      # nobody: "unknown"
    {k: v for k, v in TYPICAL.items() if k != "dir"},             # no direction: inbound
    {**TYPICAL, "caller": '"},{\\\x00\u00e9\r\n"dir":"outbound"', "line": "l\u2028ine"},
    {**TYPICAL, "call": "\U0001f4de/\x00/\udbff\udfff"},          # the last code point, as a surrogate pair
    {**TYPICAL, "extra": "a field this code does not know"},
])
def test_hostile_but_valid_records_are_made_in_c(codec: Any, sender: Any, fields: dict[str, str]) -> None:
    record = json.dumps(fields, separators=(",", ":")).encode()
    for kinds in KINDS:
        for user in (None, b"bob", b"\xff\xfe", "\u00e9".encode()[:1]):
            assert same(codec, sender, record, kinds, "failed", user)


@pytest.mark.parametrize("record", [
    b"",
    b"{}",
    b"[1,2]",
    b'{"call":"x"}',                                              # no tenant
    b'{"call":"","tenant":"acme"}',                               # no call id
    b'{"call":"x", "tenant":"acme"}',                             # not json.dumps's separators
    b'{"call":"x","tenant":"acme","call":"y"}',                   # twice: json.loads keeps the last
    b'{"call":"x","tenant":"acme","user":7}',                     # not a string
    b'{"call":"x\\udc80","tenant":"acme"}',                       # a lone surrogate: no UTF-8
    b'{"call":"x\\ud800","tenant":"acme"}',
    b'{"call":"x\\ud800\\u0041","tenant":"acme"}',
    b'{"call":"x\xc3\xa9","tenant":"acme"}',                      # not ASCII: json.dumps escapes it
    b'{"call":"x\\q","tenant":"acme"}',
    b'{"call":"x\\u12","tenant":"acme"}',
    b'{"call":"x","tenant":"acme"',
    b'{"call":"x","tenant":"acme"}trailing',
    b'{"call":"x","tenant":"acme","nested":{"a":"b"}}',
    b'{"call":"' + b"c" * 70_000 + b'","tenant":"acme"}',         # longer than the module prepares
])
def test_records_json_dumps_never_writes_are_left_raw(codec: Any, sender: Any, record: bytes) -> None:
    for kinds in KINDS:
        assert not same(codec, sender, record, kinds, "", b"alice")


def test_kinds_it_does_not_make_are_left_raw(codec: Any, sender: Any) -> None:
    record = json.dumps(TYPICAL, separators=(",", ":")).encode()
    for kinds in ("TRANSFERRED", "RINGING,", "ringing", "", "RINGING,BOGUS"):
        assert module_events(codec, record, kinds, "", None) in (None, [])


@pytest.mark.parametrize("data", [b"", b"abc", "\u00e9\u20ac\U0001f600".encode(), b"\x00"])
def test_utf8_as_python_takes_it(codec: Any, data: bytes) -> None:
    assert codec.cg_utf8_valid(data, len(data)) == 1


@pytest.mark.parametrize("data", [b"\x80", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                  b"\xc3", b"\xe2\x82", b"\xff", "\u00e9".encode() + b"\xa9"])
def test_utf8_python_refuses(codec: Any, data: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert codec.cg_utf8_valid(data, len(data)) == 0


texts = st.text(st.characters(codec="utf-8") | st.sampled_from(["\x00", '"', "\\", "\u2028", "\udc80", "\ud800"]),
                max_size=40)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.sampled_from(["call", "tenant", "dir", "user", "caller", "called", "line", "x"]),
                              texts | st.sampled_from(["outbound", "inbound", "forwarded", ""])),
       kinds=st.sampled_from(KINDS), outcome=st.sampled_from(OUTCOMES),
       user=st.none() | st.binary(max_size=12) | texts.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_record_any_reply_the_same_events_or_raw(codec: Any, sender: Any, fields: dict[str, str], kinds: str,
                                                    outcome: str, user: bytes | None) -> None:
    record = json.dumps(fields, separators=(",", ":")).encode()
    same(codec, sender, record, kinds, outcome, user)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.binary(max_size=200) | st.builds(lambda a, b: a + b, st.sampled_from(
    [b'{"call":"x","tenant":"acme"', b'{"call":"', b'{"tenant":"t","call":"c\\u']), st.binary(max_size=30)))
def test_any_bytes_as_a_record_never_different_events(codec: Any, sender: Any, record: bytes) -> None:
    for kinds in ("RINGING", "ENDED"):
        same(codec, sender, record, kinds, "busy", b"alice")


def test_made_in_c_is_the_usual_case(codec: Any, sender: Any) -> None:
    """Most records json.dumps writes are made in C (the point of the module), hostile values included."""
    made = 0
    for i in range(200):
        fields = {**TYPICAL, "call": f"call-{i}\u00e9\U0001f600", "caller": chr(32 + i % 90) * (i % 7)}
        made += same(codec, sender, json.dumps(fields, separators=(",", ":")).encode(), KINDS[i % 5], "busy",
                     None if i % 3 else b"alice")
    assert made == 200


@pytest.mark.parametrize(("name", "named"), [
    ("b" * 256, True), ("b" * 257, False),                                    # callgate takes 256 characters
    ("\u00e9" * 256, True), ("\u00e9" * 257, False), ("\U0001f600" * 256, True), ("\U0001f600" * 257, False)])
def test_a_user_callgate_would_refuse_names_the_records_user(codec: Any, sender: Any, name: str,
                                                             named: bool) -> None:
    """A PBX's name longer than callgate takes would have it refuse the call's every event (its ENDED too: no
    such call), leaving a forwarded leg unbilled: the record's user is named instead, in C as in the script."""
    record = json.dumps(TYPICAL, separators=(",", ":")).encode()
    for kinds in ("RINGING", "RINGING,ANSWERED"):
        assert same(codec, sender, record, kinds, "", name.encode())
        made = module_events(codec, record, kinds, "", name.encode())
        assert made is not None
        users = {sender.pb.CallEventRequest.FromString(request).user for _, _, request in made}
        assert users == {name if named else TYPICAL["user"]}


# -- the call's record and Record-Route parameters, made in C (callgate_events.relayed) -----------------------------

RECORD_FIELDS = ("call", "tenant", "dir", "caller", "called", "line", "user")   # cg_call_record's order


def module_record(codec: Any, values: list[bytes], cap: int = 4096) -> bytes | None:
    """The record the module makes of these field values (bytes, as Kamailio hands them over), or None: it
    declines (the script makes it)."""
    out = ctypes.create_string_buffer(cap)
    n = codec.cg_call_record((ctypes.c_char_p * 7)(*values), (ctypes.c_size_t * 7)(*map(len, values)), out, cap)
    return out.raw[:n] if n else None


def module_route_param(codec: Any, call: bytes, tenant: bytes) -> bytes | None:
    out = ctypes.create_string_buffer(16 + 2 * (len(call) + len(tenant)))
    n = codec.cg_route_param(call, len(call), tenant, len(tenant), out, len(out))
    return out.raw[:n] if n else None


def test_a_typical_record_is_the_scripts_byte_for_byte(codec: Any, sender: Any) -> None:
    values = [TYPICAL[name] for name in RECORD_FIELDS]
    made = module_record(codec, [v.encode() for v in values])
    assert made is not None and made == sender.call_record(**dict(zip(RECORD_FIELDS, values, strict=True))).encode()
    assert json.loads(made) == TYPICAL
    assert module_route_param(codec, b"a@b/1", b"acme") == b";cgc=" + b"a@b/1".hex().encode() + b";cgt=61636d65"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(st.characters(codec="utf-8") | st.sampled_from(
    ["\x00", "\x7f", '"', "\\", "\b", "\f", "\n", "\r", "\t", "\u2028", "\U0010ffff", "\U0001f600"]),
    max_size=30), min_size=7, max_size=7))
def test_any_fields_the_record_and_route_are_the_scripts(codec: Any, sender: Any, values: list[str]) -> None:
    """What the module makes in place of the script's `call_record` and Record-Route parameters: the same bytes,
    for any text (control characters, quotes, characters past the BMP), and a record the module's own reader
    prepares (its events made in C)."""
    made = module_record(codec, [v.encode() for v in values])
    assert made is not None and made == sender.call_record(**dict(zip(RECORD_FIELDS, values, strict=True))).encode()
    room = 4 * len(made) + 64
    assert codec.cg_prepare(made, len(made), ctypes.create_string_buffer(room), room) > 0 or not values[0] \
        or not values[1]   # (no call id or tenant: the sender's events_of refuses it, and so the module's reader)
    call, tenant = values[0].encode(), values[1].encode()
    assert module_route_param(codec, call, tenant) == f";cgc={call.hex()};cgt={tenant.hex()}".encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.binary(max_size=12), min_size=7, max_size=7))
def test_fields_that_are_not_utf8_are_left_to_the_script(codec: Any, values: list[bytes]) -> None:
    """A field Python could not have read (not UTF-8, a surrogate's bytes): the module declines, and the script
    makes the record its own way; what it makes is json.loads's reading of the values."""
    made = module_record(codec, values)
    try:
        texts = [v.decode("utf-8") for v in values]
    except UnicodeDecodeError:
        assert made is None
        return
    assert made is not None and list(json.loads(made).values()) == texts


def test_a_record_longer_than_the_room_is_declined(codec: Any) -> None:
    values = [b"c" * 600, *([b"\x01" * 100] * 6)]    # 600 + 6 x 600 escaped: past 4,096
    assert module_record(codec, values) is None
    assert module_record(codec, values, cap=8192) is not None
    assert module_record(codec, [b"x"] * 7, cap=60) is None   # (the worst case is reserved: 6 bytes a byte)
