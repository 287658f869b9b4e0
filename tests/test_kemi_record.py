"""The Kamailio script's call record (integrations/kamailio/callgate_kemi.py `remember` / `recall`) with a
stand-in for Kamailio's KSR module: one JSON variable per call, hostile SIP values carried whole, and the calls
made before a reload of the script (one variable per field) still recalled."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SCRIPT = Path(__file__).resolve().parent.parent / "integrations" / "kamailio" / "callgate_kemi.py"


class Variables:
    """Kamailio's pseudo-variables as a dict: $avp(x) and $dlg_var(x)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.calls = 0

    def get(self, name: str) -> str | None:
        self.calls += 1
        return self.values.get(name)

    def sets(self, name: str, value: str) -> None:
        self.calls += 1
        self.values[name] = value

    def var_sets(self, name: str, value: str) -> None:   # KSR.dialog.var_sets
        self.sets(f"$dlg_var({name})", value)


@pytest.fixture
def kemi(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Variables]]:
    pv = Variables()
    ksr = types.ModuleType("KSR")
    ksr.pv = pv  # type: ignore[attr-defined]
    ksr.dialog = types.SimpleNamespace(var_sets=pv.var_sets)  # type: ignore[attr-defined]
    ksr.tm = types.SimpleNamespace(t_is_canceled=lambda: -1)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "KSR", ksr)
    spec = importlib.util.spec_from_file_location("callgate_kemi_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module.kamailio, pv


def test_a_call_is_remembered_in_one_variable_and_recalled_whole(kemi: tuple[Any, Variables]) -> None:
    script, pv = kemi
    fields = {"call": "a@b/1", "tenant": "acme", "dir": "inbound", "user": "u1",
              "caller": '"},{\\\x00é\r\n', "called": "+14155550199", "line": ""}
    script.remember(script.call_record(**fields))
    assert pv.calls == 2 and set(pv.values) == {"$avp(cg)", "$dlg_var(cg)"}
    assert script.recall() == fields
    assert script.recall("$dlg_var(cg)") == fields
    pv.values.pop("$avp(cg)")                    # a later transaction of the dialog: from the dialog
    assert script.recall() == fields


def test_a_damaged_record_is_none(kemi: tuple[Any, Variables]) -> None:
    script, pv = kemi
    for text in ("not json", "[1, 2]", '"text"', "{"):
        pv.values["$avp(cg)"] = text
        assert script.recall() == {}


def test_a_call_made_before_a_reload_is_recalled_from_its_fields(kemi: tuple[Any, Variables]) -> None:
    """The script before this one kept a variable per field: a call it took keeps its answer and its end."""
    script, pv = kemi
    for name, value in (("call", "old/7"), ("tenant", "acme"), ("dir", "outbound"), ("user", "u3")):
        pv.values[f"$dlg_var(cg_{name})"] = value
    assert script.recall("$dlg_var(cg)") == {"call": "old/7", "tenant": "acme", "dir": "outbound", "user": "u3"}
    pv.values["$avp(cg_call)"] = "old/7"
    assert script.recall()["call"] == "old/7" and script.recall()["tenant"] == "acme"


class Capture:
    """The spool as a worker sees it: what it was asked to append, in order, with each append's `ended`."""

    def __init__(self) -> None:
        self.appended: list[tuple[str, Any, bool]] = []

    def add(self, items: list[tuple[str, str, bytes]]) -> None:
        self.appended.append(("events", items, all(key.endswith(":ENDED") for key, _, _ in items)))

    def add_raw(self, payload: bytes, ended: bool) -> None:
        self.appended.append(("raw", payload, ended))


HOSTILE = {"caller": '"},{\\\x00é\r\n"dir":"outbound"', "called": "+14155550199", "line": "l\u2028ine"}
SCENARIOS = [   # (direction, steps, how the worker appends with the record as one variable)
    ("inbound", [("reply", 180), ("reply", 200), ("end", 0)], "raw raw raw"),
    ("inbound", [("reply", 200), ("end", 0)], "raw raw"),   # a 200 without a 180: RINGING and ANSWERED at once
    ("inbound", [("reply", 183), ("reply", 180), ("failure", 486)], "raw raw"),   # the 180: nothing new
    ("inbound", [("failure", 480)], "raw"),                # unanswered, never rung: RINGING and ENDED
    ("forwarded", [("reply", 180), ("reply", 200), ("end", 0)], "raw raw raw"),
    ("outbound", [("reply", 180), ("reply", 200), ("end", 0)], "events events raw"),   # the hold: replies read
    ("outbound", [("failure", 603)], "raw"),
]


@pytest.fixture
def worker_of(kemi: tuple[Any, Variables], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A factory of the script's workers with their clock stopped, callgate answering an outbound call's hold."""
    script, _ = kemi
    ksr = sys.modules["KSR"]
    monkeypatch.setattr(ksr, "err", lambda text: None, raising=False)
    monkeypatch.setattr(ksr.dialog, "dlg_set_timeout", lambda seconds: None, raising=False)
    fake_time = types.ModuleType("time")
    fake_time.__dict__.update(time.__dict__)
    fake_time.time = lambda: 1_800_000_000.7  # type: ignore[attr-defined]
    monkeypatch.setitem(script.recall.__globals__, "time", fake_time)

    class Stub:
        def CallEvent(self, request: Any, **kwargs: Any) -> Any:
            return types.SimpleNamespace(max_duration_s=60)

    def make(spool: Any) -> Any:
        worker = script()
        worker.spool, worker._stub, worker._pid = spool, Stub(), os.getpid()
        return worker

    return make


def call_through(script: Any, pv: Variables, worker: Any, fields: dict[str, str], as_record: bool,
                 steps: list[tuple[str, int]], user_header: str) -> None:
    """One call's replies, failure and end through `worker`, its record kept as one JSON variable or (the
    script before this one) one variable a field."""
    pv.values.clear()
    if as_record:
        script.remember(script.call_record(**fields))
    else:
        for name, value in fields.items():
            pv.values[f"$avp(cg_{name})"] = pv.values[f"$dlg_var(cg_{name})"] = value
    pv.values.update({"$rm": "INVITE", "$ci": "a@b", "$hdr(X-Callgate-User)": user_header})
    for route, status in steps:
        if route == "reply":
            pv.values["$rs"] = str(status)
            worker.ksr_onreply_invite(None)
        elif route == "failure":
            pv.values["$T_reply_code"] = str(status)
            worker.ksr_failure_invite(None)
        else:
            pv.values.pop("$avp(cg)", None)   # the dialog's end: no transaction, the dialog's variables
            worker.ksr_dialog_event(None, "dialog:end")


@pytest.mark.parametrize(("direction", "steps", "hows"), SCENARIOS)
@pytest.mark.parametrize("user_header", ["", "alice", "bob\x00x"])
def test_a_raw_record_makes_the_events_the_worker_made_itself(
        kemi: tuple[Any, Variables], worker_of: Any, direction: str, steps: list[tuple[str, int]], hows: str,
        user_header: str) -> None:
    """The same call twice: its record as one JSON variable (the SIP worker appends it raw, the sender makes the
    events: `events_of`), and as one variable a field (the script before this one's calls: the worker makes
    the events itself).  The events, byte for byte and in order, and each append's `ended` (what the spool's
    limit takes), must be the same; and the raw path must be the one taken, but for an outbound call's replies."""
    script, pv = kemi
    fields = {"call": "a@b/1", "tenant": "acme", "dir": direction, "user": "u1", **HOSTILE}
    made: dict[bool, list[Any]] = {}
    for as_record in (True, False):
        worker = worker_of(Capture())
        call_through(script, pv, worker, fields, as_record, steps, user_header)
        appended = worker.spool.appended
        assert [how for how, _, _ in appended] == (hows.split() if as_record else ["events"] * len(hows.split()))
        made[as_record] = [(event, ended) for how, what, ended in appended
                           for event in (worker.events_of(what) if how == "raw" else what)]
    assert made[True] == made[False]
    kinds = [key.rpartition(":")[2] for (key, _, _), _ in made[True]]
    assert kinds[0] == "RINGING" and len(kinds) == len(set(kinds)) >= 2


def test_a_worker_and_the_sender_through_a_real_spool(kemi: tuple[Any, Variables], worker_of: Any,
                                                      tmp_path: Path) -> None:
    """Two workers' raw records and a record of the script before this one, through the journals into the spool's
    table by the sender (`ingest(events_of)`): the events in the order written, each once, as callgate gets them."""
    script, pv = kemi
    module = script.recall.__globals__
    path = str(tmp_path / "events.sqlite")
    first, second = worker_of(module["Spool"](path, 100)), worker_of(module["Spool"](path, 100))
    second.spool.journal._pid = os.getpid()
    second.spool.journal._open()             # a journal of its own, as another process would have
    a = {"call": "a/1", "tenant": "acme", "dir": "inbound", "user": "g", "caller": "+1202555", "called": "+1415"}
    call_through(script, pv, first, a, True, [("reply", 183)], "alice")
    pv.values["$rs"] = "180"                 # the same call's 180 in another worker: RINGING once
    pv.values.pop("$dlg_var(cg_rung)")
    second.ksr_onreply_invite(None)
    b = {**a, "call": "b/1"}
    call_through(script, pv, second, b, False, [("reply", 200), ("end", 0)], "")
    call_through(script, pv, first, a, True, [("reply", 200), ("end", 0)], "alice")
    sender = worker_of(module["Spool"](path, 100))
    time.sleep(0.03)
    moved, problems = sender.spool.ingest(sender.events_of)
    assert problems == [] and moved == 8   # (two RINGINGs of a/1 more, each kept once by its key)
    rows = sender.spool.conn().execute("SELECT key, request FROM events ORDER BY id").fetchall()
    assert [key for key, _ in rows] == ["a/1:RINGING", "b/1:RINGING", "b/1:ANSWERED", "b/1:ENDED", "a/1:ANSWERED",
                                        "a/1:ENDED"]
    ringing = sender.pb.CallEventRequest.FromString(rows[0][1])
    assert (ringing.user, ringing.caller, ringing.direction, ringing.at) == ("alice", "+1202555", "inbound",
                                                                              1_800_000_000)


def test_a_record_nested_past_the_parser_is_a_record_refused_not_a_stuck_sender(worker_of: Any) -> None:
    worker = worker_of(Capture())
    deep = b"R1\x00RINGING\x001\x00\x00" + b"[" * 100_000 + b"\x00"
    with pytest.raises(ValueError, match="not JSON"):
        worker.events_of(deep)


def test_a_reloaded_script_reads_its_spool_module_again(kemi: tuple[Any, Variables],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`kamcmd app_python3.reload` runs the script again in a process that imported the spool module before:
    the module the new script uses is the file as it is now, not the one loaded then."""
    stale = types.ModuleType("callgate_spool")
    stale.__spec__ = importlib.util.spec_from_file_location("callgate_spool", SCRIPT.parent / "callgate_spool.py")
    stale.__file__ = str(SCRIPT.parent / "callgate_spool.py")
    monkeypatch.setitem(sys.modules, "callgate_spool", stale)   # an older module: no Spool at all
    spec = importlib.util.spec_from_file_location("callgate_kemi_reloaded", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module.Spool, "add_raw") and sys.modules["callgate_spool"].Spool is module.Spool


def test_a_raw_record_the_sender_cannot_read_is_refused_with_a_reason(kemi: tuple[Any, Variables]) -> None:
    script, _ = kemi
    worker = script()
    for raw, why in ((b"junk", "not a raw record"), (b"R1\x00RINGING\x00x\x00\x00{}\x00", "without its fields"),
                     (b"R1\x00RINGING\x001\x00\x00{}", "without its fields"),
                     (b"R1\x00RINGING\x001\x00\x00not json\x00", "not JSON"),
                     (b"R1\x00RINGING\x001\x00\x00[1]\x00", "not an object"),
                     (b'R1\x00ENDED\x001\x00answered\x00{"call":"c"}\x00', "without its call or tenant"),
                     (b'R1\x00HELD\x001\x00\x00{"call":"c","tenant":"t"}\x00', "does not make"),
                     (b'R1\x00RINGING\x00999999999999999999999\x00\x00{"call":"c","tenant":"t"}\x00',
                      "out of range"),
                     (b'R1\x00RINGING\x001\x00\x00{"call":"c","tenant":"t","caller":"\\ud800"}\x00', "surrogates")):
        with pytest.raises(ValueError, match=why):
            worker.events_of(raw)


@pytest.mark.parametrize("as_record", [True, False])
def test_a_failure_never_takes_who_rang_from_the_callers_invite(kemi: tuple[Any, Variables], worker_of: Any,
                                                                 as_record: bool) -> None:
    """In the failure route the message is the caller's INVITE, whose header list still holds the X-Callgate-User
    the request route removed: the RINGING of a call that never rang names the record's user, never the caller's
    choice."""
    script, pv = kemi
    worker = worker_of(Capture())
    fields = {"call": "a@b/1", "tenant": "acme", "dir": "inbound", "user": "u1", **HOSTILE}
    call_through(script, pv, worker, fields, as_record, [("failure", 480)], "mallory")
    [(how, what, _)] = worker.spool.appended
    events = worker.events_of(what) if how == "raw" else what
    ringing = worker.pb.CallEventRequest.FromString(events[0][2])
    assert [key.rpartition(":")[2] for key, _, _ in events] == ["RINGING", "ENDED"] and ringing.user == "u1"


@pytest.mark.parametrize("talker", ["\udcff\udcfe", "u2\udcc3"])   # bytes no UTF-8, a character cut in two
def test_a_pbx_header_that_is_no_utf8_names_the_records_user(kemi: tuple[Any, Variables], worker_of: Any,
                                                             talker: str) -> None:
    """What the PBX put in X-Callgate-User reaches the sender as bytes (Kamailio's module copies them, cut at 1 KiB):
    bytes that are no UTF-8 name nobody, and the call's events are still made, with the record's user."""
    script, _ = kemi
    worker = worker_of(Capture())
    record = script.call_record(call="a@b/1", tenant="acme", dir="inbound", user="u1", caller="+1", called="+2",
                                line="")
    raw = b"R1\0" + "\0".join(("RINGING,ANSWERED", "1800000000", "", record, talker)).encode("utf-8", "surrogateescape")
    events = worker.events_of(raw)
    assert [worker.pb.CallEventRequest.FromString(r).user for _, _, r in events] == ["u1", "u1"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.text(max_size=8), st.text(st.characters(codec="utf-8") | st.sampled_from(
    ["\x00", '"', "\\", "\u2028", "\udc80", "\ud83d", "\x7f"]), max_size=30), max_size=8))
def test_a_record_is_written_as_json_dumps_writes_it(kemi: tuple[Any, Variables], fields: dict[str, str]) -> None:
    """The record is made without json.dumps (an encoder made at every call cost a SIP worker ~38 us), byte for
    byte as it: callgate_events.c reads exactly that form."""
    script, _ = kemi
    assert script.call_record(**fields) == json.dumps(fields, separators=(",", ":"))


def test_the_dialog_timer_the_script_leaves_unset_is_the_configurations(kemi: tuple[Any, Variables]) -> None:
    """An inbound call's or forwarded leg's timer is not set per call where kamailio.cfg says its default is
    that timer (CG_DIALOG_TIMEOUT); a configuration without it (an operator's own) has every call set it."""
    script, pv = kemi
    module = script.recall.__globals__
    cfg = (SCRIPT.parent / "kamailio.cfg").read_text()
    timer = module["talk_timer"](module["CALL_MAX_S"])
    assert f"#!define CG_DIALOG_TIMEOUT {timer}\n" in cfg
    assert 'modparam("dialog", "default_timeout", CG_DIALOG_TIMEOUT)' in cfg
    set_ = []
    ksr = sys.modules["KSR"]
    ksr.pv.seti = lambda name, value: set_.append((name, value))
    ksr.dialog.dlg_manage = lambda: 1
    ksr.rr = types.SimpleNamespace(add_rr_param=lambda param: 1)  # type: ignore[attr-defined]
    ksr.tm.t_on_reply = ksr.tm.t_on_failure = lambda route: 1
    # (Kamailio's $defn of a name not defined is 0; a Kamailio without $defn gives none)
    for defined, expect in ((0, [("$avp(cg_timeout)", timer)]), (None, [("$avp(cg_timeout)", timer)]),
                            (timer, [])):
        pv.values.clear()
        pv.values.update({"$ci": "a@b", "$cs": "1", "$defn(CG_DIALOG_TIMEOUT)": defined})  # type: ignore[dict-item]
        worker = script()
        assert worker.default_timer == (defined or 0)
        set_.clear()
        worker.under_dialog(module["CALL_MAX_S"], {"tenant": "acme", "dir": "inbound", "user": "u1"})
        assert set_ == expect


@pytest.mark.parametrize("length", [1, 200, 254, 255, 300, 5_000])
def test_a_call_id_longer_than_callgate_takes_is_named_by_its_digest(kemi: tuple[Any, Variables],
                                                                     length: int) -> None:
    """A caller chooses its Call-ID: one past the 256 characters callgate takes would have every event of the call
    refused (unregistered, a forwarded leg unbilled).  Such a call is named by the SHA-256 of Call-ID/CSeq: within
    the limit, the same for the call's every event, and distinct for another CSeq of the same Call-ID."""
    script, pv = kemi
    pv.values.update({"$ci": "c" * length, "$cs": "1"})
    first = script.new_call_id()
    pv.values["$cs"] = "2"
    second = script.new_call_id()
    assert len(first) <= 256 and len(second) <= 256 and first != second
    pv.values["$cs"] = "1"
    assert script.new_call_id() == first
    if length + 2 <= 256:   # (within the limit: Call-ID/CSeq as it is)
        assert first == "c" * length + "/1"
    else:
        assert first.startswith("sha256:") and len(first) == 71


def test_a_sources_trust_is_found_once_and_a_flood_of_sources_keeps_a_bounded_memory(
        kemi: tuple[Any, Variables], monkeypatch: pytest.MonkeyPatch) -> None:
    """trusted_tenant parses and matches a source address once per worker (then a lookup), reads the tenant's
    header at every request, and keeps at most SOURCES_KEPT sources however many (spoofed UDP) come."""
    script, pv = kemi
    module = script.recall.__globals__
    monkeypatch.setitem(module, "TRUSTED", module["parse_trusted"]("10.0.0.0/8=acme, 192.0.2.1, 2001:db8::/32=v6"))
    monkeypatch.setitem(module, "SOURCES_KEPT", 100)
    parsed: list[str] = []
    real = module["source_tenant"]

    def counted(source: str) -> str | None:
        parsed.append(source)
        return real(source)

    monkeypatch.setitem(module, "source_tenant", counted)
    worker = script()

    def tenant_of(source: str, header: str | None = None) -> str | None:
        pv.values["$si"] = source
        pv.values.pop("$hdr(X-Callgate-Tenant)", None)
        if header is not None:
            pv.values["$hdr(X-Callgate-Tenant)"] = header
        return worker.trusted_tenant()

    assert [tenant_of("10.1.2.3"), tenant_of("10.1.2.3"), tenant_of("2001:db8::7")] == ["acme", "acme", "v6"]
    assert [tenant_of("192.0.2.1", " beta "), tenant_of("192.0.2.1", "gamma"), tenant_of("192.0.2.1")] == \
        ["beta", "gamma", ""]   # (the header read at every request: a source that must say, says per request)
    assert [tenant_of("203.0.113.9"), tenant_of("not an address"), tenant_of("")] == [None, None, None]
    assert parsed == ["10.1.2.3", "2001:db8::7", "192.0.2.1", "203.0.113.9", "not an address", ""]
    for i in range(1000):
        assert tenant_of(f"198.51.{i // 256}.{i % 256}", "acme") is None
    assert len(worker.sources) <= 100
    assert tenant_of("10.1.2.3") == "acme" and parsed[-1] == "10.1.2.3"   # (forgotten in the flood: found again)


def test_a_refused_replica_file_is_logged_once_per_reason_and_again_while_it_lasts(
        kemi: tuple[Any, Variables], monkeypatch: pytest.MonkeyPatch) -> None:
    script, _ = kemi
    said: list[str] = []
    monkeypatch.setattr(sys.modules["KSR"], "err", said.append, raising=False)
    module = script.recall.__globals__
    clock = [1000.0]
    monkeypatch.setattr(module["time"], "monotonic", lambda: clock[0])
    worker = script()
    local = types.SimpleNamespace(refusals={"acme": "0 bytes, shorter than the 56-byte prefix"})
    for _ in range(3):
        worker.refused_file(local, "acme")
        worker.refused_file(local, "beta")   # (usable: nothing to say)
    assert len(said) == 1 and "the file of tenant 'acme'" in said[0] and "56-byte prefix" in said[0], said
    local.refusals["acme"] = "its sha256 does not match its contents (damaged)"
    worker.refused_file(local, "acme")
    assert len(said) == 2 and "damaged" in said[1]
    clock[0] += module["REFUSAL_LOG_S"]
    worker.refused_file(local, "acme")
    assert len(said) == 3
