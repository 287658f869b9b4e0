"""`make run` until the server exists: load settings, print decisions in words.

    python -m engine.demo examples/acme.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from decimal import Decimal
from pathlib import Path

from ._core import CoreDecision
from .decision import RingingCall
from .engine import Engine
from .settings import SettingsError, parse_settings


def _utc(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).astimezone(dt.UTC).timestamp())


def describe(kind: str, args: str, d: CoreDecision) -> str:
    dec = d.to_decision(kind)
    words = f"{dec.verdict} ({dec.reason}"
    if dec.sip_status:
        words += f", SIP {dec.sip_status}"
    words += ")"
    if dec.verdict == "ROUTE":
        words += f" to group {dec.group} {list(dec.members)}"
    if dec.verdict == "FORWARD":
        words += f" to {dec.target} on line {dec.line}"
    if dec.verdict == "ALLOW":
        words += (f" as {dec.caller_id} on {dec.line} at {dec.rate_per_minute}/min per {dec.increment_s}s,"
                  f" up to {dec.max_duration_s}s")
    if dec.verdict == "INTERCEPT":
        words += f" call {dec.call_id}"
    return f"  {kind:<8} {args:<58} -> {words}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.demo",
        description="Compile a tenant's settings and print a few decisions in words.")
    parser.add_argument("settings", type=Path, help="settings document (JSON or msgpack)")
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings.read_bytes())
    except OSError as exc:
        print(f"error: cannot read {args.settings}: {exc.strerror}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"error: {args.settings}: {exc}", file=sys.stderr)
        return 2
    engine = Engine()
    engine.push(settings, version=1)
    t = settings.tenant
    print(f"tenant {t}: {len(settings.numbers)} numbers, {len(settings.blacklist)} blacklisted, status "
          f"{settings.status}")
    work = _utc("2026-12-01T10:30:00-08:00")  # a Tuesday, in working hours in Los Angeles
    night = _utc("2026-12-05T12:00:00-08:00")  # a Saturday
    main_no = settings.main_number or (settings.numbers[0].number if settings.numbers else "+10000000000")
    first = settings.numbers[0].number if settings.numbers else main_no
    for caller, called, at, label in [
        ("+14155550666", main_no, work, "blacklisted caller"),
        ("4155551234", main_no, work, "national caller, working hours"),
        ("+14155550777", main_no, night, "off-hours blacklist, Saturday"),
        ("+14155551234", main_no, night, "ordinary caller, Saturday"),
        ("anonymous", main_no, work, "withheld caller"),
        ("+14155551234", first, work, "number with documents pending"),
        ("+14155551234", "+19995550000", work, "unknown number"),
    ]:
        print(describe("inbound", f"{caller} -> {called} ({label})", engine.inbound(t, caller, called, at)))
    approved = [n.number for n in settings.numbers]
    engine.set_approved(t, approved)
    print("  (documents approved for every number)")
    print(describe("inbound", f"+14155551234 -> {first}", engine.inbound(t, "+14155551234", first, work)))
    for user, dest, balance in [("u1", "+14155557000", "1.00"), ("u3", "02071112222", "0.05"),
                                ("u2", "+33123456789", "10.00"), ("u1", "+14155557000", "0.01")]:
        print(describe("outbound", f"{user} -> {dest}, balance {balance}",
                       engine.outbound(t, user, dest, work, Decimal(balance))))
    ringing = [RingingCall("call-1", "u1", work - 30), RingingCall("call-2", "u3", work - 50)]
    code = settings.pickup_code or "*8"
    for user in ("u2", "u1", "u3"):
        print(describe("pickup", f"{user} dials {code} (u1 ringing 30s, u3 ringing 50s)",
                       engine.pickup(t, user, code, ringing)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
