"""callgate for Kamailio: a KEMI routing script for app_python3 (Kamailio 5.6, Python 3.11).

Who is calling is decided by where the request comes from, never by how its
From user is spelled:

- a request from a trusted source (CALLGATE_TRUSTED: the PBXes and
  registrars that authenticate the tenant's users) is a call by a user of a
  tenant: the tenant is the one that source is mapped to, or the one the
  source asserts in X-Callgate-Tenant (a multi-tenant PBX, after it
  authenticated the subscriber); the tenant's pickup code dialled (R-URI user
  such as *8) asks Pickup -> INTERCEPT relays with X-Callgate-Intercept:
  <call id> for the PBX to bridge, else 404; anything else asks Outbound ->
  ALLOW relays with P-Asserted-Identity set to the chosen caller ID and the
  dialog's timer set to the longest duration the credit pays for, DENY -> the
  SIP status.
- a request from anywhere else is an inbound call to one of the tenants'
  numbers (the failover table names the tenant of each): Inbound -> REJECT
  answers the suggested SIP status with a Reason header; ROUTE relays to
  CALLGATE_ROUTE_URI (the PBX that rings the queue group, told the group in
  X-Callgate-Group); FORWARD relays there with the R-URI user set to the
  target (X-Callgate-Line says which line bills the leg); VOICEMAIL relays
  with the R-URI user `voicemail`.  A request from an untrusted source for a
  number that no tenant holds is refused with 403 before callgate is asked:
  nobody outside calls out on a tenant's bill.  A withheld caller
  (anonymous, Restricted, unknown, ...) is the engine's to recognise: this
  script never reads the caller.

Every call's life reaches callgate exactly once, through an event spool:
RINGING on the first of 180/183/200 (a 200 without a 180 sends both),
ANSWERED on the 200, and ENDED for every final outcome with the outcome
recorded: the dialog's end (BYE, or the timer that caps an outbound call:
`answered`), or a negative final reply (486/600/603 `busy`, 408/480
`no_answer`, 487 after a CANCEL `cancelled`, anything else `failed`).  The
SIP worker only appends to its own journal of the spool (one write();
CALLGATE_SPOOL.journal/, callgate_spool.py) the call's record as it holds
it and what the reply adds (`spool_raw`: no JSON read, no message built on
the SIP path), except for an outbound call's RINGING (below); a timer process
(rtimer) reads the journals every CALLGATE_SEND_EVERY_MS (500 ms),
making the events of those records (`events_of`), in the order they were
written, and sends them in CallEvents calls of up to 500 events (a round
costs ~1 ms of CPU however few it carries); only what callgate did not
answer (and the round's later calls, behind a call not answered) goes into
the spool's SQLite file (CALLGATE_SPOOL), sent first from
then on, with backoff while callgate is unreachable or slow.  An event
callgate refuses for good (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION)
is logged and kept as refused; one it fails with INTERNAL (a fault it could
not name) is tried again, 1 s, 2 s, ... a minute apart, for about 9 minutes
(RETRY_TRIES), its call's later events held behind it, then refused; the
others wait and are sent again (callgate answers a replay with its recorded
reply, so a repeat is harmless).  The spool survives a Kamailio restart, holds at most
CALLGATE_SPOOL_MAX pending events (past that, new events are refused with an
ERROR line), and its size and age are logged every 10 s while events wait
and written for node_exporter's textfile collector
(`callgate_spool.prom` beside the spool).  An outbound call's RINGING is also
sent at once (within the deadline) for its credit hold: the dialog's timer
is lowered to what the hold pays for.

Where Kamailio loaded the callgate_events module (kamailio.cfg, -A
WITH_CALLGATE_EVENTS; integrations/kamailio/callgate_events), an inbound or
forwarded call's replies make its RINGING, ANSWERED and unanswered ENDED in
C (KSR.callgate_events.track), and any call's dialog's end its ENDED
(follow), appended to the worker's journal in the layout `spool_raw`
writes, with no Python reply, failure or dialog route (`under_dialog`); of
an outbound call's replies, only the RINGING's RPC for the hold and the
talk's timer stay here (and, when its answer would wait for a full disk,
the ANSWERED's RPC, then the ENDED's from the dialog's end route:
`answer_past_the_disk`); and whatever the module says it cannot follow.
An ENDED the spool refuses (a full disk) goes to callgate over RPC.
What the disk refuses (a full disk) the module keeps with the call
and writes at its own instant once the disk takes it, for at most
CALLGATE_KEPT_MAX calls (10000, read by the module); what this script
writes itself is lost when the disk refuses it, logged.

Failure policy (CALLGATE_FAILURE), for callgate unreachable or later than
the deadline (CALLGATE_DEADLINE_MS, default 50): `closed` (default) answers
503; `open` forwards calls on a tenant's backup line to its backup number,
from the failover table (CALLGATE_FAILOVER, written by `callgate export
failover`), so that rule 3 of the spec holds while callgate itself is down
(the forwarded leg's events are spooled and billed when callgate returns);
other calls get 503.  The failover table is read again whenever its file
changes (checked at most once a second): refresh it from cron, no restart.
The gRPC channel reconnects within a second of callgate's return (backoff
100 ms to 1 s) and a decision waits for it within the deadline.

Local decisions (CALLGATE_REPLICA_DIR, the directory `callgate replica`
keeps on this host): an inbound call is decided in the SIP worker from the
replica's files (engine.replica.LocalDecisions: every worker maps the same
files read-only), with no RPC; the tenant of the called number comes from
the replica too (the failover table when the replica does not list it).
When the replica has no usable snapshot of the tenant the call is decided
over the RPC as without it; when the replica is older than its
--max-staleness, the tenant's stale policy decides (decide anyway, 503, or
the backup number).  Outbound, Pickup and the call events stay RPCs (the
balance, the holds and the ringing registry live in the store).  With
callgate down, inbound calls keep being decided on the last snapshot.
Such a SIP worker holds no gRPC channel until its first RPC (an idle
channel's threads cost its process CPU every second).
CALLGATE_REPLICA_COPY=1 makes each worker read the files into its own
memory instead of mapping them (a private copy per worker): only for the
SIP benchmark's memory comparison, never faster.

Timings (CALLGATE_TIMINGS=PATH, off by default): each SIP worker times
every inbound decision (time.perf_counter_ns around the local decision, and
its CPU time (time.thread_time_ns), or
around the Inbound RPC) and appends it to PATH.<pid>, one line each, "local
NS CPU_NS" or "rpc NS" (and "local_miss NS CPU_NS" again for a local decision
its compiled path handed to the Python one: a file looked at, the page stale;
and "decoy NS" for a CRC of 10 KB timed right after it, work of the same
length: the worker's own tail at those moments), and the CPU time of every entry point Kamailio calls
("route:request_route NS", "route:onreply_invite NS", ...: where the
process's Python time goes); the lines are buffered and written every 100 decisions
and at the first decision a second or more after the last write (no
thread).  Unset, it costs one test of a module constant per decision.

Environment: CALLGATE_TARGET (127.0.0.1:50051), CALLGATE_TRUSTED (sources of
calls by users: `ADDRESS[/BITS][=TENANT]`, comma-separated; without
`=TENANT` the source must send X-Callgate-Tenant), CALLGATE_ROUTE_URI
(sip:127.0.0.1:5080), CALLGATE_SPOOL (the spool file,
/var/spool/callgate/events.sqlite), CALLGATE_SPOOL_MAX (100000), CALLGATE_SEND_EVERY_MS
(500: how often the sender sends the new events; 0, every 100 ms tick),
CALLGATE_GUARD_S (1: an outbound call's timer is set this many seconds
short of the talk its credit pays for),
CALLGATE_TLS_CA (the CA's PEM: talk TLS to callgate), CALLGATE_TOKEN (a
`proxy` token for a server with --auth), CALLGATE_PYTHONPATH (folders with
grpcio and the `callgate` package, ':'-separated, put in front of
sys.path), CALLGATE_BYPASS=1 (relay everything without asking: the baseline
of the SIP benchmark; CALLGATE_BYPASS=events relays without asking too, but
records each call to a number of the failover table as a decided call's
events: the benchmark's second baseline, what the events cost apart from
the decision), CALLGATE_REPLICA_DIR, CALLGATE_REPLICA_COPY and
CALLGATE_TIMINGS (above).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import importlib
import ipaddress
import json
import os
import resource
import sqlite3
import sys
import time
import zlib
from collections.abc import Sequence
from typing import Any

import KSR  # provided by Kamailio's app_python3 (no stubs: mypy ignores missing imports)

# A SIP worker stays one thread.  numpy (the engine's, imported below for the workers deciding from the replica)
# starts OpenBLAS's thread pool at its import, a thread for every core but one, in every worker; the engine does no
# linear algebra, so a worker gains nothing from it but a thread that could spin, its stack, and glibc's threaded
# paths for the worker's every syscall and malloc.  (Its CPU was not measurable: side by side, the local proxy with
# the pool cost 0.995 of one without, within the rounds' 2%.)  Set before any import of numpy in any Kamailio
# process, whatever Kamailio's environment says.  (Kamailio's environment from then on: a program it starts, with
# the exec module say, inherits both; set them there again for one that wants a thread pool.)
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

for _folder in reversed([p for p in os.environ.get("CALLGATE_PYTHONPATH", "").split(":") if p]):
    sys.path.insert(0, _folder)
# the spool module sits beside this script (app_python3 puts the script's folder on sys.path; this makes sure)
if "__file__" in globals():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# `kamcmd app_python3.reload` runs this script again in a process that already imported its spool module: that
# module is read again too, or the new script would call an old Spool (and fail at every event)
if "callgate_spool" in sys.modules:
    importlib.reload(sys.modules["callgate_spool"])
from callgate_spool import PENDING, REFUSED, RETRY, RETRY_TRIES, SENT, Spool, journal_reader  # noqa: E402  (after the path set-up above)

TARGET = os.environ.get("CALLGATE_TARGET", "127.0.0.1:50051")
DEADLINE_S = int(os.environ.get("CALLGATE_DEADLINE_MS", "50")) / 1000
FIRST_CALL_EXTRA_S = 0.2   # more for a channel's first call when it was not connected ahead (`call_timeout`)
FAILURE = os.environ.get("CALLGATE_FAILURE", "closed")
ROUTE_URI = os.environ.get("CALLGATE_ROUTE_URI", "sip:127.0.0.1:5080")
FAILOVER_FILE = os.environ.get("CALLGATE_FAILOVER", "")
SPOOL_FILE = os.environ.get("CALLGATE_SPOOL") or "/var/spool/callgate/events.sqlite"   # (empty: the default,
#                                                    as Kamailio's callgate_events module reads it)
REPLICA_DIR = os.environ.get("CALLGATE_REPLICA_DIR", "")   # `callgate replica --dir`: decide inbound calls here
REPLICA_COPY = os.environ.get("CALLGATE_REPLICA_COPY", "") == "1"  # a private copy per worker (memory benchmark)
TIMINGS = os.environ.get("CALLGATE_TIMINGS", "")    # PATH: every inbound decision's ns appended to PATH.<pid>
SPOOL_MAX = int(os.environ.get("CALLGATE_SPOOL_MAX", "100000"))

# The engine (numpy, the compiled core, phonenumbers' tables: ~0.2 s of CPU to import) imported once here, in
# Kamailio's main process as it loads this script, before it forks: every SIP worker that decides from the replica
# inherits it.  Imported by each worker at its start instead, 8 workers on 2 cores took seconds before they read
# their first INVITE, which waited, was sent again and overflowed the socket's buffer: a Kamailio started into 200
# calls/s failed up to 56 of its first 2,000 calls.  Its pages are then shared by the workers until one writes to
# them (Python's reference counts and collections do, page by page).  (No thread, no logging, no grpc in it:
# nothing that must not cross Kamailio's fork.  If it fails here, each worker imports it again at its start.)
if REPLICA_DIR:
    try:
        import engine.replica  # noqa: F401  (for the workers: see above)
    except Exception as exc:   # (never fatal here: the workers' own import reports it)
        KSR.err(f"callgate: the engine could not be imported ahead of the workers ({exc!r:.200}): each worker "
                "imports it itself\n")


def send_every_s(text: str) -> float:
    """CALLGATE_SEND_EVERY_MS: how often the sender sends what the journals gained, in whole milliseconds from 0 to
    10,000 (0 and anything under kamailio.cfg's rtimer interval of 100 ms: every tick).  A round costs the
    sender ~1 ms of CPU whatever it carries (one gRPC call and the journals read, cold after the sleep): at
    200 calls/s, rounds every 500 ms instead of every tick cost Kamailio ~50 us a call less, and each event
    reaches callgate up to that much later.  ValueError, saying what is wanted, for anything else (Kamailio then
    stops at its start)."""
    if not (text.isascii() and text.isdigit() and int(text) <= 10_000):
        raise ValueError(f"CALLGATE_SEND_EVERY_MS must be a whole number of milliseconds from 0 to 10000 (how "
                         f"often the call events go to callgate), not {text[:40]!r}")
    return int(text) / 1000


SEND_EVERY_S = send_every_s(os.environ.get("CALLGATE_SEND_EVERY_MS", "500"))
TLS_CA = os.environ.get("CALLGATE_TLS_CA", "")      # PEM of the CA that signed callgate's certificate: TLS
TOKEN = os.environ.get("CALLGATE_TOKEN", "")        # a `proxy` token for a server with --auth
METADATA = (("authorization", f"Bearer {TOKEN}"),) if TOKEN else None
# a plain relay that never asks callgate: the baseline for measuring what callgate adds to the proxy
BYPASS_EVENTS = os.environ.get("CALLGATE_BYPASS", "") == "events"   # ... that records the calls' events
BYPASS = BYPASS_EVENTS or os.environ.get("CALLGATE_BYPASS", "") == "1"
PHRASES = {403: "Forbidden", 404: "Not Found", 433: "Anonymity Disallowed", 480: "Temporarily Unavailable",
           402: "Payment Required", 503: "Service Unavailable", 603: "Decline"}
# a reconnect within a second of callgate's return (grpcio's default backoff grows to two minutes)
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.enable_retries", 0)]
# statuses after which sending the same event again can never succeed
FINAL = ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNIMPLEMENTED")
# a fault callgate could not name (a bug, a store failure it reports so): the event is tried again, its call's later
# events held behind it, for RETRY_TRIES tries over about 9 minutes (a fix deployed within callgate's ring timeout of
# 10 minutes bills the call), then refused; refused at once, its ANSWERED refused, the call's ENDED went next: the
# call ended unanswered, unbilled
RETRIED = ("INTERNAL",)
SENDER_BATCH = 500
# how long callgate may take to answer a round's CallEvents calls, together (a slow callgate holds the sender this
# long a round, not a call); a call is made only with at least SEND_LEAST_S of it left and, after the round's
# first, as long as the one before took (one likely to fail its deadline, and be applied by callgate all the same,
# would only turn into replays)
SEND_DEADLINE_S = 10.0
SEND_LEAST_S = 1.0
REFUSAL_LOG_S = 300.0   # a replica file refused for the same reason is logged again after this (per worker)
IN_ORDER_RETRY_S = 60.0   # a callgate without CallEventsInOrder is asked again after this (an upgrade since)
CALL_ID_MAX = 256   # the longest call id callgate takes (characters; callgate_events.c CG_CALL_ID_MAX, in bytes)
USER_MAX = 256   # the longest user name callgate takes (characters; callgate_events.c CG_USER_MAX_CHARS)
# The dialog module's timers tick once a second and events carry whole seconds: a call's timer set this much short
# of the talk its credit pays for keeps the talk billed (ENDED - ANSWERED, in whole seconds) within it.
GUARD_S = int(os.environ.get("CALLGATE_GUARD_S", "1"))
CALL_MAX_S = 86_400   # the longest an inbound call or forwarded leg is kept as a dialog (callgate's --call-max-s)
DECOY = bytes(range(256)) * 40   # CALLGATE_TIMINGS: 10 KB whose CRC takes about as long as a local decision
PROC_MAIN, PROC_INIT = 0, -127   # Kamailio's process ranks for its main process
RAW_TAG = "R1\0"                   # a raw record of the journals (spool_raw): this layout's version
RAW_TAG_BYTES = RAW_TAG.encode()
OUTBOUND_MARK = '"dir":"outbound"'  # in a record `remember` wrote, only for an outbound call
# the entry points Kamailio calls (kamailio.cfg), timed with CALLGATE_TIMINGS
ROUTES = ("ksr_request_route", "ksr_onreply_invite", "ksr_failure_invite", "ksr_dialog_event",
          "ksr_callgate_sender")


@functools.lru_cache(maxsize=4096)   # (made once a length, in the one process that sends: ~0.6 us an event before)
def _head(n: int) -> bytes:
    """What comes before an event of `n` bytes as the repeated field 1 of a CallEventBatch carries it: its tag, its
    length (a varint)."""
    head = bytearray(b"\n")
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head)


def parse_trusted(text: str) -> list[tuple[Any, str]]:
    """CALLGATE_TRUSTED as (network, tenant or '') pairs; a bad entry stops Kamailio at start, saying which."""
    out = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        address, _, tenant = entry.partition("=")
        try:
            out.append((ipaddress.ip_network(address.strip(), strict=False), tenant.strip()))
        except ValueError as exc:
            raise SystemExit(f"callgate: CALLGATE_TRUSTED entry {entry!r}: {exc}") from None
    return out


TRUSTED = parse_trusted(os.environ.get("CALLGATE_TRUSTED", ""))
# Kamailio's callgate_events module (kamailio.cfg loads it with -A WITH_CALLGATE_EVENTS): a relayed call's replies
# make its events in C, with no Python reply route (None: this script's routes make them)
EVENTS_MODULE = getattr(KSR, "callgate_events", None)
# its relayed() (callgate_events.c: the flags of what it did), in a module built from these sources or later
RELAYED_IN_MODULE = EVENTS_MODULE is not None and hasattr(EVENTS_MODULE, "relayed")
RELAYED_ROUTE, RELAYED_TRACKED, RELAYED_FOLLOWED = 1, 2, 4
RELAYED_ALL = RELAYED_ROUTE | RELAYED_TRACKED | RELAYED_FOLLOWED
RELAYED_FIELDS = ("tenant", "dir", "caller", "called", "line", "user")   # its arguments (the call id: its own)


def outcome_of(status: int) -> str:
    """How a call ended, from its final negative reply."""
    if status in (486, 600, 603):
        return "busy"
    if status in (408, 480):
        return "no_answer"
    if status == 487:
        return "cancelled"
    return "failed"


_quoted = json.encoder.encode_basestring_ascii   # (C) a str as json.dumps writes it, ensure_ascii


SOURCES_KEPT = 4096   # the sources a worker keeps trusted_tenant's finding for


def source_tenant(source: str) -> str | None:
    """The tenant CALLGATE_TRUSTED names for a source address ("" for one that must say), None for a source it does
    not trust (or no address)."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return None
    for network, tenant in TRUSTED:
        if address in network:
            return tenant
    return None


def talk_timer(paid_s: int) -> int:
    """The dialog timer for a call whose credit pays for `paid_s` seconds of talk: GUARD_S short, at least 1."""
    return max(1, int(paid_s) - GUARD_S)


class Timings:
    """Inbound decisions' durations of this process, buffered, appended to TIMINGS.<pid> ("local NS" or
    "rpc NS", one a line) every 100 decisions and at the first one a second or more after the last write."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: list[str] = []
        self.written = 0.0   # the first decision is written at once (its file says the worker decided)
        self.collections = 0   # of Python's garbage collector in this process, counted with CALLGATE_TIMINGS
        if path:
            gc.callbacks.append(self._collected)

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.collections += 1

    def add(self, kind: str, ns: int, cpu_ns: int = -1) -> None:
        self.lines.append(f"{kind} {ns} {cpu_ns}\n" if cpu_ns >= 0 else f"{kind} {ns}\n")
        now = time.monotonic()
        if len(self.lines) >= 100 or now - self.written >= 1.0:
            self.written = now
            lines, self.lines = self.lines, []
            try:
                with open(f"{self.path}.{os.getpid()}", "a", encoding="ascii") as handle:
                    handle.write("".join(lines))
            except OSError as exc:
                KSR.err(f"callgate: timings not written to {self.path}.{os.getpid()}: {exc}\n")


def mod_init() -> Any:
    return kamailio()


class kamailio:
    def __init__(self) -> None:
        self.failover: dict[str, Any] = {"numbers": {}, "tenants": {}}
        self.failover_seen: tuple[float, int] = (0.0, 0)
        self.failover_checked = 0.0
        self.refresh_failover()
        self.spool = Spool(SPOOL_FILE, SPOOL_MAX)
        self._stub: Any = None
        self._ca: bytes | None = None   # CALLGATE_TLS_CA's certificates, read at the first channel
        self.fresh = False   # the channel was made and its first call not made yet (`call_timeout`)
        self._channel: Any = None
        self._pid = 0
        self.backoff_until = 0.0
        self.failures = 0
        self.last_stats = 0.0
        self.backlog = True      # events may wait in the spool's table (the sender looks, and knows from then on)
        self.next_round = 0.0    # when the sender's next round is due (SEND_EVERY_S after the last one)
        self.in_order = True     # callgate has CallEventsInOrder (until it answers UNIMPLEMENTED)
        self.in_order_retry = 0.0
        self.retried = 0         # events callgate failed with a status of RETRIED (logged at the 1st, every 100th)
        self.round_took = 0.0    # how long the round's last call to callgate took (`time_left`)
        self._local: Any = None
        # source address -> its tenant by CALLGATE_TRUSTED (source_tenant): the address parsed and matched once, not
        # at every INVITE (~60 us of a SIP worker's with its cold caches)
        self.sources: dict[str, str | None] = {}
        # per tenant whose replica file was refused: the reason logged, and when (`refused_file`)
        self.refusals_logged: dict[str, tuple[str, float]] = {}
        self.claimed: bool | None = None   # whether this process is the spool's sender (`sending`), as last found
        self.claim_error = ""              # ... the error that kept it from telling, as last logged
        self.local_decisions = 0
        self.timings = Timings(TIMINGS)  # used only with CALLGATE_TIMINGS
        if TIMINGS:  # where this process's Python time goes: each entry point's CPU time, "route:NAME NS"
            for name in ROUTES:
                setattr(self, name, self._timed(name, getattr(self, name)))

    def _timed(self, name: str, route: Any) -> Any:
        kind = "route:" + name.removeprefix("ksr_")

        def timed(*args: Any) -> Any:
            c0 = time.thread_time_ns()
            try:
                return route(*args)
            finally:
                self.timings.add(kind, time.thread_time_ns() - c0)

        return timed

    def child_init(self, rank: int) -> int:
        # Kamailio calls this in its main process too (PROC_INIT, before it forks the others): nothing there.
        # In a worker, get ready now (grpcio's import and the spool take tens of ms the first time: not on the
        # first call's reply, where a slow 180 could be overtaken by its 200)
        if rank not in (PROC_INIT, PROC_MAIN):
            # a SIP worker's channel starts connecting now, not within its first call's deadline (a timer
            # process's, the sender's: at its first use).  The SIP benchmark's relay is Kamailio without
            # callgate: no channel.
            if not BYPASS and rank > 0:
                self.decisions  # noqa: B018 - the channel and its imports
                if REPLICA_DIR:
                    # a worker that decides inbound calls from the replica may never need an RPC: its channel
                    # is made again at its first (an outbound call, a pickup, a tenant the replica lacks: ~0.5 ms,
                    # and the connection, given FIRST_CALL_EXTRA_S more than the deadline).  An idle grpcio
                    # channel costs its process ~0.5 ms of CPU a second (its threads; they end with it): 20-30 us
                    # a call of 8 workers at 200 calls/s.  Made and closed here, gRPC's own start (~5 ms) is not
                    # on that first call, and the CA file is read now (`_ca`), never in a call
                    self.drop_channel()
                else:
                    self.connect_now()
            local = self.local  # the engine's import (numpy, the core) before the first call
            if local is not None and rank > 0:   # a SIP worker (not a timer's or RPC's process): every tenant's
                # file mapped and checked now, no call waits for it; a descriptor each (Python < 3.13): a quarter
                # of the process's limit at most, the rest mapped at their first call
                limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                limit = 4096 if limit == resource.RLIM_INFINITY else limit // 4
                try:
                    KSR.info(f"callgate: {local.prepare(limit)} tenant(s) of the replica mapped in this worker\n")
                except Exception as exc:  # never fatal: the first call of a tenant maps it instead
                    KSR.err(f"callgate: the replica in {REPLICA_DIR} could not be read ahead: {exc!r:.200}\n")
            try:
                self.spool.conn()
            except (sqlite3.Error, OSError) as exc:
                KSR.err(f"callgate: the event spool {SPOOL_FILE} cannot be opened: {exc}\n")
        return 0

    @property
    def decisions(self) -> Any:
        """This process's gRPC stub, made at its first use: a channel must not cross a fork, and grpcio (with
        `logging`) must not be imported before Kamailio forks (Kamailio also calls child_init in its main
        process, and Python's at-fork handlers then print a traceback in every child)."""
        if self._stub is None or self._pid != os.getpid():
            import grpc

            from callgate.v1 import decisions_pb2_grpc

            if TLS_CA:
                if self._ca is None:   # (read once: a channel made again later never depends on the file)
                    with open(TLS_CA, "rb") as handle:
                        self._ca = handle.read()
                creds = grpc.ssl_channel_credentials(root_certificates=self._ca)
                channel = grpc.secure_channel(TARGET, creds, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.insecure_channel(TARGET, options=CHANNEL_OPTIONS)
            # (no channel.subscribe: grpcio's thread polling the channel's state cost every Kamailio process
            # ~5 ms of CPU a second, idle or not; a call is failed at once while the channel is down anyway)
            self._stub, self._pid, self._channel = decisions_pb2_grpc.DecisionsStub(channel), os.getpid(), channel
            self.fresh = True
        return self._stub

    def call_timeout(self) -> float:
        """The deadline of a call from a SIP route: DEADLINE_S, and FIRST_CALL_EXTRA_S more for the first call on
        a channel made without connecting ahead (a worker deciding from the replica: its connection, a TLS
        handshake to a callgate across the network, is made within that call)."""
        if self.fresh:
            self.fresh = False
            return DEADLINE_S + FIRST_CALL_EXTRA_S
        return DEADLINE_S

    def rpc(self, method: str, request: Any) -> Any:
        """One call from a SIP route (or a timer's) within `call_timeout`: its reply; None (logged) when no
        channel can be made, which fails the call as with callgate away, never the route; grpc.RpcError as
        grpcio raises it."""
        try:
            stub = self.decisions
        except Exception as exc:
            KSR.err(f"callgate: no channel to callgate for {method}: {exc!r:.200}\n")
            return None
        # (not wait_for_ready: a channel that is connecting, callgate just back, is waited for within the
        # deadline; one that failed to connect fails the call at once, not holding a SIP worker for the deadline)
        return getattr(stub, method)(request, timeout=self.call_timeout(), metadata=METADATA)

    def drop_channel(self) -> None:
        """Close this process's channel (its grpcio threads end with it); the next RPC makes another."""
        if self._channel is not None:
            self._channel.close()
        self._stub = self._channel = None

    def connect_now(self) -> None:
        """Have the channel connect now, without waiting.  grpcio's one public way, channel_ready_future (or
        subscribe), leaves a thread polling the channel's state (~5 ms of CPU a second; in a Kamailio worker it
        went on after the connection was made); the core's own one-shot call does it, where this grpcio has it
        (else the first call connects)."""
        check = getattr(getattr(self._channel, "_channel", None), "check_connectivity_state", None)
        if check is not None:
            try:
                check(True)
                self.fresh = False   # (connecting from now: its first call is given the deadline only)
            except Exception as exc:   # (a grpcio whose inside changed: the first call connects)
                KSR.info(f"callgate: the channel connects at its first call ({exc!r:.100})\n")

    @property
    def local(self) -> Any:
        """This process's view of the replica (None without CALLGATE_REPLICA_DIR), made at its first use."""
        if REPLICA_DIR and self._local is None:
            from engine.replica import LocalDecisions

            self._local = LocalDecisions(REPLICA_DIR, copy=REPLICA_COPY)
            KSR.info(f"callgate: inbound calls decided from the replica in {REPLICA_DIR}"
                     f"{' (a private copy per worker)' if REPLICA_COPY else ''}\n")
        return self._local

    # imported at the first use in a worker (never before Kamailio forks), then an attribute of the instance: an
    # import statement at every use cost ~9 us with a SIP worker's cold caches, several times a call
    @functools.cached_property
    def default_timer(self) -> int:
        """The dialog timer of a call that sets none: kamailio.cfg's CG_DIALOG_TIMEOUT (its dialog module's
        default_timeout), read at the first call; 0 for a configuration without it (every call sets its own)."""
        value = KSR.pv.get("$defn(CG_DIALOG_TIMEOUT)")
        return value if type(value) is int else 0

    @functools.cached_property
    def grpc(self) -> Any:
        import grpc

        return grpc

    @functools.cached_property
    def pb(self) -> Any:
        from callgate.v1 import decisions_pb2

        return decisions_pb2

    # -- tables ------------------------------------------------------------------------------

    def refresh_failover(self) -> None:
        """Read the failover table again when its file changed (at most one stat a second per process)."""
        if not FAILOVER_FILE:
            return
        now = time.monotonic()
        if now - self.failover_checked < 1.0:
            return
        self.failover_checked = now
        try:
            stat = os.stat(FAILOVER_FILE)
        except OSError as exc:
            if self.failover_seen != (0.0, -1):
                KSR.err(f"callgate: failover table {FAILOVER_FILE} unreadable: {exc.strerror}\n")
                self.failover_seen = (0.0, -1)
            return
        seen = (stat.st_mtime, stat.st_size)
        if seen == self.failover_seen:
            return
        try:
            with open(FAILOVER_FILE, encoding="utf-8") as handle:
                table = json.load(handle)
            if not isinstance(table.get("numbers"), dict) or not isinstance(table.get("tenants"), dict):
                raise ValueError("no 'numbers' and 'tenants' objects")
        except (OSError, ValueError, AttributeError) as exc:
            KSR.err(f"callgate: failover table {FAILOVER_FILE} unreadable, the last one read stays: {exc}\n")
            self.failover_seen = seen
            return
        self.failover, self.failover_seen = table, seen
        KSR.info(f"callgate: failover table read: {len(table['numbers'])} numbers\n")

    def trusted_tenant(self) -> str | None:
        """The tenant of a request from a trusted source ('' when the source must say), None if untrusted."""
        source = KSR.pv.get("$si") or ""
        if source in self.sources:
            tenant = self.sources[source]
        else:
            tenant = self.sources[source] = source_tenant(source)
            if len(self.sources) > SOURCES_KEPT:   # many sources (spoofed ones: UDP): the oldest go, not the memory
                del self.sources[next(iter(self.sources))]
        if tenant is None:
            return None
        return tenant or (KSR.pv.get("$hdr(X-Callgate-Tenant)") or "").strip()

    # -- helpers -----------------------------------------------------------------------------

    def reply(self, code: int, reason: str, cause: str = "") -> int:
        if cause:
            KSR.hdr.append_to_reply(f'Reason: SIP;cause={code};text="{cause}"\r\n')
        KSR.sl.send_reply(code, reason)
        return 1

    def relay(self) -> int:
        """Relay statefully (a call put under_dialog has its events followed)."""
        return 1 if KSR.tm.t_relay() > 0 else self.reply(500, "Relay Failed")

    @staticmethod
    def call_record(**fields: str) -> str:
        """What the call's later events need, as one record: JSON, as json.dumps(fields, separators=(",", ":"))
        writes it (ASCII, escaped: what callgate_events.c reads), made of json's own string encoder: json.dumps
        makes an encoder at every call, ~38 us of a SIP worker's INVITE with its cold caches."""
        return "{" + ",".join(f"{_quoted(k)}:{_quoted(v)}" for k, v in fields.items()) + "}"

    @staticmethod
    def remember(record: str, transaction: bool = True, dialog: bool = True) -> None:
        """Keep the call's record (call_record) with the transaction (avp: for its replies) and the dialog
        (dlg_var: for its end): a call into Kamailio each, where a variable a field cost two calls a field here
        and one or two a field read back at every reply (measured: replies 318 us of Python a call)."""
        if transaction:
            KSR.pv.sets("$avp(cg)", record)
        if dialog:
            KSR.dialog.var_sets("cg", record)

    @staticmethod
    def record_text(pv: str = "$avp(cg)") -> str:
        """The call's record as `remember` wrote it (JSON), from the transaction, else the dialog; "" for none."""
        return KSR.pv.get(pv) or (KSR.pv.get("$dlg_var(cg)") if pv != "$dlg_var(cg)" else "") or ""

    @staticmethod
    def recall(pv: str = "$avp(cg)") -> dict[str, str]:
        """The call's record (remember) from the transaction, else the dialog; {} for none or a damaged one."""
        text = kamailio.record_text(pv)
        return kamailio.parsed(text) if text else kamailio.recall_fields(pv)

    @staticmethod
    def parsed(text: str) -> dict[str, str]:
        """A call's record as `remember` wrote it, read; {} for a damaged one."""
        try:
            record = json.loads(text)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}

    @staticmethod
    def recall_fields(pv: str) -> dict[str, str]:
        """A call made before `kamcmd app_python3.reload` brought this script: its fields one variable each (the
        script before this one), so that its answer and end still reach callgate."""
        dialog_only = pv.startswith("$dlg_var")
        # (a call without them, the usual case since: one variable read, not seven, at every dialog's end)
        if not (KSR.pv.get("$dlg_var(cg_call)") if dialog_only else
                KSR.pv.get("$avp(cg_call)") or KSR.pv.get("$dlg_var(cg_call)")):
            return {}
        record = {}
        for name in ("call", "tenant", "dir", "user", "caller", "called", "line"):
            value = (KSR.pv.get(f"$dlg_var(cg_{name})") if dialog_only else
                     KSR.pv.get(f"$avp(cg_{name})") or KSR.pv.get(f"$dlg_var(cg_{name})"))
            if value:
                record[name] = str(value)
        return record

    @staticmethod
    def remember_paid(seconds: int) -> None:
        """The talk an outbound call's hold pays for (its RINGING's answer), for its 200: apart from the record,
        which was made before it was known."""
        KSR.pv.sets("$avp(cg_paid)", str(seconds))
        KSR.dialog.var_sets("cg_paid", str(seconds))

    def request(self, kind: str, call_id: str, tenant: str, user: str = "", at: int | None = None,
                **fields: Any) -> Any:
        """A CallEventRequest at `at` (None: now)."""
        return self.pb.CallEventRequest(tenant=tenant, call_id=call_id, kind=self.pb.CallEventRequest.Kind.Value(kind),
                                        user=user, at=int(time.time()) if at is None else at, **fields)

    def call_events(self, kinds: Sequence[str], call: dict[str, str], header_user: str, outcome: str = "",
                    at: int | None = None) -> list[tuple[str, Any]]:
        """The call's events `kinds`, in order, as (kind, request), from its record (`recall`): what a worker
        sends itself (an outbound call's RINGING for its hold, a call recorded by the script before this one,
        calls without the module) and what the
        sender makes of a raw record (`events_of`).  The user named is who the call rings at or talks with on
        our side: an outbound call's caller; else the user the PBX names in X-Callgate-User (`header_user`, if
        callgate takes it: at most USER_MAX characters), or the first member of the queue group (voicemail,
        forward: no person)."""
        call_id, tenant = call.get("call", ""), call.get("tenant", "")
        if len(header_user) > USER_MAX:   # a name callgate refuses would lose the call's events: nobody named
            header_user = ""
        user = call.get("user", "") if call.get("dir") == "outbound" else (header_user or call.get("user") or "unknown")
        out = []
        for kind in kinds:
            if kind == "RINGING":
                r = self.request(kind, call_id, tenant, user, at, direction=call.get("dir") or "inbound",
                                 caller=call.get("caller", ""), called=call.get("called", ""),
                                 line=call.get("line", ""))
            elif kind == "ANSWERED":
                r = self.request(kind, call_id, tenant, user, at)
            elif kind == "ENDED":
                r = self.request(kind, call_id, tenant, at=at, outcome=outcome)
            else:
                raise ValueError(f"an event kind {kind!r:.40} this script does not make")
            out.append((kind, r))
        return out

    def spool_events(self, events: list[tuple[str, Any]]) -> bool:
        """Append events (kind, request) to this worker's journal of the spool (never waited on); those it
        cannot take are logged.  Whether they were taken."""
        items = [(f"{r.call_id}:{kind}", r.call_id, r.SerializeToString()) for kind, r in events]
        try:
            self.spool.add(items)
        except (sqlite3.Error, OverflowError, OSError, ValueError) as exc:
            KSR.err(f"callgate: {len(items)} call event(s) of {events[0][1].call_id} not spooled, lost: {exc}\n")
            return False
        return True

    @staticmethod
    def new_call_id() -> str:
        """callgate's id of this INVITE's call: the Call-ID and the CSeq number, so that a retried INVITE (a
        401 challenge answered, a failed attempt dialled again with the same Call-ID) is a call of its own.  One
        longer than callgate takes (a caller chooses its Call-ID: callgate would refuse every event of the call,
        leaving it unregistered and a forwarded leg unbilled) is named by its SHA-256 instead."""
        call_id = f"{KSR.pv.get('$ci')}/{KSR.pv.get('$cs')}"
        if len(call_id) <= CALL_ID_MAX:
            return call_id
        return "sha256:" + hashlib.sha256(call_id.encode("utf-8", "surrogateescape")).hexdigest()

    def name(self, enum: Any, value: int) -> str:
        """An enum value's name; a value newer than this script's protobuf (a rolling upgrade) by its number."""
        try:
            return str(enum.Name(value))
        except ValueError:
            return str(value)

    @staticmethod
    def ring_kinds() -> tuple[str, ...]:
        """("RINGING",) if the call's RINGING was not spooled yet, else (): the first of 180, 183 or 200 spools it
        and marks the dialog (two replies in two workers at once may both spool it: the spool's key keeps one)."""
        if KSR.pv.get("$dlg_var(cg_rung)"):
            return ()
        KSR.dialog.var_sets("cg_rung", "1")
        return ("RINGING",)

    def spool_raw(self, kinds: tuple[str, ...], text: str, outcome: str = "", talker: str | None = None) -> bool:
        """Append the call's events `kinds` as the call's record (`text`, JSON as `remember` wrote it) and what
        this reply adds (who rings or talks: `talker`, else the reply's X-Callgate-User), to this worker's
        journal: the sender makes the events of it (`events_of`).  Whether it was taken."""
        talker = self.user_header(kinds) if talker is None else talker
        try:
            # the header last, whole: the other fields never hold a NUL (JSON escapes it), so it may
            raw = (RAW_TAG + "\0".join((",".join(kinds), str(int(time.time())), outcome, text, talker))).encode(
                "utf-8", "surrogateescape")
            self.spool.add_raw(raw, kinds == ("ENDED",))
        except (sqlite3.Error, OverflowError, OSError, ValueError) as exc:
            KSR.err(f"callgate: {len(kinds)} call event(s) of {KSR.pv.get('$ci')} not spooled, lost: {exc}\n")
            return False
        return True

    @staticmethod
    def user_header(kinds: Sequence[str]) -> str:
        """X-Callgate-User of the message at hand, for events that name who rings or talks (not an ENDED alone)."""
        return (KSR.pv.get("$hdr(X-Callgate-User)") or "") if tuple(kinds) != ("ENDED",) else ""

    # -- routes ------------------------------------------------------------------------------

    def ksr_request_route(self, msg: Any) -> int:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            return self.reply(483, "Too Many Hops")
        method = KSR.pv.get("$rm")
        if method == "OPTIONS":
            return self.reply(200, "OK")
        if KSR.siputils.has_totag() > 0:
            return self.in_dialog(method)
        if method in ("CANCEL", "ACK"):  # only for a transaction of ours
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return 1
        if method != "INVITE":
            return self.reply(405, "Method Not Allowed")
        # a copy of an INVITE another worker is handling (a retransmission that overtook its transaction) or
        # has relayed: tm answers it, and the call is decided and followed once (three copies made three ENDED)
        if KSR.tmx.t_precheck_trans() > 0:
            KSR.tm.t_check_trans()
            return 1
        if KSR.tm.t_check_trans() == 0:
            return 1
        tenant = self.trusted_tenant()  # (read before the control headers go)
        # control headers and asserted identities are ours to set: whatever a sender put there goes
        KSR.textops.remove_hf_re("^X-Callgate-")
        if tenant is None:
            KSR.hdr.remove("P-Asserted-Identity")
            KSR.hdr.remove("P-Preferred-Identity")
        KSR.rr.record_route()
        if BYPASS:
            KSR.setdsturi(ROUTE_URI)
            if BYPASS_EVENTS:   # (the benchmark's second baseline: undecided, its events recorded as a decided call's)
                self.refresh_failover()
                caller, called = KSR.pv.get("$fU") or "", KSR.pv.get("$rU") or ""
                holder = str(self.entry_of(called).get("tenant") or "")
                if holder:
                    self.under_dialog(CALL_MAX_S, {"tenant": holder, "dir": "inbound", "caller": caller,
                                                   "called": called, "line": "", "user": "relay"})
                    return self.relay()
            KSR.dialog.dlg_manage()
            return self.relay()
        # (at every INVITE, at most a stat a second: read before an outage needs it, not in the call that does)
        self.refresh_failover()
        caller, called = KSR.pv.get("$fU") or "", KSR.pv.get("$rU") or ""
        if tenant is not None:  # a user of a tenant, authenticated by its PBX
            if not tenant:
                return self.reply(403, "Forbidden", "a trusted source must name the tenant in X-Callgate-Tenant")
            if called.startswith(("*", "#")):
                return self.pickup(tenant, caller, called)
            return self.outbound(tenant, caller, called)
        local = self.local
        owner = None
        if local is not None and TIMINGS:   # the decision timed alone (`inbound`), as the RPC is: tenant_of apart
            owner = local.tenant_of(called)
        elif local is not None:   # (now by the server's clock: the replica measures this host's against it)
            routed = local.route(caller, called)
            if routed is not None:
                owner, fields = routed
                if fields is not None:   # in step: decided in the one call, as inbound would decide it
                    self.local_decisions += 1
                    return self.carried_out(owner, caller, called, fields)
        tenant = owner or str(self.entry_of(called).get("tenant") or "")
        if not tenant:  # from outside, to a number nobody holds: nobody calls out on a tenant's bill
            KSR.info(f"callgate: {KSR.pv.get('$ci')} from untrusted {KSR.pv.get('$si')} to {called}: refused\n")
            return self.reply(403, "Forbidden", "not one of our numbers")
        return self.inbound(tenant, caller, called)

    def timed_inbound(self, local: Any, tenant: str, caller: str, called: str) -> Any:
        """local.inbound(tenant, caller, called), timed (CALLGATE_TIMINGS) as a local decision."""
        misses, collected = local.misses, self.timings.collections
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        out = local.inbound(tenant, caller, called)
        # the wall time, and the worker's own CPU time: what the wall time holds beyond it is time the worker
        # waited for a core (2 cores shared with sipp, callgate and the other Kamailios)
        ns, cpu_ns = time.perf_counter_ns() - t0, time.thread_time_ns() - c0
        self.timings.add("local", ns, cpu_ns)
        if self.timings.collections != collected:   # (also) one Python's garbage collector ran in
            self.timings.add("local_gc", ns, cpu_ns)
        # a peer of the same length measured at the same moments: a CRC of 10 KB, fixed work without a lookup,
        # a file or an allocation; its tail is the tail of any 5 us of work in this worker
        t0 = time.perf_counter_ns()
        zlib.crc32(DECOY)
        self.timings.add("decoy", time.perf_counter_ns() - t0)
        if local.misses != misses:   # (also) one the compiled path handed to the Python one: which they are
            self.timings.add("local_miss", ns, cpu_ns)
        return out

    def ask(self, method: str, request: Any) -> Any:
        """One decision within the deadline; None when callgate is unreachable, late or refuses the input."""
        try:
            return self.rpc(method, request)
        except self.grpc.RpcError as exc:
            KSR.warn(f"callgate: {method} for {KSR.pv.get('$ci')}: {exc.code().name} {exc.details()}\n")
            return None

    def under_dialog(self, timeout_s: int, fields: dict[str, str]) -> None:
        """Track the call as a dialog (its end is its ENDED; it ends itself, BYE both ways, after `timeout_s` of
        talk) with its events followed: where Kamailio loaded the callgate_events module, it makes them in C, the
        replies' (track) and the dialog's end (follow); of an outbound call's replies, this script's reply route
        then only sends the RINGING at once for the credit hold and times the talk from the answer (the record in
        $avp(cg_hold)); what the module does not make, this script's routes do, from the record kept where they
        read it (`remember`).  The call's callgate id and tenant also ride in the Record-Route, so that its BYE
        is still recognised after a Kamailio restart has lost the dialog.  `fields`: the call's record but its call
        id (tenant, dir, caller, called, line, user; a dict passed as it is: no keywords packed again)."""
        timer = talk_timer(timeout_s)
        if timer != self.default_timer:   # (an inbound call or forwarded leg: the configuration's, one call less)
            KSR.pv.seti("$avp(cg_timeout)", timer)  # the dialog module's timeout_avp
        managed = KSR.dialog.dlg_manage() > 0
        module = EVENTS_MODULE
        done = 0
        outbound = fields.get("dir") == "outbound"
        if RELAYED_IN_MODULE and module is not None and managed:
            # the module makes the record and does all of what follows in one call (~50 us less); what it did not
            # do (it could not, or a module before `relayed`, or one that left an outbound call's replies here) is
            # done here
            try:
                done = module.relayed(*[fields.get(name, "") for name in RELAYED_FIELDS])
            except Exception:   # (a field Kamailio cannot take as a C string, a NUL in it: nothing done)
                done = 0
            if done == RELAYED_ALL and not outbound:
                return
            done = done if type(done) is int and done > 0 else 0
        call_id = self.new_call_id()
        record = self.call_record(call=call_id, **fields)
        # (an outbound call's replies are tracked by relayed() only: a module's track() before it named who the
        # reply names, where an outbound call's events name its caller)
        tracked = 1 if done & RELAYED_TRACKED else (
            module.track(record) if module is not None and not outbound else -1)
        followed = 1 if done & RELAYED_FOLLOWED else (
            module.follow(record) if module is not None and managed else -1)   # (the dialog made)
        self.remember(record, transaction=tracked < 1, dialog=followed < 1)
        if tracked < 1:
            KSR.tm.t_on_reply("ksr_onreply_invite")
            KSR.tm.t_on_failure("ksr_failure_invite")
        elif outbound:   # its events are the module's; its hold and its talk's timer are this script's
            KSR.pv.sets("$avp(cg_hold)", record)
            KSR.tm.t_on_reply("ksr_onreply_invite")
        if not done & RELAYED_ROUTE:
            KSR.rr.add_rr_param(f";cgc={call_id.encode().hex()};cgt={fields.get('tenant', '').encode().hex()}")

    def inbound(self, tenant: str, caller: str, called: str) -> int:
        local = self.local
        if local is None:
            answer = None
        elif TIMINGS:
            answer = self.timed_inbound(local, tenant, caller, called)
        else:  # now by the server's clock (the replica measures this host's against it), as the RPC decides
            answer = local.inbound(tenant, caller, called)
        if answer is not None:
            self.local_decisions += 1
            if answer.action == "reject":  # older than --max-staleness, the tenant's policy fail-closed
                return self.reply(503, "Service Unavailable", "callgate replica stale")
            if answer.action == "backup":
                return self.to_backup(tenant, caller, answer.backup_number, answer.backup_line)
            return self.carried_out(tenant, caller, called, answer.decision.proxy_fields())
        if local is not None:
            self.refused_file(local, tenant)
        request = self.pb.InboundRequest(tenant=tenant, caller=caller, called=called)
        if TIMINGS:
            t0 = time.perf_counter_ns()
            d = self.ask("Inbound", request)
            self.timings.add("rpc", time.perf_counter_ns() - t0)
        else:
            d = self.ask("Inbound", request)
        if d is None:
            return self.failed(tenant, caller, called)
        return self.decided(tenant, caller, called, self.name(self.pb.Verdict, d.verdict), d.sip_status,
                            self.name(self.pb.Reason, d.reason), d.group, list(d.members), d.target, d.line)

    def refused_file(self, local: Any, tenant: str) -> None:
        """Log (per worker: once per reason, and again every REFUSAL_LOG_S while it lasts) that a tenant's replica
        file cannot be used (damaged, cut short or rewritten by hand under the workers): its calls then cost an
        RPC each, and fail while callgate is away."""
        why = local.refusals.get(tenant)
        if why is None:
            return
        now = time.monotonic()
        logged = self.refusals_logged.get(tenant)
        if logged is None or logged[0] != why or now - logged[1] >= REFUSAL_LOG_S:
            self.refusals_logged[tenant] = (why, now)
            KSR.err(f"callgate: the file of tenant {tenant!r:.70} in the replica {REPLICA_DIR} cannot be used ({why}); "
                    "its inbound calls are decided by callgate over gRPC until the replica writes it again\n")

    def carried_out(self, tenant: str, caller: str, called: str, fields: tuple[Any, ...]) -> int:
        """A local decision carried out: its fields (CoreDecision.proxy_fields: "" for a field the decision has not,
        as the RPC's message has them)."""
        if fields[0] == "ERROR":  # what the RPC refuses as INVALID_ARGUMENT: the same failure policy
            return self.failed(tenant, caller, called)
        return self.decided(tenant, caller, called, *fields)

    def decided(self, tenant: str, caller: str, called: str, verdict: str, sip_status: int, reason: str,
                group: str, members: Sequence[str], target: str, line: str) -> int:
        """An inbound decision carried out, whether made here (the replica) or by callgate."""
        if verdict == "REJECT":
            return self.reply(sip_status or 480, PHRASES.get(sip_status, "Rejected"), reason)
        if verdict not in ("ROUTE", "FORWARD", "VOICEMAIL"):
            return self.reply(500, "Server Internal Error", f"unexpected verdict {verdict}")
        KSR.setdsturi(ROUTE_URI)
        fields = {"tenant": tenant, "dir": "inbound", "caller": caller, "called": called, "line": "",
                  "user": group}
        if verdict == "ROUTE":
            KSR.hdr.append(f"X-Callgate-Group: {group}\r\n")
            fields["user"] = members[0] if members else group
        elif verdict == "FORWARD":
            KSR.setuser(target)
            KSR.hdr.append(f"X-Callgate-Line: {line}\r\n")
            # the leg to the target is what rings, answers and is billed: a forwarded leg
            fields.update(dir="forwarded", called=target, line=line, user="forward")
        else:
            KSR.setuser("voicemail")
            fields["user"] = "voicemail"
        self.under_dialog(CALL_MAX_S, fields)
        return self.relay()

    def outbound(self, tenant: str, user: str, destination: str) -> int:
        d = self.ask("Outbound", self.pb.OutboundRequest(tenant=tenant, user=user, destination=destination))
        if d is None:
            return self.reply(503, "Service Unavailable", "callgate unavailable")
        if self.name(self.pb.Verdict, d.verdict) != "ALLOW":
            return self.reply(d.sip_status or 403, PHRASES.get(d.sip_status, "Forbidden"),
                              self.name(self.pb.Reason, d.reason))
        KSR.hdr.remove("P-Asserted-Identity")
        KSR.hdr.append(f"P-Asserted-Identity: <sip:{d.caller_id}@{KSR.pv.get('$fd')}>\r\n")
        KSR.setdsturi(ROUTE_URI)
        # the talk the credit pays for: the dialog ends itself (BYE both ways) when it is used up; billed at
        # the line the decision chose (the RINGING names it: a rule changed meanwhile does not unbill the call).
        # The fields in relayed()'s order: the module's record and this script's are the same bytes
        self.under_dialog(d.max_duration_s, {"tenant": tenant, "dir": "outbound", "caller": user,
                                             "called": destination, "line": d.line, "user": user})
        return self.relay()

    def pickup(self, tenant: str, user: str, dialed: str) -> int:
        d = self.ask("Pickup", self.pb.PickupRequest(tenant=tenant, user=user, dialed=dialed))
        if d is None:
            return self.reply(503, "Service Unavailable", "callgate unavailable")
        if self.name(self.pb.Verdict, d.verdict) != "INTERCEPT":
            return self.reply(404, "Not Found", self.name(self.pb.Reason, d.reason))
        KSR.hdr.append(f"X-Callgate-Intercept: {d.call_id}\r\n")
        KSR.setdsturi(ROUTE_URI)
        KSR.dialog.dlg_manage()  # its in-dialog requests are ours to relay (no events: the picked call has them)
        return self.relay()

    def entry_of(self, number: str) -> dict[str, Any]:
        """The failover table's entry of a number (sent with or without '+'), {} for none."""
        numbers = self.failover.get("numbers")
        if not isinstance(numbers, dict):
            return {}
        entry = numbers.get(number) or numbers.get("+" + number)
        return entry if isinstance(entry, dict) else {}

    def failed(self, tenant: str, caller: str, called: str) -> int:
        """callgate unreachable or late: the failure policy."""
        if FAILURE == "open":
            entry = self.entry_of(called)
            tenants = self.failover.get("tenants")
            info = tenants.get(str(entry.get("tenant", tenant))) if isinstance(tenants, dict) else None
            backup = info.get("backup") if isinstance(info, dict) else None
            if isinstance(backup, dict) and backup.get("number") and entry.get("line") == backup.get("line"):
                KSR.info(f"callgate: unavailable, forwarding {KSR.pv.get('$ci')} to the backup {backup['number']}\n")
                return self.to_backup(str(entry.get("tenant", tenant)), caller, str(backup["number"]),
                                      str(backup["line"]))
        return self.reply(503, "Service Unavailable", "callgate unavailable")

    def to_backup(self, tenant: str, caller: str, number: str, line: str) -> int:
        """Forward the call to the tenant's backup number on its line."""
        KSR.setuser(number)
        KSR.hdr.append(f"X-Callgate-Line: {line}\r\n")
        KSR.setdsturi(ROUTE_URI)
        # the leg is billed at the backup line's rate once callgate has its events (from the spool); the record's
        # fields in relayed()'s order: the same bytes either way
        self.under_dialog(CALL_MAX_S, {"tenant": tenant, "dir": "forwarded", "caller": caller, "called": number,
                                       "line": line, "user": "forward"})
        return self.relay()

    def in_dialog(self, method: str) -> int:
        if KSR.rr.loose_route() > 0:
            # Only a dialog this proxy made passes: the dialog module knows it, or (Kamailio restarted since)
            # its Route names a call of ours.  Anything else with a To-tag and a Route is a try at using the
            # proxy as a relay to anywhere, from its own address.
            known = KSR.dialog.is_known_dlg() > 0
            if not known and not self.route_param("cgc"):
                KSR.info(f"callgate: {method} in no dialog of ours from {KSR.pv.get('$si')}: refused\n")
                return self.reply(403, "Forbidden", "not a dialog of this proxy")
            if method == "BYE" and not known:  # its dialog was lost (a restart): its end still reaches callgate
                self.lost_dialog_ended()
            KSR.tm.t_relay()
            return 1
        if method == "ACK":  # the ACK of a negative final reply is the transaction's (hop by hop): never answered
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return 1
        return self.reply(404, "Not Here")

    def route_param(self, name: str) -> str:
        """A parameter this proxy put in its Record-Route, read back from the request's Route (hex-decoded)."""
        route = KSR.pv.get("$hdr(Route)") or ""
        for part in route.replace(">", ";").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                try:
                    return bytes.fromhex(value).decode()
                except ValueError:
                    return ""
        return ""

    def lost_dialog_ended(self) -> None:
        call_id, tenant = self.route_param("cgc"), self.route_param("cgt")
        if call_id and tenant:
            self.spool_ended({"call": call_id, "tenant": tenant})

    # -- events ------------------------------------------------------------------------------

    def ksr_onreply_invite(self, msg: Any) -> int:
        status = int(KSR.pv.get("$rs") or 0)
        if status not in (180, 183, 200) or KSR.pv.get("$rm") != "INVITE":
            return 1
        if KSR.pv.get("$avp(cg_hold)"):   # an outbound call whose events the module makes (it journals them, and
            # keeps what a full disk refuses): its first ring still sends its RINGING at once for the hold, which the
            # journal's replays
            self.held_reply(status)
            return 1
        text = self.record_text()
        # `remember` writes "dir":"outbound" thus only for an outbound call (a value's quotes are escaped):
        # that call's RINGING is sent at once for its hold, so its record is read here (and a record of the
        # script before this one, one variable a field)
        if text and OUTBOUND_MARK not in text:
            kinds = self.ring_kinds() + (("ANSWERED",) if status == 200 else ())
            if kinds:
                self.spool_raw(kinds, text)
            return 1
        call = self.recall()
        call_id = call.get("call")
        if not call_id:
            return 1
        kinds = self.ring_kinds() + (("ANSWERED",) if status == 200 else ())
        if not kinds:
            return 1
        events = self.call_events(kinds, call, self.user_header(kinds))
        taken = self.spool_events(events)
        if call.get("dir") == "outbound":
            if taken and events[0][0] == "RINGING":
                self.hold(call_id, events[0][1])
            if status == 200:
                self.time_talk()
        return 1

    def held_reply(self, status: int) -> None:
        """A reply of an outbound call whose events the module makes (`under_dialog`: its record in
        $avp(cg_hold)): at its first ring (180, 183, or a 200 without one) its RINGING goes to callgate at once for
        the credit hold, and at the 200 the talk is timed."""
        if self.ring_kinds():
            call = self.recall("$avp(cg_hold)")
            if call.get("call"):   # ({} for a record `under_dialog` did not write: no hold)
                [(_, ringing)] = self.call_events(("RINGING",), call, "")
                self.hold(ringing.call_id, ringing)
        if status == 200:
            self.time_talk()
            self.answer_past_the_disk()

    def answer_past_the_disk(self) -> None:
        """At the 200 of an outbound call whose events the module makes, when its answer will wait for the disk
        (a full disk: the module's `answer_waits()`): the ANSWERED goes to callgate at once over RPC too, as the
        RINGING went for the hold.  Kept, it would reach callgate only once the disk has room, and a disk full past
        callgate's ring timeout (10 minutes) had the call expired unanswered there, its talk unbilled.  Only after
        the hold's RINGING was answered (`cg_paid`): an answer without its ringing would reach callgate out of
        order.  An answer callgate took marks the dialog (`cg_told`): its end goes over RPC too (`tell_ended` at
        the dialog's end), so that callgate does not hold an answered call whose end is lost later (past
        CALLGATE_KEPT_MAX, at Kamailio's stop), which it would charge to its expiry, 24 hours.  The module's
        events, written once the disk has room, are then replays."""
        waits = getattr(EVENTS_MODULE, "answer_waits", None)
        if waits is None or waits() <= 0 or not self.paid():
            return
        record = self.record_text("$avp(cg_hold)")
        call = self.parsed(record)
        if not call.get("call"):
            return
        [(_, answered)] = self.call_events(("ANSWERED",), call, "")
        if self.tell(answered, "its events wait for the disk") is not None:
            KSR.dialog.var_sets("cg_told", record)

    def tell(self, request: Any, why: str = "") -> Any:
        """One call event to callgate at once over RPC, within the decision's deadline: its reply, or None when
        callgate did not take it (logged with `why` it went so, if given)."""
        try:
            return self.rpc("CallEvent", request)
        except self.grpc.RpcError as exc:
            if why:
                KSR.warn(f"callgate: {self.name(self.pb.CallEventRequest.Kind, request.kind)} of {request.call_id} "
                         f"({why}) did not reach callgate over RPC: {exc.code().name} {exc.details()}\n")
            return None

    def tell_ended(self, call: dict[str, str], why: str) -> bool:
        """The call's ENDED (answered), now, to callgate over RPC: for a call whose answer went so
        (`answer_past_the_disk`), and for an end the spool refused (`spool_ended`).  An end lost leaves callgate an
        answered call to charge to its expiry (24 hours); sent before an answer still in the journal, it ends the
        call unanswered and the answer is refused: unbilled, the lesser harm.  The journal's, if written, is a
        replay.  Whether callgate took it."""
        if not call.get("call") or not call.get("tenant"):
            return False
        [(_, ended)] = self.call_events(("ENDED",), call, "", "answered")
        return self.tell(ended, why) is not None

    def spool_ended(self, call: dict[str, str], text: str = "") -> None:
        """The call's ENDED (answered) into the spool: raw from its record's `text` when the dialog holds one (no
        JSON read), else made from `call`; one the spool refuses (a full disk) goes to callgate over RPC."""
        taken = (self.spool_raw(("ENDED",), text, "answered") if text else
                 self.spool_events(self.call_events(("ENDED",), call, "", "answered")))
        if taken:
            return
        call = call or self.parsed(text)
        if self.tell_ended(call, "the spool refused it"):
            KSR.notice(f"callgate: the end of {call.get('call')} went to callgate over RPC (the spool refused it)\n")

    @staticmethod
    def paid() -> str:
        """The talk an outbound call's hold pays for ("" before its RINGING was answered: `remember_paid`)."""
        return KSR.pv.get("$avp(cg_paid)") or KSR.pv.get("$dlg_var(cg_paid)") or ""

    @staticmethod
    def time_talk() -> None:
        """At an outbound call's 200: the dialog's timer set to the talk its hold pays for, if the hold said
        (timed from the answer: a timer set at the 180 would count the ringing as talk)."""
        paid = kamailio.paid()
        if paid.isdigit():
            KSR.dialog.dlg_set_timeout(talk_timer(int(paid)))

    def hold(self, call_id: str, request: Any) -> None:
        """An outbound call's RINGING, sent at once for its credit hold: the talk the hold pays for is kept for
        the answer, when the dialog's timer comes down to it (0: the call ends as soon as it is answered).
        Late or unanswered: the spool sends it, and the Outbound decision's timer stands.  (The spool sends it
        in any case: callgate answers the replay with the reply recorded here.)"""
        r = self.tell(request)
        if r is not None:
            self.remember_paid(int(r.max_duration_s))

    def ksr_failure_invite(self, msg: Any) -> int:
        """A negative final reply (or the INVITE timer's 408): the call ended unanswered, with its outcome."""
        status = int(KSR.pv.get("$T_reply_code") or 0)
        # a CANCEL of a branch that had sent nothing yet ends with tm's own 408: cancelled, as the module says
        outcome = "cancelled" if KSR.tm.t_is_canceled() > 0 else outcome_of(status)
        text = self.record_text()
        # no X-Callgate-User: here the message is the caller's INVITE, whose headers still list the ones the
        # request route removed (a removal only marks them): an outside caller would name who "rang"; the
        # call's record names the user instead
        if text:   # (no RPC at a failure: any call's record goes to the journal as it is)
            self.spool_raw((*self.ring_kinds(), "ENDED"), text, outcome, talker="")
            return 1
        call = self.recall()
        if not call.get("call"):
            return 1
        self.spool_events(self.call_events((*self.ring_kinds(), "ENDED"), call, "", outcome))
        return 1

    def ksr_dialog_event(self, msg: Any, evname: str) -> int:
        """The dialog ended (a BYE, or the timer of an outbound call): ENDED, answered."""
        if evname != "dialog:end":
            return 1
        told = KSR.pv.get("$dlg_var(cg_told)")
        if told:   # (an outbound call answered over RPC while the disk was full)
            self.tell_ended(self.parsed(told), "its answer went over RPC")
        text = self.record_text("$dlg_var(cg)")
        if text:
            self.spool_ended({}, text)
            return 1
        call = self.recall("$dlg_var(cg)")
        if call.get("call") and call.get("tenant"):
            self.spool_ended(call)
        return 1

    # -- the sender (an rtimer process) ------------------------------------------------------

    def ksr_callgate_sender(self, msg: Any, *_route: Any) -> int:
        """A round of the sender: the SIP workers' new journal records are sent straight away in CallEvents calls
        (`send_straight`) while nothing waits in the spool's table, and only what is not answered goes into it
        (the table is the spool's backlog: an event written, then read, updated and marked there cost ~60 us a
        call); else
        they join the table's backlog, sent oldest first.  A call's events go in order; back off while callgate
        cannot take them.  rtimer calls this every tick (100 ms): a round is due SEND_EVERY_S after the last one,
        and at every tick while events wait in the table (a backlog drains at up to SENDER_BATCH events a tick)."""
        now = time.monotonic()
        if now < self.next_round and not self.backlog:
            return 1
        if not self.sending():
            return 1
        self.next_round = now + SEND_EVERY_S
        until = now + SEND_DEADLINE_S   # (the round's calls to callgate, together)
        self.round_took = 0.0
        intake = None
        try:
            intake = self.spool.read(self.events_of)
        except OSError as exc:
            KSR.err(f"callgate: the event spool's journals cannot be read: {exc}\n")
        except Exception as exc:  # nothing read, tried again next round; what waits in the table is still sent
            KSR.err(f"callgate: the event spool's journals could not be read: {exc!r:.300}\n")
        if now >= self.last_stats + 10:
            self.last_stats = now
            self.report()
        if intake is not None:
            settled: dict[str, tuple[int, str]] = {}
            every = intake.rows
            answered = False   # every row of the round answered for good (the usual round: nothing to look up)
            sent_all = False   # ... and none refused: nothing to keep
            if intake.records and not self.backlog and now >= self.backoff_until:
                answers = self.send_straight(every, until)
                # (each position is answered once at most: as many answers as rows, none to wait, is all of them)
                states = {state for _, state, _ in answers}
                answered = len(answers) == len(every) and RETRY not in states
                sent_all = answered and REFUSED not in states
                if not sent_all:   # (the usual round, every event answered, has nothing to look up)
                    settled = {every[at][0]: (state, error) for at, state, error in answers}
            if not answered and any(settled.get(row[0], (PENDING, ""))[0] not in (SENT, REFUSED)
                                    for record in intake.records for row in record):
                self.backlog = True   # (before `store`: what it commits waits, whatever fails after its commit)
            try:
                # also while callgate is away, so that the spool's figures and CALLGATE_SPOOL_MAX count every
                # event the workers wrote; sent but not stored (a crash, a full disk): read and sent again, and
                # callgate answers a replay with its recorded reply
                self.spool.store(intake, settled, sent_all=sent_all)
            except (sqlite3.Error, OSError) as exc:
                KSR.err(f"callgate: the event spool {SPOOL_FILE} cannot be written: {exc}\n")
                # nothing counts as read: no round sends the journals straight again until one stores (each
                # would send the same events again), and the next waits
                self.backlog = True
                self.back_off(f"the event spool cannot be written: {exc}")
            for problem in intake.problems:
                KSR.err(f"callgate: event spool: {problem}\n")
        if self.backlog and time.monotonic() >= self.backoff_until:
            self.send_backlog(until)
        return 1

    def send_straight(self, rows: list[Any], until: float) -> list[tuple[int, int, str]]:
        """A round's new events (rows: key, call, request, wall) sent in calls of SENDER_BATCH (callgate takes
        1,000 at most), each part once the one before was answered whole (sent or refused for good); at the first
        part not all answered, or with an event to try again (a call stopped in it may have later events in the
        next part), the rest is left unsent, for the table: (position in `rows`, state, error) as `send` answers
        them.  The parts share the round's deadline (`until`, time.monotonic(): a slow callgate holds this process
        SEND_DEADLINE_S a round, not a deadline a part); a part left less than it needs (`time_left`) waits in the
        table."""
        answers: list[tuple[int, int, str]] = []
        for start in range(0, len(rows), SENDER_BATCH):
            part = rows[start:start + SENDER_BATCH]
            left = self.time_left(until)
            if left is None:
                break
            try:
                got = self.send([(call, request) for _, call, request, _ in part], left)
            except Exception as exc:   # (no answer of callgate's: a CA file unreadable, ...) nothing was sent
                # as far as the sender knows: the part's events and the rest go into the table, and wait
                self.back_off(f"the events could not be sent: {exc!r:.200}")
                break
            answers.extend((start + at, state, error) for at, state, error in got)
            # (a refusal is final: its call's next event may go, here as from the table; an event to try again
            # holds its call's later ones)
            if len(got) != len(part) or any(state == RETRY for _, state, _ in got):
                break
        return answers

    def sending(self) -> bool:
        """Whether this process is the spool's one sender (Spool.claim_sender): a second Kamailio given the same
        CALLGATE_SPOOL leaves its journals to the first one's sender, which reads them all, and says so once."""
        try:
            claimed, holder = self.spool.claim_sender()
        except OSError as exc:   # (said once per error, not at every round)
            if self.claim_error != str(exc):
                self.claim_error = str(exc)
                KSR.err(f"callgate: the event spool's lock {SPOOL_FILE}.sender cannot be taken ({exc}): no events "
                        "are sent until it can\n")
            return False
        self.claim_error = ""
        if claimed != self.claimed:
            self.claimed = claimed
            if claimed:
                KSR.info(f"callgate: this process sends the event spool {SPOOL_FILE} (its journals read "
                         f"{journal_reader()[1]})\n")
            else:
                KSR.err(f"callgate: another process (pid {holder or '?'}) sends the event spool {SPOOL_FILE}, "
                        "this Kamailio's events too while it runs: give each Kamailio instance its own "
                        "CALLGATE_SPOOL\n")
        return claimed

    def time_left(self, until: float) -> float | None:
        """What is left of the round's deadline for its next call to callgate, or None when too little is: less
        than SEND_LEAST_S, or than the round's last call took (`round_took`; the round's first call has it all)."""
        left = until - time.monotonic()
        return left if left >= max(SEND_LEAST_S, self.round_took) else None

    def send_backlog(self, until: float) -> None:
        """Send the oldest events waiting in the table (a call's first only, to a callgate that goes on with a
        call after its event that failed) and mark those answered or refused, within what is left of the round's
        deadline (`until`; too little, `time_left`: at the next tick)."""
        first_of_call = not self.in_order
        try:
            waiting = self.spool.pending(SENDER_BATCH, first_of_call=first_of_call)
        except sqlite3.Error as exc:
            KSR.err(f"callgate: the event spool {SPOOL_FILE} cannot be read: {exc}\n")
            return
        if not waiting:   # (or all of it waits out a retry: new events go behind it all the same)
            self.backlog = self.still_waiting()
            return
        left = self.time_left(until)   # (after the table's query: it takes its time too)
        if left is None:
            return
        try:
            done = [(waiting[at][0], state, error)
                    for at, state, error in self.send([(call, request) for _, call, request in waiting], left)]
        except Exception as exc:   # (as above)
            self.back_off(f"the events could not be sent: {exc!r:.200}")
            return
        if done:
            try:
                gave_up = self.spool.mark(done)
            except sqlite3.Error as exc:  # sent again next time: a replay changes nothing
                KSR.err(f"callgate: the event spool {SPOOL_FILE} cannot be written: {exc}\n")
                return
            for row in gave_up:
                KSR.err(f"callgate: event {row} of the spool refused after {RETRY_TRIES} tries (callgate failed "
                        "it each time); the call's next event goes\n")
        # nothing left in the table (none waiting out a retry either, which `pending` leaves out): the next
        # round's events go straight away
        self.backlog = first_of_call or len(waiting) == SENDER_BATCH or self.still_waiting()

    def send(self, events: list[tuple[str, bytes]], timeout: float) -> list[tuple[int, int, str]]:
        """Send events (call, request) in one call, answered within `timeout` seconds: (position, SENT, REFUSED or
        RETRY, error) of each that
        callgate answered, refused for good, or failed for a reason to try again later (RETRIED); the others
        wait (and back off if callgate cannot take them).  A call's events go together to CallEventsInOrder,
        where callgate stops a call at its first event not answered (the call's events after it wait too); to a
        callgate older than it (UNIMPLEMENTED: nothing applied), each call's first event alone, in CallEvents,
        tried again in order every IN_ORDER_RETRY_S."""
        if not self.in_order and time.monotonic() >= self.in_order_retry:
            self.in_order = True   # (callgate upgraded since?)
        ordered: Any = getattr(self.decisions, "CallEventsInOrder", None)
        if self.in_order and ordered is None:   # (this host's generated code is older than this script)
            self.in_order, self.in_order_retry = False, time.monotonic() + IN_ORDER_RETRY_S
        order: Sequence[int] = range(len(events))
        if not self.in_order:   # each call's first event alone
            first: dict[str, int] = {}
            for at, (call, _) in enumerate(events):
                first.setdefault(call, at)
            order = sorted(first.values())
        done: list[tuple[int, int, str]] = []
        stopped: set[str] = set()   # (calls whose later events wait)
        # one unary call for the whole batch: a pipelined stream costs this process ~200 us of CPU per event in
        # grpcio's sync API (each message through its threads), a batch a few us per event.  The batch is parsed
        # whole from its events' bytes (field 1, each framed: what its serialization is), one call into the
        # parser where a message added and merged an event cost ~4 us each; only a batch that does not parse is
        # made one event at a time, to find the events that are no message
        batch_type = self.pb.CallEventBatch
        sent = list(order)
        parts: list[bytes] = []
        for at in sent:
            request = events[at][1]
            parts += (_head(len(request)), request)
        try:
            batch = batch_type.FromString(b"".join(parts))
        except self.decode_error:
            batch, sent = batch_type(), []
            for at in order:
                call, request = events[at]
                if call in stopped:
                    continue
                try:
                    batch.events.add().MergeFromString(request)
                except self.decode_error as exc:   # no event (a record damaged past its crc): refused for good
                    del batch.events[-1]
                    stopped.add(call)
                    KSR.err(f"callgate: an event of call {call!r:.100} is no CallEventRequest, refused: {exc}\n")
                    done.append((at, REFUSED, f"not a CallEventRequest: {exc}"))
                    continue
                sent.append(at)
        if not sent:
            return done
        waiting = ""
        try:
            call_events = ordered if self.in_order and ordered is not None else self.decisions.CallEvents
            t0 = time.monotonic()
            try:
                reply = call_events(batch, timeout=timeout, metadata=METADATA)
            finally:
                self.round_took = time.monotonic() - t0
        except self.grpc.RpcError as exc:
            if exc.code() == self.grpc.StatusCode.UNIMPLEMENTED and self.in_order:
                KSR.warn("callgate: callgate has no CallEventsInOrder (it is older than this script): one event "
                         "of a call per batch\n")
                self.in_order, self.in_order_retry = False, time.monotonic() + IN_ORDER_RETRY_S
                return done   # (nothing applied: the events wait, sent again one a call)
            waiting = exc.code().name
            if exc.code() == self.grpc.StatusCode.UNIMPLEMENTED:  # a rolling upgrade done proxies first
                waiting += " (callgate is older than this script: upgrade callgate first; the events wait)"
        else:
            # a reply that does not answer every event of the batch is no answer: nothing is taken as sent
            whole = len(reply.results) == len(sent)
            if not whole:
                waiting = f"{len(reply.results)} results for {len(sent)} events"
            whiches = [result.WhichOneof("result") for result in reply.results] if whole else []
            if whole and whiches.count("reply") == len(sent):   # the usual batch: every event answered, each
                # looked at once, not three times
                done.extend((at, SENT, "") for at in sent)
                whiches = []
            halted: set[str] = set()   # calls with an event not answered here: their later events wait (an event
            # sent before its call's event that is no message was answered all the same)
            for at, result, which in zip(sent, reply.results, whiches, strict=True) if whiches else ():
                call = events[at][0]
                if call in halted:
                    continue
                if which == "reply":
                    done.append((at, SENT, ""))
                    continue
                halted.add(call)
                event = batch.events[sent.index(at)]   # (the message, for its call id: only an event not answered)
                name = next((c.name for c in self.grpc.StatusCode if c.value[0] == result.error_code), "UNKNOWN")
                if which == "error" and name in FINAL:
                    # refused for good: kept as refused, and the call's next event goes in the next round
                    KSR.warn(f"callgate: event {event.call_id} refused ({name}): {result.error}\n")
                    done.append((at, REFUSED, f"{name}: {result.error}"))
                elif which == "error" and name in RETRIED:   # its call waits for it, the others go on (its own
                    # wait, not the sender's back-off)
                    self.retried += 1
                    if self.retried == 1 or self.retried % 100 == 0:
                        KSR.warn(f"callgate: event {event.call_id} failed ({name}): {result.error}; tried again "
                                 f"later (at most {RETRY_TRIES} tries), the call's next events held behind it "
                                 f"({self.retried} such failure(s) since the sender started)\n")
                    done.append((at, RETRY, f"{name}: {result.error}"))
                else:  # callgate cannot take it now (its store is busy or full), or said nothing: this call waits
                    waiting = waiting or f"{name}: {result.error or 'no answer'}"
        if waiting and not any(state == SENT for _, state, _ in done):   # (one call's event that waits while the
            # others are answered holds back its own call only, not the sender)
            self.back_off(f"spooled events wait for callgate ({waiting[:200]})")
        else:
            self.failures = 0
        return done

    def still_waiting(self) -> bool:
        """Whether events wait in the spool's table (True when it cannot tell: they are looked for again)."""
        try:
            return self.spool.waiting()
        except sqlite3.Error:
            return True

    @functools.cached_property
    def decode_error(self) -> type[Exception]:
        from google.protobuf.message import DecodeError

        return DecodeError

    def back_off(self, why: str) -> None:
        """Wait before the next try: 0.4 s doubling to 5 s while it fails (logged at the 1st, 5th, every 50th)."""
        self.failures += 1
        wait = min(5.0, 0.2 * 2 ** min(self.failures, 5))
        self.backoff_until = time.monotonic() + wait
        if self.failures in (1, 5) or self.failures % 50 == 0:
            KSR.warn(f"callgate: {why}; next try in {wait:.1f} s\n")

    def events_of(self, raw: bytes) -> list[tuple[str, str, bytes]]:
        """The events (key, call, request) of a raw record (`spool_raw`), as the SIP worker would have made
        them itself (`call_events`); ValueError for a record it cannot read."""
        if not raw.startswith(RAW_TAG_BYTES):
            raise ValueError(f"not a raw record of this script ({len(raw)} bytes)")
        parts = raw[len(RAW_TAG_BYTES):].decode("utf-8", "surrogateescape").split("\0", 4)
        if len(parts) != 5 or not parts[1].isdigit():
            raise ValueError(f"a raw record without its fields ({len(raw)} bytes)")
        kinds, at, outcome, text, header_user = parts
        try:   # a PBX's header bytes that are no UTF-8 (or cut inside a character) name nobody: the record's user
            header_user.encode("utf-8")
        except UnicodeEncodeError:
            header_user = ""
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):   # (nested past the parser's depth: no record `remember` writes)
            raise ValueError(f"{kinds} of a call whose record is not JSON ({len(text)} characters)") from None
        if not isinstance(record, dict):
            raise ValueError(f"{kinds} of a call whose record is not an object ({len(text)} characters)")
        call = {str(k): str(v) for k, v in record.items()}
        call_id, tenant = call.get("call", ""), call.get("tenant", "")
        if not call_id or (kinds == "ENDED" and not tenant):
            raise ValueError(f"{kinds} of a call record without its call or tenant (call {call_id!r:.100})")
        try:
            return [(f"{call_id}:{kind}", call_id, r.SerializeToString())
                    for kind, r in self.call_events(kinds.split(","), call, header_user, outcome, int(at))]
        except (ValueError, TypeError, OverflowError) as exc:   # what a message refuses: this record's, not the
            # round's (an ImportError, MemoryError, ... is raised: the round is tried again, nothing lost)
            raise ValueError(f"{kinds} of call {call_id!r:.100}: its events cannot be made: {exc!r:.120}") from exc

    def report(self) -> None:
        """Log the spool's size and age while events wait; write them for node_exporter's textfile collector."""
        try:
            pending, oldest, refused = self.spool.stats()
            self.spool.purge(3600, 7 * 86400)
        except sqlite3.Error:
            return
        if pending:
            KSR.notice(f"callgate: event spool: {pending} waiting, the oldest {oldest:.0f} s old, {refused} refused\n")
        prom = os.path.join(os.path.dirname(SPOOL_FILE) or ".", "callgate_spool.prom")
        try:
            with open(prom + ".tmp", "w", encoding="ascii") as handle:
                handle.write("# HELP callgate_spool_events Call events in Kamailio's spool, by state\n"
                             "# TYPE callgate_spool_events gauge\n"
                             f'callgate_spool_events{{state="pending"}} {pending}\n'
                             f'callgate_spool_events{{state="refused"}} {refused}\n'
                             "# HELP callgate_spool_oldest_seconds Age of the oldest event waiting\n"
                             "# TYPE callgate_spool_oldest_seconds gauge\n"
                             f"callgate_spool_oldest_seconds {oldest:.1f}\n")
            os.replace(prom + ".tmp", prom)
        except OSError:
            pass

    # called only under a configuration without kemi.reply_route_callback / kemi.onsend_route_callback "none"
    # (kamailio.cfg sets both): a Python call for every reply received and every message sent, doing nothing
    def ksr_reply_route(self, msg: Any) -> int:
        return 1

    def ksr_onsend_route(self, msg: Any) -> int:
        return 1
