"""The Kamailio script's call record (integrations/kamailio/callgate_kemi.py `remember` / `recall`) with a
stand-in for Kamailio's KSR module: one JSON variable per call, hostile SIP values carried whole, and the calls
made before a reload of the script (one variable per field) still recalled."""

from __future__ import annotations

import importlib.util
import sys
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
