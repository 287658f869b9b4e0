"""The Kamailio script's call record (integrations/kamailio/callgate_kemi.py `remember` / `recall`) with a
stand-in for Kamailio's KSR module: one JSON variable per call, hostile SIP values carried whole, and the calls
made before a reload of the script (one variable per field) still recalled."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    script.remember(**fields)
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
    """The spool as a worker sees it: what it was asked to append."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, bytes]] = []
        self.raws: list[bytes] = []

    def add(self, items: list[tuple[str, str, bytes]]) -> None:
        self.items.extend(items)

    def add_raw(self, payload: bytes, ended: bool) -> None:
        self.raws.append(payload)


HOSTILE = {"caller": '"},{\\\x00é\r\n"dir":"outbound"', "called": "+14155550199", "line": "l\u2028ine"}
SCENARIOS = [
    ("inbound", [("reply", 180), ("reply", 200), ("end", 0)]),
    ("inbound", [("reply", 200), ("end", 0)]),            # a 200 without a 180: RINGING and ANSWERED at once
    ("inbound", [("reply", 183), ("reply", 180), ("failure", 486)]),
    ("inbound", [("failure", 480)]),                     # unanswered, never rung: RINGING and ENDED
    ("forwarded", [("reply", 180), ("reply", 200), ("end", 0)]),
    ("outbound", [("reply", 180), ("reply", 200), ("end", 0)]),   # the hold: the full path in both
    ("outbound", [("failure", 603)]),
]


@pytest.mark.parametrize(("direction", "steps"), SCENARIOS)
@pytest.mark.parametrize("user_header", ["", "alice", "bob\x00x"])
def test_a_raw_record_makes_the_events_the_worker_made_itself(
        kemi: tuple[Any, Variables], monkeypatch: pytest.MonkeyPatch, direction: str, steps: list[tuple[str, int]],
        user_header: str) -> None:
    """The same call twice: its record as one JSON variable (the SIP worker appends it raw, the sender makes the
    events: `events_of`), and as one variable a field (the script before this one's calls: the worker makes
    the events itself).  The events, byte for byte, must be the same."""
    script, pv = kemi
    ksr = sys.modules["KSR"]
    monkeypatch.setattr(ksr, "err", lambda text: None, raising=False)
    monkeypatch.setattr(ksr.dialog, "dlg_set_timeout", lambda seconds: None, raising=False)
    fake_time = types.ModuleType("time")
    fake_time.__dict__.update(time.__dict__)
    fake_time.time = lambda: 1_800_000_000.7  # type: ignore[attr-defined]
    monkeypatch.setitem(script.recall.__globals__, "time", fake_time)
    fields = {"call": "a@b/1", "tenant": "acme", "dir": direction, "user": "u1", **HOSTILE}

    class Stub:   # callgate answering an outbound call's hold
        def CallEvent(self, request: Any, **kwargs: Any) -> Any:
            return types.SimpleNamespace(max_duration_s=60)

    def run(as_record: bool) -> list[tuple[str, str, bytes]]:
        pv.values.clear()
        worker = script()
        worker.spool, worker._stub, worker._pid = Capture(), Stub(), os.getpid()
        if as_record:
            script.remember(**fields)
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
        assert as_record or not worker.spool.raws
        made = [event for raw in worker.spool.raws for event in worker.events_of(raw)]
        return sorted(worker.spool.items + made, key=lambda e: ["RINGING", "ANSWERED", "ENDED"].index(
            e[0].rpartition(":")[2]))

    raw, made_here = run(True), run(False)
    assert raw == made_here and len(raw) == len({e[0] for e in raw}) >= 2


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
