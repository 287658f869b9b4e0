"""The load-test harness: a synthetic world, pushed through Admin, driven with a mix, every answer checked.

    python -m loadtest                                   # its own server; open loop 1,000/s for 10 s
    python -m loadtest --closed-loop 64 --procs 2        # maximum throughput
    python -m loadtest --rpc batch --closed-loop 4       # DecideBatch, 1,000 rows per call
    python -m loadtest --rpc stream --closed-loop 64     # pipelined on one Stream per connection
    python -m loadtest --rpc lifecycle --closed-loop 32  # whole calls with pickups, charges and leads checked
    python -m loadtest --compare-bare                    # the same load against a bare grpcio server too
    python -m loadtest --target HOST:PORT --server-pid PID   # a server you started: its tenants removed after

World.  `loadtest.world` builds N tenants from a seed: numbers in five
countries and their time zones with weekly schedules and holidays, some
needing documents (never approved during a run), blacklists and off-hours
blacklists of the sizes asked, users with caller IDs, queue groups, rates.
The harness pushes each tenant (PushSettingsUpload) and credits its opening
balance once (Admin.Credit, reference `loadtest-opening`), so outbound
answers are exact.

A server of yours (`--target`) keeps no trace of a run (loadtest/tenants.py):
the tenants get a prefix unique to the run (`lt-1a2b3c4d-t0`, ...; printed at
the start; `--prefix` chooses it), a name that exists there already stops the
run before anything is pushed (exit 2; `--reuse-tenants` runs on it instead
and leaves it there), and every tenant the run made is removed at the end
(Admin.RemoveTenant: an owner token), on an error, Ctrl-C or SIGTERM too,
unless `--keep`.  The server the harness starts itself (no `--target`) lives
in a temporary directory removed at the end.

Mix.  A plan of `--requests` distinct requests (cycled through during the
run): inbound calls with shares of blacklisted, off-hours-listed,
documents-pending, unknown-number and withheld callers, the rest clean, at
instants spread over 2026 (so off-hours happen); and outbound calls.

Checking.  The expected answer of every planned request is computed by the
pure-Python reference (engine/reference.py) from the world; every reply is
compared with it, field by field, in the client processes.  Wrong answers are
counted, the first examples shown, and the run exits 1 if any answer was
wrong (2 for bad arguments).

Load and report: see `python -m loadtest.grpc_bench --help` for open loop
(no coordinated omission) and closed loop; this harness adds the mix, the
checks, a progress bar, the report table, `--json` and `--png` (latency over
time and the percentile curve).  Every run is bounded by `--duration` and
`--max-requests`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2
from engine import INBOUND_DTYPE, codes
from server.client import open_channel, upload_messages

from . import fleet, report
from . import tenants as run_tenants
from .loadgen import METHODS, LoadSpec, RunResult, run_load
from .loadgen import batch_message as grpc_batch_message
from .plan import MixSpec, Planned, check_reply, describe, plan, request_message, rpc_method, summary
from .process import BareServer, ServeProcess, sigterm_unwinds
from .world import World, WorldSpec, build_world

OPENING_REFERENCE = "loadtest-opening"
BATCH_WIDTH = 16
# batch rows carry the core's verdict and reason codes, which are the proto's enum values (engine/codes.py)
assert [decisions_pb2.Verdict.Value(v) for v in codes.VERDICTS[1:]] == list(range(1, len(codes.VERDICTS)))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the world on the server ----------------------------------------------------------------------

def push_world(address: str, world: World, timeout_s: float = 120.0, tls_ca: bytes | None = None,
               token: str = "") -> dict[str, int]:
    """Push every tenant (unless the server has the very same document in force) and credit its opening
    balance once; returns tenant -> version in force."""
    versions: dict[str, int] = {}
    with open_channel(address, tls_ca, token) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        for tenant in world.tenants:
            document = json.dumps(tenant.document).encode()
            try:
                current = admin.GetSettings(admin_pb2.GetSettingsRequest(tenant=tenant.id), timeout=timeout_s)
                same = json.loads(current.document) == json.loads(document)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                same = False
            if same:
                versions[tenant.id] = current.version
            else:
                versions[tenant.id] = admin.PushSettingsUpload(
                    upload_messages(document, "json", comment="loadtest world"), timeout=timeout_s).version
            admin.Credit(admin_pb2.CreditRequest(tenant=tenant.id, amount=world.spec.opening_balance,
                                                 reference=OPENING_REFERENCE), timeout=timeout_s)
    return versions


def wait_until_right(address: str, plans: Sequence[Planned], versions: dict[str, int],
                     timeout_s: float = 10.0, tls_ca: bytes | None = None, token: str = "") -> None:
    """Workers read balances from the store a few times a second: wait until probes answer as expected."""
    probes = [p for p in plans if p.kind == "outbound"][:5] + [p for p in plans if p.kind == "inbound"][:5]
    deadline = time.monotonic() + timeout_s
    with open_channel(address, tls_ca, token) as channel:
        calls = {m: channel.unary_unary(m) for m in {rpc_method(p) for p in probes}}
        while True:
            wrong = [why for p in probes
                     if (why := check_reply(p, calls[rpc_method(p)](
                         request_message(p), timeout=10), version=versions[p.tenant])) is not None]
            if not wrong or time.monotonic() > deadline:
                return
            time.sleep(0.1)


# -- requests and checks ----------------------------------------------------------------------------

# What the client processes get for each request: the plan and the settings version its answer must echo.
Item = tuple[Planned, int]


def check_item(item: Item, reply: bytes) -> str | None:
    return check_reply(item[0], reply, version=item[1])


def describe_item(item: Item) -> str:
    return describe(item[0])


def describe_batch(batch: BatchItem) -> str:
    return f"batch of {len(batch.items)} inbound for {batch.items[0][0].tenant}"


def batch_message(plans: Sequence[Planned]) -> bytes:
    return grpc_batch_message(plans[0].tenant, [(p.a, p.b, p.at) for p in plans], BATCH_WIDTH).SerializeToString()


@dataclasses.dataclass(frozen=True)
class BatchItem:
    """A DecideBatch call's rows, their settings version, and the expected columns (compared in one go)."""

    items: list[Item]
    expected: np.ndarray  # EXPECTED_DTYPE per row


EXPECTED_DTYPE = np.dtype([("verdict", "u1"), ("reason", "u1"), ("sip", "<u2"), ("target", "<u8")])


def batch_item(items: list[Item]) -> BatchItem:
    expected = np.array([(p.expected.verdict, p.expected.reason, p.expected.sip_status,
                          int(p.expected.target[1:]) if p.expected.target else 0) for p, _ in items],
                        dtype=EXPECTED_DTYPE)
    return BatchItem(items, expected)


def check_batch(batch: BatchItem, reply: bytes) -> str | None:
    """Every row of a DecideBatch reply against its expectation (verdict, reason, SIP status, target),
    compared as columns: a Python loop over 1,000 rows would make the client the bottleneck."""
    items = batch.items
    r = decisions_pb2.BatchReply.FromString(reply)
    if r.count != len(items) or r.row_size != INBOUND_DTYPE.itemsize or len(r.rows) != len(items) * r.row_size:
        return f"{r.count} rows of {r.row_size} bytes for {len(items)} requests"
    if r.version != items[0][1]:
        return f"version {r.version} != expected {items[0][1]}"
    rows = np.frombuffer(r.rows, dtype=INBOUND_DTYPE)
    want = batch.expected
    bad = np.flatnonzero((rows["verdict"] != want["verdict"]) | (rows["reason"] != want["reason"])
                         | (rows["sip"] != want["sip"]) | (rows["target"] != want["target"]))
    if not len(bad):
        return None
    wrong = []
    for i in bad[:3]:
        row, p = rows[i], items[i][0]
        got = (int(row["verdict"]), int(row["reason"]), int(row["sip"]),
               f"+{int(row['target'])}" if row["target"] else "")
        expected = (p.expected.verdict, p.expected.reason, p.expected.sip_status, p.expected.target)
        wrong.append(f"row {i} ({describe(p)}): got {_names(got)}, expected {_names(expected)}")
    return "; ".join(wrong) + (f" (+{len(bad) - 3} more rows)" if len(bad) > 3 else "")


def _names(v: tuple[int, int, int, str]) -> str:
    verdict = decisions_pb2.Verdict.Name(v[0]) if v[0] in decisions_pb2.Verdict.values() else str(v[0])
    reason = decisions_pb2.Reason.Name(v[1]) if v[1] in decisions_pb2.Reason.values() else str(v[1])
    return f"{verdict} {reason} {v[2]}" + (f" {v[3]}" if v[3] else "")


def unary_spec(target: str, plans: Sequence[Planned], versions: dict[str, int] | None) -> dict[str, Any]:
    """LoadSpec fields for unary calls; with `versions` (tenant -> version in force) every reply is checked."""
    methods = sorted({rpc_method(p) for p in plans})
    return {"target": target, "method": methods[0], "methods": methods,
            "method_of": [methods.index(rpc_method(p)) for p in plans],
            "payloads": [request_message(p) for p in plans], "items_per_call": 1,
            "check": check_item if versions else None,
            "expectations": [(p, versions[p.tenant]) for p in plans] if versions else None,
            "describe": describe_item}


def stream_spec(target: str, plans: Sequence[Planned], versions: dict[str, int] | None
                ) -> dict[str, Any]:
    """LoadSpec fields for pipelining over Stream: the same requests inside StreamRequests."""
    fields = unary_spec(target, plans, versions)
    bodies = []
    for p, payload in zip(plans, fields["payloads"], strict=True):
        if p.kind == "inbound":
            body = decisions_pb2.StreamRequest(inbound=decisions_pb2.InboundRequest.FromString(payload))
        else:
            body = decisions_pb2.StreamRequest(outbound=decisions_pb2.OutboundRequest.FromString(payload))
        bodies.append(body.SerializeToString())
    fields.update(method=METHODS["stream"], methods=None, method_of=None, payloads=bodies, stream=True)
    return fields


def batch_spec(target: str, plans: Sequence[Planned], size: int, versions: dict[str, int] | None
               ) -> dict[str, Any]:
    by_tenant: dict[str, list[Item]] = {}
    for p in plans:
        if p.kind == "inbound":
            by_tenant.setdefault(p.tenant, []).append((p, versions[p.tenant] if versions else 1))
    batches = [rows[i:i + size] for rows in by_tenant.values() for i in range(0, len(rows) - size + 1, size)]
    if not batches:
        raise ValueError(f"--requests gives no tenant {size} inbound requests: raise --requests or lower "
                         "--batch-size")
    return {"target": target, "method": METHODS["batch"],
            "payloads": [batch_message([p for p, _ in b]) for b in batches], "items_per_call": size,
            "check": check_batch if versions else None,
            "expectations": [batch_item(b) for b in batches] if versions else None,
            "describe": describe_batch}


# -- the run ----------------------------------------------------------------------------------------

def to_result(name: str, r: RunResult) -> report.TargetResult:
    return report.TargetResult(name=name, recorder=r.recorder, items_per_call=r.items_per_call,
                               client_cpu_s=r.client_load_cpu_s, client_procs=r.procs, server_cpu_s=r.server_cpu_s,
                               wrong=r.wrong, checked=r.checked, wrong_examples=list(r.wrong_examples))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("world")
    w.add_argument("--seed", type=int, default=1, help="the world and the plan follow from it (default 1)")
    w.add_argument("--tenants", type=int, default=4, help="tenants (default 4)")
    w.add_argument("--numbers", type=int, default=50, help="numbers per tenant (default 50)")
    w.add_argument("--blacklist", type=int, default=10_000, help="blacklist entries per tenant (default 10,000)")
    w.add_argument("--offhours-blacklist", type=int, default=1_000, help="off-hours blacklist entries per tenant")
    w.add_argument("--users", type=int, default=20, help="users per tenant (default 20)")
    m = p.add_argument_group("mix (shares of inbound calls; the rest are clean callers)")
    m.add_argument("--inbound", type=float, default=0.8, help="share of inbound calls; the rest outbound (0.8)")
    m.add_argument("--blacklisted", type=float, default=0.10)
    m.add_argument("--offhours-listed", type=float, default=0.05)
    m.add_argument("--documents-pending", type=float, default=0.05)
    m.add_argument("--unknown", type=float, default=0.05, help="called number not one of the tenant's")
    m.add_argument("--anonymous", type=float, default=0.03, help="withheld callers")
    m.add_argument("--requests", type=int, default=20_000, help="distinct planned requests, cycled (20,000)")
    ld = p.add_argument_group("load")
    mode = ld.add_mutually_exclusive_group()
    mode.add_argument("--open-loop", type=float, metavar="RATE", help="calls/s at fixed intended starts "
                                                                       "(default 1,000)")
    mode.add_argument("--closed-loop", type=int, metavar="N", help="N calls always in flight")
    ld.add_argument("--rpc", choices=("unary", "stream", "batch", "lifecycle"), default="unary",
                    help="unary Inbound/Outbound calls (default), the same pipelined on one bidirectional Stream "
                         "per connection, DecideBatch of inbound rows, or whole call lifecycles (RINGING, "
                         "ANSWERED or a colleague's pickup, ENDED; closed loop: loadtest.lifecycle_bench --pickups)")
    ld.add_argument("--batch-size", type=int, default=1000)
    fleet.add_arguments(ld, duration=10.0, procs=1, channels=2, timeout=5.0)
    ld.add_argument("--max-requests", type=int, default=1_000_000, help="measured calls at most")
    ld.add_argument("--max-inflight", type=int, default=10_000, help="open loop: calls outstanding per process")
    t = p.add_argument_group("target")
    t.add_argument("--target", metavar="HOST:PORT", help="a running server (default: start one on 127.0.0.1)")
    t.add_argument("--server-pid", type=int, help="its PID, to measure its CPU per call")
    t.add_argument("--workers", type=int, default=1, help="workers of the server started here (default 1)")
    t.add_argument("--no-push", action="store_true",
                   help="the target has the world already (its tenants named with --prefix, default none: t0, "
                        "t1, ...); nothing is made there, nothing removed")
    t.add_argument("--prefix", metavar="PREFIX",
                   help="with --target: the tenants are PREFIX t0, PREFIX t1, ... (default lt-<8 hex>-, new for "
                        "every run, printed at the start)")
    t.add_argument("--keep", action="store_true",
                   help="with --target: leave the tenants this run made on the server (they are removed at the "
                        "end otherwise, also after an error or Ctrl-C); the commands that remove them are printed")
    t.add_argument("--reuse-tenants", action="store_true",
                   help="with --target: run on tenants of these names that exist there already (pushed over, "
                        "credited once, never removed) instead of refusing to start (exit 2)")
    t.add_argument("--token", default=os.environ.get("CALLGATE_TOKEN", ""),
                   help="bearer token for a server with --auth (default $CALLGATE_TOKEN; pushing the world and "
                        "removing it after needs an owner token, the load a proxy or owner one)")
    t.add_argument("--tls-ca", type=Path, metavar="PEM", help="talk TLS to --target, trusting this CA")
    t.add_argument("--no-check", action="store_true", help="do not compare answers (e.g. a server in another "
                                                             "state); wrong answers are then not counted")
    t.add_argument("--compare-bare", action="store_true",
                   help="run the same load against a bare grpcio server too and print the ratio")
    o = p.add_argument_group("output")
    o.add_argument("--json", type=Path, metavar="FILE", help="write every figure as JSON")
    o.add_argument("--png", type=Path, metavar="FILE", help="write latency over time and the percentile curve")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.open_loop is None and args.closed_loop is None:
        args.open_loop = 1000.0
    for name in ("tenants", "numbers", "users", "requests", "procs", "channels", "batch_size", "workers"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.blacklist < 0 or args.offhours_blacklist < 0:
        raise ValueError("list sizes must be >= 0")
    shares = (args.blacklisted, args.offhours_listed, args.documents_pending, args.unknown, args.anonymous)
    if not 0 <= args.inbound <= 1 or any(not 0 <= s <= 1 for s in shares) or sum(shares) > 1:
        raise ValueError("shares are in [0, 1] and the inbound kinds add up to at most 1")
    if not 0 < args.duration <= 3600 or not 0 <= args.warmup <= 600:
        raise ValueError("--duration must be in (0, 3600] s and --warmup in [0, 600] s")
    if args.open_loop is not None and not 0 < args.open_loop <= 1_000_000:
        raise ValueError("--open-loop rate must be in (0, 1,000,000] calls/s")
    if args.closed_loop is not None and args.closed_loop < args.procs:
        raise ValueError("--closed-loop must be at least --procs")
    if args.tls_ca is not None and not args.tls_ca.is_file():
        raise ValueError(f"--tls-ca {args.tls_ca}: no such file")
    if args.tls_ca is not None and not args.target:
        raise ValueError("--tls-ca is for --target (the server started here is plaintext on loopback)")
    if args.target and not args.target.startswith(("127.", "localhost", "[::1]")):
        say(f"note: {args.target} is not loopback: make sure you may load it")
    if args.prefix is not None:
        run_tenants.check_prefix(args.prefix)
    if not args.target and (args.keep or args.reuse_tenants or args.prefix is not None):
        raise ValueError("--prefix, --keep and --reuse-tenants are for --target (the server started here is removed "
                         "with everything in it)")
    if args.no_push and (args.keep or args.reuse_tenants):
        raise ValueError("--no-push makes no tenant: --keep and --reuse-tenants do not apply")


def load_spec(fields: dict[str, Any], args: argparse.Namespace, tls_ca: bytes | None = None, token: str = ""
              ) -> LoadSpec:
    return LoadSpec(tls_ca=tls_ca, token=token, mode="open" if args.open_loop is not None else "closed",
                    rate=args.open_loop or 0.0,
                    concurrency=args.closed_loop or 0, procs=args.procs, channels=args.channels,
                    warmup_s=args.warmup, duration_s=args.duration, max_requests=args.max_requests,
                    timeout_s=args.timeout, max_inflight=args.max_inflight, **fields)


def tenant_prefix(args: argparse.Namespace) -> str:
    """The run's tenant names: its own prefix on a server of yours, the world's plain names on its own server."""
    if args.prefix is not None:
        return str(args.prefix)
    return run_tenants.run_prefix() if args.target and not args.no_push else ""


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    prefix = tenant_prefix(args)
    world = build_world(WorldSpec(
        seed=args.seed, tenants=args.tenants, numbers_per_tenant=args.numbers, blacklist=args.blacklist,
        offhours_blacklist=args.offhours_blacklist, users_per_tenant=args.users, prefix=prefix))
    mix = MixSpec(inbound=args.inbound, blacklisted=args.blacklisted, offhours_listed=args.offhours_listed,
                  documents_pending=args.documents_pending, unknown_called=args.unknown, anonymous=args.anonymous)
    plans = plan(world, mix, args.requests, args.seed)
    if args.rpc == "batch":
        plans = [p for p in plans if p.kind == "inbound"]
    say(f"world: {len(world.tenants)} tenants, {args.numbers} numbers, {args.blacklist:,}-entry blacklists each; "
        f"{len(plans):,} planned requests with their expected answers in {time.monotonic() - t0:.1f} s")
    say("plan: " + ", ".join(f"{k} {v:,}" for k, v in summary(plans).items()))
    load = f"open loop {args.open_loop:,.0f}/s" if args.open_loop is not None else f"closed loop {args.closed_loop}"
    rpc = {"batch": "DecideBatch", "stream": "Inbound/Outbound on Stream"}.get(args.rpc, "Inbound/Outbound")
    title = f"{rpc} {load}, {len(world.tenants)} tenants"
    tls_ca = args.tls_ca.read_bytes() if args.tls_ca else None
    started: list[Any] = []
    results: list[report.TargetResult] = []
    folder: Path | None = None
    made: list[str] = []  # the tenants this run makes on --target: removed in the finally (unless --keep)
    left: list[str] = []  # ... and those it could not remove
    try:
        if args.target:
            address, pid = args.target, args.server_pid
            if not args.no_push:
                ids = [t.id for t in world.tenants]
                say(f"tenants of this run on {address}: {', '.join(ids)} ("
                    + ("kept at the end: --keep" if args.keep else "removed at the end") + ")")
                made = run_tenants.claim(address, ids, reuse=args.reuse_tenants, keep=args.keep, tls_ca=tls_ca,
                                         token=args.token)
        else:
            folder = Path(tempfile.mkdtemp(prefix="callgate-loadtest-"))
            server = ServeProcess(folder, workers=args.workers, seed=None)
            started.append(server)
            address, pid = server.address, server.pid
            say(f"server: callgate serve --workers {args.workers} at {address} (data in {folder}, removed after)")
        versions = {t.id: 1 for t in world.tenants}
        if not args.no_push:
            t1 = time.monotonic()
            versions = push_world(address, world, tls_ca=tls_ca, token=args.token)
            say(f"pushed {len(versions)} tenants and their opening balances in {time.monotonic() - t1:.1f} s")
            wait_until_right(address, plans, versions, tls_ca=tls_ca, token=args.token)
        targets: list[tuple[str, str, int | None, dict[str, int] | None]] = [
            ("callgate", address, pid, None if args.no_check else versions)]
        if args.compare_bare:
            bare = BareServer("aio", extra=[a for t in world.tenants for a in ("--tenant", t.id)])
            started.append(bare)
            targets.append(("bare", bare.address, bare.pid, None))  # it answers nearly constant replies
        total_s = args.warmup + args.duration
        for name, target, target_pid, check in targets:
            if args.rpc == "batch":
                fields = batch_spec(target, plans, args.batch_size, check)
            elif args.rpc == "stream":
                fields = stream_spec(target, plans, check)
            else:
                fields = unary_spec(target, plans, check)
            say(f"{name}: {load} for {args.duration:g} s (+{args.warmup:g} s warm-up), {args.procs} client "
                f"process(es) x {args.channels} connection(s)")
            # the bare server speaks plaintext and wants no token
            spec = load_spec(fields, args, tls_ca, args.token) if name == "callgate" else load_spec(fields, args)
            result = run_load(spec, target_pid,
                              progress=lambda poll: report.Progress(total_s, poll))
            results.append(to_result(name, result))
    finally:
        for s in reversed(started):
            s.stop()
        if folder is not None:  # the store of the server this run started: nobody else will use it
            shutil.rmtree(folder, ignore_errors=True)
        if made and args.keep:
            run_tenants.kept(address, made)
        elif made:
            left = run_tenants.remove(address, made, tls_ca=tls_ca, token=args.token)
    print(report.table(results))
    for line in report.verdict_lines(results):
        print(line)
    meta = {"argv": sys.argv[1:], "title": title, "world": dataclasses.asdict(world.spec),
            "mix": dataclasses.asdict(mix), "plan": summary(plans)}
    if args.json:
        report.write_json(args.json, results, meta)
        say(f"figures written to {args.json}")
    if args.png:
        report.write_png(args.png, results, title)
        say(f"plot written to {args.png}")
    if left:
        return 2  # the run's figures stand, but it left tenants behind (said above, with how to remove them)
    return 1 if report.failed(results) else 0


def lifecycle_argv(args: argparse.Namespace, tenant: str = "") -> list[str]:
    """Whole call lifecycles are lanes of dependent events: loadtest.lifecycle_bench drives and checks them
    (every reply, replays, and the store's books when it starts the server itself)."""
    if args.open_loop is not None:
        raise ValueError("--rpc lifecycle is closed loop: give --closed-loop LANES")
    explicit_token = bool(args.token) and args.token != os.environ.get("CALLGATE_TOKEN", "")
    unsupported = [flag for flag, given in (("--token", explicit_token), ("--tls-ca", args.tls_ca),
                                            ("--no-push", args.no_push), ("--no-check", args.no_check),
                                            ("--compare-bare", args.compare_bare), ("--workers", args.workers != 1))
                   if given]
    if unsupported:  # said, rather than dropped without a word
        raise ValueError(f"--rpc lifecycle does not take {', '.join(unsupported)} (it runs on plaintext "
                         "loopback and pushes its own tenant)")
    out = ["--pickups", "--lanes", str(args.closed_loop or 32), "--procs", str(args.procs), "--channels",
           str(args.channels), "--duration", str(args.duration), "--warmup", str(args.warmup), "--calls",
           str(args.max_requests), "--timeout", str(args.timeout), "--seed", str(args.seed)]
    if args.target:
        out += ["--target", args.target, "--push", "--tenant", tenant] + (
            ["--server-pid", str(args.server_pid)] if args.server_pid else [])
    if args.json:
        out += ["--json", str(args.json)]
    if args.png:
        out += ["--png", str(args.png)]
    return out


def run_lifecycle(args: argparse.Namespace, forwarded: list[str], tenant: str) -> int:
    """loadtest.lifecycle_bench with the harness's rules for a server of yours: its tenant named for the run,
    refused if it exists (unless --reuse-tenants), removed at the end (unless --keep)."""
    from . import lifecycle_bench

    if not args.target:
        return lifecycle_bench.main(forwarded)
    say(f"tenant of this run on {args.target}: {tenant} ("
        + ("kept at the end: --keep" if args.keep else "removed at the end") + ")")
    made = run_tenants.claim(args.target, [tenant], reuse=args.reuse_tenants, keep=args.keep)
    try:
        code = lifecycle_bench.main(forwarded)
    finally:
        if made and args.keep:
            run_tenants.kept(args.target, made)
        elif made and run_tenants.remove(args.target, made):
            code = 2
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with sigterm_unwinds():  # SIGTERM unwinds like Ctrl-C: every finally stops, removes and deletes what it made
        try:
            if args.rpc == "lifecycle":
                try:
                    if args.prefix is not None:
                        run_tenants.check_prefix(args.prefix)
                    if not args.target and (args.keep or args.reuse_tenants or args.prefix is not None):
                        raise ValueError("--prefix, --keep and --reuse-tenants are for --target")
                    tenant = f"{tenant_prefix(args)}lifecycle" if args.target else ""
                    forwarded = lifecycle_argv(args, tenant)
                except ValueError as exc:
                    parser.error(str(exc))
                return run_lifecycle(args, forwarded, tenant)
            try:
                check_args(args)
            except ValueError as exc:
                parser.error(str(exc))
            return run(args)
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        except run_tenants.Refused as exc:
            say(f"loadtest: error: {exc}")
            return 2
        except grpc.RpcError as exc:
            hint = ""
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "belongs to another tenant" in exc.details():
                hint = (" (a world an earlier run kept or reused holds the numbers of this --seed: remove it, or "
                        "give another --seed)")
            say(f"loadtest: error: {exc.code().name}: {exc.details()}{hint}")
            return 2


if __name__ == "__main__":
    sys.exit(main())
