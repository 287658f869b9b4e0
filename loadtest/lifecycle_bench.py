"""CallEvent throughput: whole calls (RINGING -> ANSWERED -> ENDED) per second against a real server.

    python -m loadtest.lifecycle_bench                          # 32 lanes, 5,000 calls or 15 s, one worker
    python -m loadtest.lifecycle_bench --json bench-results/lifecycle.json
    python -m loadtest.lifecycle_bench --calls 200 --duration 5 --lanes 8 --warmup 0     # a smoke run
    python -m loadtest.lifecycle_bench --target 127.0.0.1:50051 --tenant acme --push     # a running server

What is measured.  The lifecycle target: "at least 500
calls/s with one worker on this machine", where a call is its three events,
each a CallEvent RPC that the server commits in its own SQLite write
transaction (WAL, synchronous=FULL: one fsync per event).  The figure is
whole calls per second: lifecycles whose three events all answered OK,
started inside the measured window, divided by that window (first measured
RINGING sent -> last measured ENDED answered).  Events per second, latency
per event kind and of the whole call (p50/p90/p99/max, loadtest.stats
Histogram, from send to answer), errors by event kind and gRPC status, and
CPU are reported alongside.

The server.  By default the bench starts its own:

    python -m callgate serve --listen 127.0.0.1:0 --data-dir <tmp> --metrics '' --log-format json

(one worker, on loopback, a fresh store in a temporary directory under
`--data-parent`, default the system's temporary directory; the filesystem
type is printed, with a warning on tmpfs, where an fsync costs nothing and
the figure would flatter the server), reads the port from its JSON "listening"
log line, and stops it by its PID (SIGTERM, SIGKILL after a timeout) at the
end, whatever happens.  It pushes (Admin.PushSettings) the tenant of
examples/acme.json with every number's rental removed and auto top-up
disabled, so that no rental renewal or top-up lands in the ledger during the
run, and credits it (Admin.Credit, reference "bench-opening") so that the
outbound calls are paid for.  `--target HOST:PORT` measures a running
server instead: `--tenant` must exist there with acme's users, numbers and
rates (`--push` pushes and credits the bench tenant there too); give
`--server-pid` to have its CPU measured, and, for a server started empty
for the bench, `--store` (its callgate.sqlite) to have the store checked.

The load.  `--lanes` coroutines (grpc.aio, over `--channels` connections per
client process, in `--procs` client processes started with multiprocessing
spawn) each run whole calls one after the other, as fast as the server
answers (closed loop: this is a throughput measurement, latency is service
time under that load).  Calls alternate between
  inbound:  RINGING user u1, caller +1212555xxxx, called +14155550199;
            ANSWERED by u2
  outbound: RINGING user u3, direction outbound, called +15551230000 (u3's
            caller ID, +442071234567, needs no documents); ANSWERED by u3
and every event carries an explicit instant (`--base-at` for RINGING, +3 s
for ANSWERED, + `--talk-seconds` for ENDED), so charges do not depend on the
clock: a 61 s outbound call at acme's 0.0200/min in 60 s increments costs
exactly 0.04.  Call ids are unique per run ("lb-<run>-<process>-<n>"), so
a second run against the same server never replays the first.  A run stops
starting calls after `--warmup` + `--duration` seconds or `--calls`
measured calls, whichever comes first; a call already started is carried
to its end (each event has the `--timeout` deadline).  Warm-up calls are
not measured but are verified like the others.

Verification (exit code 1 if any check fails; every check is listed):
  - no event failed (any gRPC error is a failure of the run);
  - every reply is what the call lifecycle rules (server/calls.py) say:
    RINGING -> state ringing; ANSWERED -> answered, and for inbound calls
    create_lead with lead_responsible u2 (acme's lead_trigger is on_answer);
    ENDED -> ended, talked_seconds = --talk-seconds, charge 0.04 for
    outbound (at the defaults) and 0.00 for inbound;
  - replay: the ENDED of `--replays` random completed calls is sent again;
    the replies must be identical and the balance (Admin.GetBalance before
    and after) must not move;
  - with a server it started (or `--store`), its SQLite file
    (<data-dir>/callgate.sqlite, opened read-only while the server runs):
    every completed call is in state ended with its charge and talk time;
    no call of the run that the bench did not start; one ledger row of kind
    'call' per completed outbound call (and no other), each minus the
    charge; the ledger holds the opening credit and the calls only;
    accounts.balance_micro = SUM(ledger.amount_micro) = the credit minus
    the charges; one lead per inbound call answered, responsible u2, and
    one lead per outbound call exactly when its ANSWERED reply said
    create_lead (rule 5 as the server applies it makes no difference of
    direction, so outbound calls answered by u3 get a lead too);
  - the server it started logged no warning or error.

Report: a progress bar on stderr (calls done, calls/s, failed calls), then
the table, the checks, and a PASS/FAIL line of the calls/s figure against
`--target-rate` (500).  Missing the rate is not an error (exit 0) unless
`--require-rate`; `--json FILE` writes every figure.  On the 2-core
machine the client shares the CPU with the server: the table shows both
(CPU ms per call, cores busy) and what the rest of the machine used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from engine import to_micro
from server.client import open_channel

from . import fleet
from .lifecycle_calls import INBOUND, KINDS, OUTBOUND, PICKUP_GROUPS, Spec, figures_of, pair, run_clients
from .process import EXAMPLE, ServeProcess, sigterm_unwinds
from .report import Progress, TargetResult, save_json, write_png
from .stats import RunRecorder, format_table, merge_all

BASE_AGO_S = 60  # calls ring a minute before the run starts: the server bounds event instants by its clock
RATE, INCREMENT_S = Decimal("0.0200"), 60  # acme's line rent-1, prefix "1": what bills +15551230000
CREDIT_REFERENCE = "bench-opening"


def expected_charge(talk_s: int) -> str:
    """The outbound charge worked out here, independently of server/billing.py: whole increments, cents half-up."""
    increments = math.ceil(talk_s / INCREMENT_S) if talk_s > 0 else 0
    exact = RATE * INCREMENT_S / 60 * increments
    return str(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def bench_document(tenant: str) -> bytes:
    """examples/acme.json without rentals and without auto top-up, under `tenant`'s name, plus one queue
    group of two users per lane: a pickup in a group no other lane uses has one right answer."""
    doc = json.loads(EXAMPLE.read_text())
    doc["tenant"] = tenant
    for number in doc["numbers"]:
        number.pop("rental", None)  # no renewal may charge the ledger during the run
    doc["auto_topup"] = {"enabled": False}  # nor a top-up: the ledger holds the credit and the calls only
    for lane in range(PICKUP_GROUPS):
        a, b = pair(lane)
        doc["queue_groups"].append({"id": f"pick{lane}", "members": [a, b]})
    return json.dumps(doc).encode()


def admin_setup(address: str, tenant: str, push: bool, credit: str | None, timeout_s: float) -> dict[str, Any]:
    """Push the bench tenant and credit it (each when asked); returns what the server said."""
    out: dict[str, Any] = {}
    with open_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        admin = admin_pb2_grpc.AdminStub(channel)
        if push:
            r = admin.PushSettings(admin_pb2.PushSettingsRequest(document=bench_document(tenant), format="json",
                                                                 comment="lifecycle_bench"), timeout=timeout_s)
            out["version"] = r.version
        if credit is not None:
            c = admin.Credit(admin_pb2.CreditRequest(tenant=tenant, amount=credit, reference=CREDIT_REFERENCE),
                             timeout=timeout_s)
            out["credit_recorded"] = c.recorded
        out["balance"] = admin.GetBalance(admin_pb2.BalanceRequest(tenant=tenant), timeout=timeout_s).balance
    return out


@dataclass
class Checks:
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.items.append({"name": name, "ok": bool(ok), "detail": detail})

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.items)


def replay_check(address: str, tenant: str, samples: list[tuple[str, str, bytes, bytes]], n: int, seed: int,
                 timeout_s: float, checks: Checks) -> None:
    """Send again the ENDED of `n` random completed calls: same replies, same balance."""
    chosen = random.Random(seed).sample(samples, min(n, len(samples)))
    differ: list[str] = []
    with open_channel(address) as channel:
        admin, decisions = admin_pb2_grpc.AdminStub(channel), decisions_pb2_grpc.DecisionsStub(channel)
        before = admin.GetBalance(admin_pb2.BalanceRequest(tenant=tenant), timeout=timeout_s).balance
        for call_id, _direction, req, first in chosen:
            again = decisions.CallEvent(decisions_pb2.CallEventRequest.FromString(req), timeout=timeout_s)
            if again != decisions_pb2.CallEventReply.FromString(first):
                differ.append(call_id)
        after = admin.GetBalance(admin_pb2.BalanceRequest(tenant=tenant), timeout=timeout_s).balance
    checks.add(f"replayed ENDED of {len(chosen)} calls: identical replies", len(chosen) >= min(n, 1) and not differ,
               f"differ: {differ[:5]}" if differ else "")
    checks.add("replays did not move the balance", before == after, f"{before} -> {after}")


class _PostgresReader:
    """A psycopg connection that reads the checks' SQL (sqlite3's ? placeholders)."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.raw = psycopg.connect(dsn, autocommit=True)

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self.raw.execute(sql.replace("?", "%s"), args or None)

    def close(self) -> None:
        self.raw.close()


def store_checks(db: Path | str, tenant: str, run_id: str, completed: dict[str, list[str]], failed: list[str],
                 leads_said: dict[str, list[str]], credit: str, charge: str, talk_s: int, checks: Checks) -> None:
    """The server's store (its SQLite file read-only, or its PostgreSQL database), against what the replies
    said."""
    ours = f"{run_id}-%"  # run ids are hex and '-': no LIKE wildcard in them
    charge_micro = to_micro(charge)
    inbound, outbound = set(completed["inbound"]), set(completed["outbound"])
    conn: Any = (_PostgresReader(db) if isinstance(db, str) and db.startswith("postgresql://") else
                 sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0))
    try:
        calls = {row[0]: row[1:] for row in conn.execute(
            "SELECT call_id, direction, state, charge_micro, talked_s FROM calls WHERE tenant = ? AND call_id LIKE ?",
            (tenant, ours))}
        open_ = sorted(c for c in inbound | outbound if calls.get(c, ("", ""))[1] in ("ringing", "answered"))
        checks.add("no completed call left ringing or answered", not open_,
                   f"{len(open_)}: {open_[:5]}" if open_ else "")
        bad = sorted(c for c in inbound | outbound if calls.get(c) != (
            "outbound" if c in outbound else "inbound", "ended", charge_micro if c in outbound else 0, talk_s))
        checks.add("every completed call recorded ended, with its charge and talk time", not bad,
                   f"{len(bad)} differ: {[(c, calls.get(c)) for c in bad[:3]]}" if bad else f"{len(calls)} calls")
        unknown = set(calls) - inbound - outbound - set(failed)
        checks.add("no call in the store that the bench did not start", not unknown,
                   f"{len(unknown)}: {sorted(unknown)[:5]}" if unknown else "")

        ledger = conn.execute("SELECT ref, amount_micro FROM ledger WHERE tenant = ? AND kind = 'call'",
                              (tenant,)).fetchall()
        refs = [r for r, _ in ledger]
        checks.add("ledger rows of kind 'call' == outbound calls completed",
                   len(ledger) == len(outbound) and set(refs) == outbound,
                   f"{len(ledger)} rows, {len(outbound)} outbound calls")
        wrong_amount = [(r, a) for r, a in ledger if a != -charge_micro]
        checks.add(f"every call ledger row is -{charge}", not wrong_amount,
                   f"{len(wrong_amount)}: {wrong_amount[:3]}" if wrong_amount else "")
        kinds = dict(conn.execute("SELECT kind, count(*) FROM ledger WHERE tenant = ? GROUP BY kind", (tenant,)))
        checks.add("ledger holds the opening credit and the calls only",
                   set(kinds) <= {"credit", "call"} and kinds.get("credit") == 1, f"{kinds}")
        row = conn.execute("SELECT balance_micro, reserved_micro FROM accounts WHERE tenant = ?",
                           (tenant,)).fetchone()
        balance = int(row[0]) if row else None
        held = int(conn.execute("SELECT COALESCE(SUM(reserved_micro), 0) FROM calls WHERE tenant = ? AND state IN "
                                "('ringing', 'answered')", (tenant,)).fetchone()[0])
        checks.add("the credit held == the holds of the calls still open (0 once every call ended)",
                   row is not None and int(row[1]) == held and (held == 0 or bool(failed)),
                   f"held {row[1] if row else None}, open calls' holds {held}")
        total = int(conn.execute("SELECT COALESCE(SUM(amount_micro), 0) FROM ledger WHERE tenant = ?",
                                 (tenant,)).fetchone()[0])
        want = to_micro(credit) - charge_micro * len(outbound)
        checks.add("accounts.balance_micro == SUM(ledger.amount_micro) == credit - charges",
                   balance == total == want, f"balance {balance}, ledger sum {total}, expected {want}")

        leads = dict(conn.execute("SELECT call_id, responsible FROM leads WHERE tenant = ? AND call_id LIKE ?",
                                  (tenant, ours)).fetchall())
        in_leads = {c: u for c, u in leads.items() if c in inbound}
        pickers = {pair(lane)[1] for lane in range(PICKUP_GROUPS)}
        checks.add("leads of inbound calls == inbound calls answered, responsible u2 (or the colleague who "
                   "picked the call up)",
                   len(in_leads) == len(inbound) and set(in_leads.values()) <= {INBOUND["answer_user"]} | pickers,
                   f"{len(in_leads)} leads, {len(inbound)} inbound calls, "
                   f"{sum(u in pickers for u in in_leads.values())} picked up")
        said = set(leads_said["outbound"]) & outbound
        out_leads = {c: u for c, u in leads.items() if c in outbound}
        checks.add("leads of outbound calls == those whose ANSWERED said create_lead, responsible u3",
                   set(out_leads) == said and set(out_leads.values()) <= {OUTBOUND["answer_user"]},
                   f"{len(out_leads)} leads, {len(said)} said (of {len(outbound)} outbound calls)")
    finally:
        conn.close()




def filesystem_type(path: Path) -> str:
    """Type of the filesystem holding `path` (the longest mount point above it in /proc/mounts)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind


def table(f: dict[str, Any]) -> str:
    def lat(kind: str, q: str) -> Callable[[dict[str, Any]], Any]:
        return lambda x: x["latency_ms"][kind][q]

    rows: list[tuple[str, str, Callable[[dict[str, Any]], Any], bool]] = [
        ("calls/s (whole lifecycles)", "{:,.0f}", lambda x: x["calls_per_s"], False),
        ("events/s", "{:,.0f}", lambda x: x["events_per_s"], False),
        ("measured calls", "{:,}", lambda x: x["measured_calls"], False),
        ("measured window, s", "{:.2f}", lambda x: x["elapsed_s"], False),
        ("calls incl. warm-up", "{:,}", lambda x: x["calls_total"], False),
        ("errors (events)", "{:,}", lambda x: sum(x["errors"].values()), False),
    ]
    for kind in (*KINDS, "call"):
        label = "whole call" if kind == "call" else kind
        for q in ("p50", "p90", "p99", "max"):
            rows.append((f"{label} {q}, ms", "{:.2f}", lat(kind, q), False))
    rows += [
        ("server CPU ms/call", "{:.3f}", lambda x: x.get("server_cpu_ms_per_call"), False),
        ("server cores busy", "{:.2f}", lambda x: x.get("server_cores_busy"), False),
        ("client CPU ms/call", "{:.3f}", lambda x: x.get("client_cpu_ms_per_call"), False),
        ("client cores busy", "{:.2f}", lambda x: x.get("client_cores_busy"), False),
        ("machine cores busy", "{:.2f}", lambda x: x.get("machine_cores_busy"), False),
        ("other processes, cores", "{:.2f}", lambda x: x.get("other_cores_busy"), False),
    ]
    return format_table({"lifecycle": f}, None, rows)


# -- command line ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.lifecycle_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("server")
    g.add_argument("--target", metavar="HOST:PORT",
                   help="a running server to measure instead of starting one (its store is checked only with --store)")
    g.add_argument("--tenant", default="acme",
                   help="tenant of the calls (default acme); with --target it must exist there with acme's users, "
                        "numbers and rates, unless --push")
    g.add_argument("--push", action="store_true",
                   help="with --target: push the bench tenant (acme without rentals or auto top-up) and credit it "
                        "(the bench always does both on a server it starts)")
    g.add_argument("--credit", default="100000.00", metavar="AMOUNT",
                   help="opening credit of the bench tenant, reference 'bench-opening' (default 100000.00)")
    g.add_argument("--server-pid", type=int, help="with --target: the server's PID, to measure its CPU per call")
    g.add_argument("--store", type=Path, metavar="FILE",
                   help="with --target --push on a server started empty for the bench: its callgate.sqlite, to run "
                        "the store checks on it too (read-only)")
    g.add_argument("--postgresql", action="store_true",
                   help="the server the bench starts keeps its store in PostgreSQL (`--store postgresql://...`): a "
                        "private cluster started for the run (Debian's postgresql) in the system's temporary "
                        "directory, removed at the end")
    g.add_argument("--data-parent", type=Path, metavar="DIR",
                   help="where the started server's temporary data directory goes (default: the system's temporary "
                        "directory); it must be on the disk you mean to measure, not tmpfs")
    g.add_argument("--keep-data", action="store_true",
                   help="keep the temporary data directory of the server the bench starts (its path is printed)")
    g = p.add_argument_group("load")
    g.add_argument("--calls", type=int, default=5000, help="measured calls at most, in total (default 5000)")
    fleet.add_arguments(g, duration=15.0, procs=1, channels=4, timeout=10.0)  # one process: the load runs in this one
    g.add_argument("--lanes", type=int, default=32, help="concurrent lanes, each one call at a time (default 32)")
    g.add_argument("--pickups", action="store_true",
                   help="every second inbound call is intercepted by the lane's colleague with the pickup code "
                        "(*8) instead of answered; the pickup must take exactly that call")
    g.add_argument("--talk-seconds", type=int, default=61,
                   help="ANSWERED -> ENDED, seconds (default 61: an outbound call costs 0.04)")
    g.add_argument("--base-at", type=int, default=0,
                   help=f"RINGING instant, UTC seconds (default: {BASE_AGO_S} s before the run starts; the server "
                        "refuses events beyond its clock's skew and age bounds); ANSWERED is 3 s later")
    g = p.add_argument_group("checks and output")
    g.add_argument("--replays", type=int, default=20, help="completed calls whose ENDED is sent again (default 20)")
    g.add_argument("--seed", type=int, default=1, help="random seed of the replay sample (default 1)")
    g.add_argument("--target-rate", type=float, default=500.0, help="calls/s to PASS (default 500)")
    g.add_argument("--require-rate", action="store_true", help="exit 2 when --target-rate is not reached")
    g.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    g.add_argument("--png", type=Path, metavar="FILE", help="plot whole-call latency over time and by percentile")
    return p



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_unwinds():  # SIGTERM unwinds: the server is stopped in a finally
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    if args.lanes < 1 or args.channels < 1 or args.procs < 1 or args.lanes < args.procs:
        raise SystemExit("need --lanes >= --procs >= 1 and --channels >= 1")
    if args.calls < args.procs or args.duration <= 0 or args.warmup < 0 or args.timeout <= 0:
        raise SystemExit("need --calls >= --procs, --duration > 0, --warmup >= 0, --timeout > 0")
    if args.store is not None and not (args.target and args.push and args.store.is_file()):
        raise SystemExit("--store FILE goes with --target and --push, and FILE must be the server's callgate.sqlite")
    if args.talk_seconds < 1:
        raise SystemExit("--talk-seconds must be at least 1")
    charge = expected_charge(args.talk_seconds)
    server: ServeProcess | None = None
    pg: Any = None   # loadtest.postgres.PrivateCluster with --postgresql
    whole_calls: RunRecorder | None = None
    tmp: str | None = None
    out: dict[str, Any] = {}
    checks = Checks()
    try:
        if args.target:
            address, pid = args.target, args.server_pid
            setup = admin_setup(address, args.tenant, args.push, args.credit if args.push else None, 15.0)
        else:
            tmp = tempfile.mkdtemp(prefix="lifecycle-bench-", dir=args.data_parent)
            fs = filesystem_type(Path(tmp))
            if fs in ("tmpfs", "ramfs"):
                print(f"warning: {tmp} is on {fs}: fsync costs nothing there, the figure flatters the server",
                      file=sys.stderr)
            # no seed: the checks need a ledger that holds nothing but the bench's credit and calls
            store_args: tuple[str, ...] = ()
            if args.postgresql:
                from .postgres import PrivateCluster

                pg = PrivateCluster()
                pg.start()
                store_args = ("--store", pg.dsn)
            server = ServeProcess(Path(tmp), *store_args, seed=None)
            address, pid = server.address, server.pid
            print(f"server: {shlex.join(server.command)}  (pid {pid}, {address}; store on {fs})", flush=True)
            setup = admin_setup(address, args.tenant, True, args.credit, 15.0)
        print(f"tenant {args.tenant}: {setup}", flush=True)
        spec = Spec(target=address, tenant=args.tenant, run_id=f"lb-{uuid.uuid4().hex[:10]}", lanes=args.lanes,
                    procs=args.procs, channels=args.channels, warmup_s=args.warmup, duration_s=args.duration,
                    max_calls=args.calls, timeout_s=args.timeout,
                    base_at=args.base_at or int(time.time()) - BASE_AGO_S, talk_s=args.talk_seconds,
                    charge=charge, samples=max(args.replays, 64), seed=args.seed, pickups=args.pickups)
        print(f"load: {spec.lanes} lanes, {spec.procs} client process(es) x {spec.channels} channel(s), "
              f"{spec.warmup_s:g} s warm-up + {spec.duration_s:g} s or {spec.max_calls:,} calls; "
              f"calls {spec.run_id}-*", flush=True)
        parts, cpu = run_clients(spec, [pid] if pid else [],
                                 lambda poll: Progress(spec.warmup_s + spec.duration_s, poll))
        f = figures_of(parts)
        whole_calls = merge_all(RunRecorder.from_dict(p["calls"]) for p in parts)
        calls_total = f["calls_total"]
        if pid and calls_total:
            f["server_cpu_ms_per_call"] = cpu["server_cpu_s"] / calls_total * 1e3
            f["server_cores_busy"] = cpu["server_cores"]
        if calls_total:
            f["client_cpu_ms_per_call"] = f["client_cpu_s"] / calls_total * 1e3
        wall = cpu["wall_s"]
        f["client_cores_busy"] = f["client_cpu_s"] / f["client_wall_s"] if f["client_wall_s"] else 0.0
        f["machine_cores_busy"] = cpu["machine_cores"]
        if pid:
            f["other_cores_busy"] = max(cpu["machine_cores"] - (cpu["server_cpu_s"] + f["client_cpu_s"]) / wall, 0.0)

        # -- verification
        completed = {d: [c for p in parts for c in p["completed"][d]] for d in ("inbound", "outbound")}
        failed = [c for p in parts for c in p["failed"]]
        leads_said = {d: [c for p in parts for c in p["lead_replies"][d]] for d in ("inbound", "outbound")}
        wrong = sum(p["wrong"] for p in parts)
        examples = [e for p in parts for e in p["wrong_examples"]][:10]
        checks.add("calls completed", bool(completed["inbound"] or completed["outbound"]),
                   f"{len(completed['inbound'])} inbound, {len(completed['outbound'])} outbound")
        checks.add("no event failed", not f["errors"] and not failed,
                   f"{f['errors']}, {len(failed)} calls failed" if failed or f["errors"] else "")
        checks.add(f"every reply as the rules say (outbound charge {charge}, inbound 0.00, inbound lead u2)",
                   wrong == 0, f"{wrong} wrong: {examples}" if wrong else "")
        samples = [s for p in parts for s in p["samples"]]
        try:
            replay_check(address, args.tenant, samples, args.replays, args.seed, 15.0, checks)
        except grpc.RpcError as exc:  # a server that died or refuses: a failed check, not a trace
            checks.add("replay check could run", False, f"{exc.code().name}: {exc.details()}")
        store: Path | str | None = server.store_path if server is not None else args.store
        if pg is not None:
            store = pg.dsn
        if store is not None:
            try:
                store_checks(store, args.tenant, spec.run_id, completed, failed, leads_said, args.credit,
                             charge, args.talk_seconds, checks)
            except Exception as exc:  # sqlite3's or psycopg's: a failed check, not a trace
                checks.add(f"store {store} could be read", False, str(exc))
        if server is not None:
            problems = server.problems()
            checks.add("server logged no warning or error", not problems, f"{problems[:3]}" if problems else "")

        print()
        print(table(f))
        for key, n in sorted(f["errors"].items()):
            print(f"error {key}: {n}")
        print()
        for c in checks.items:
            print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}" + (f"  [{c['detail']}]" if c["detail"] else ""))
        met = f["calls_per_s"] >= args.target_rate
        print(f"verification: {'PASS' if checks.passed else 'FAIL'}")
        print(f"{'PASS' if met else 'FAIL'}: {f['calls_per_s']:,.0f} calls/s with one worker "
              f"(target >= {args.target_rate:,.0f} calls/s)")
        out = {"config": vars(args),
               "spec": {k: v for k, v in asdict(spec).items()}, "server": {"address": address, "pid": pid,
               "command": server.command if server else None, "data_dir": tmp,
               "filesystem": filesystem_type(Path(tmp)) if tmp else None, "setup": setup},
               "machine": {"cpus": os.cpu_count()}, "cpu": cpu, **f,
               "target": {"calls_per_s": args.target_rate, "met": met},
               "verification": {"passed": checks.passed, "checks": checks.items}}
    finally:
        if server is not None:
            code = server.stop()
            if code not in (0, None):
                print(f"note: the server exited with code {code}", file=sys.stderr)
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.folder, ignore_errors=True)
        if tmp is not None:
            if args.keep_data:
                print(f"data kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        save_json(args.json, out)
    if args.png and whole_calls is not None:
        write_png(args.png, [TargetResult("whole calls", whole_calls)],
                  f"Whole calls (RINGING, ANSWERED or pickup, ENDED), {args.lanes} lanes")
        print(f"plot written to {args.png}")
    if not checks.passed:
        return 1
    return 2 if args.require_rate and not out["target"]["met"] else 0


if __name__ == "__main__":
    sys.exit(main())
