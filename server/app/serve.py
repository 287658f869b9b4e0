"""`callgate serve`: the gRPC server, one process or N workers sharing a port.

One worker (`serve_worker`) holds the compiled snapshots of every tenant and
nothing else of its own: it loads them from the store at start, and a
watcher polls the store's versions (every 0.2 s by default) and installs
new ones off the request path, so a push through any worker is in force in
all of them within a second.

With `--workers N` (N > 1) a supervisor process starts N workers that bind
the same address with SO_REUSEPORT, serves the metrics of all of them, and
starts a new worker when one dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.rules.calls import EventOptions
from server.worker.jobs import MAX_TOPUP_ATTEMPTS, JobOptions

log = logging.getLogger("callgate.server")

DEFAULT_LISTEN = "127.0.0.1:50051"
STORE_FILE = "callgate.sqlite"
SPOOL_DIR = "spool"

# LogRecord attributes that are not `extra` fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, pid, logger, message and the `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "pid": record.process, "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Plain lines for people: time, level, pid, message, then the `extra` fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        return super().format(record) + (f"  {extra}" if extra else "")


def setup_logging(fmt: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@dataclass(frozen=True)
class Options:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path("data")
    workers: int = 1
    metrics: str = "127.0.0.1:9464"
    seed: Path | None = None
    seed_credit: str | None = None
    poll: float = 0.2
    grace: float = 5.0
    max_message_mb: int = 64
    max_upload_mb: int = 10
    upload_mb_per_s: float = 25.0
    jobs: JobOptions = field(default_factory=JobOptions)
    events: EventOptions = field(default_factory=EventOptions)
    log_format: str = "json"
    reuse_port: bool = False
    auth: str = "auto"
    admin_per_minute: int = 600
    max_list_entries: int = 10_000_000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    startup_check_s: float = 30.0


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def auth_enabled(opts: Options) -> bool:
    """`auto`: tokens are required unless the server listens on loopback only."""
    return opts.auth == "tokens" or (opts.auth == "auto" and not _loopback(opts.listen))


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def serve_worker(opts: Options, ready: Any = None) -> None:
    """Run one worker until SIGTERM/SIGINT; `ready(port)` is called once it serves."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
    from server import metrics
    from server.app.health import STORE as STORE_HEALTH
    from server.app.health import Health
    from server.rpc.service import AdminServicer, Compiler, DecisionsServicer, State
    from server.rules.billing import PaymentGateway, SandboxGateway
    from server.rules.documents import BlobStore
    from server.store.api import StoreError
    from server.store.sqlite import SQLiteStore
    from server.worker.jobs import Jobs, SlowGateway
    from server.worker.spool import Spool

    store = SQLiteStore(opts.data_dir / STORE_FILE)
    compiler = Compiler(Spool(opts.data_dir / SPOOL_DIR))
    state = State(store, compiler, opts.events)
    limit = opts.max_message_mb * 1024 * 1024
    interceptors = []
    if auth_enabled(opts):
        from server.rpc.auth import Authenticator, AuthInterceptor

        async def audit(row: dict[str, Any]) -> None:
            try:
                await asyncio.to_thread(store.add_audit, row)
            except Exception:  # an audit row that cannot be written is logged: the call's answer stands
                log.exception("audit row not written", extra={"event": "audit_failed", "row": row})

        interceptors.append(AuthInterceptor(Authenticator(store.get_token), audit, opts.admin_per_minute))
    elif not _loopback(opts.listen):
        log.warning("listening beyond loopback with no authentication: anyone who reaches the port may push "
                    "any tenant's settings; use --auth tokens", extra={"event": "insecure"})
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.so_reuseport", 1 if opts.reuse_port else 0),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ])
    decisions_pb2_grpc.add_DecisionsServicer_to_server(DecisionsServicer(state), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(
        state, max_document=limit, upload_rate=opts.upload_mb_per_s * 1024 * 1024,
        blobs=BlobStore(opts.data_dir / "documents"), max_upload=opts.max_upload_mb * 1024 * 1024,
        max_list=opts.max_list_entries), server)
    gateway: PaymentGateway = SandboxGateway(store)
    if opts.jobs.gateway_latency_s:
        gateway = SlowGateway(gateway, opts.jobs.gateway_latency_s)
    background = Jobs(store, state.engine._snapshots, gateway, opts.jobs)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (decisions_pb2.DESCRIPTOR.services_by_name["Decisions"].full_name,
             admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    health = Health(health_servicer, health_pb2.HealthCheckResponse.SERVING,
                    health_pb2.HealthCheckResponse.NOT_SERVING, decisions=names[0])
    for name in ("", *names, STORE_HEALTH):
        await health.set(name, False)
    store.faults.listeners.append(health.store_fault)
    store.faults.listeners.append(lambda op, kind: metrics.STORE_ERRORS.labels(op, kind).inc())
    if opts.tls_cert is not None and opts.tls_key is not None:
        from server.tls import server_credentials

        add_port = functools.partial(server.add_secure_port, opts.listen,
                                     server_credentials(opts.tls_cert, opts.tls_key, opts.client_ca))
    else:
        if not _loopback(opts.listen):
            log.warning("listening beyond loopback in plaintext: give --tls-cert and --tls-key",
                        extra={"event": "plaintext"})
        add_port = functools.partial(server.add_insecure_port, opts.listen)
    try:
        port = add_port()
    except RuntimeError:  # grpcio says only "Failed to bind"
        port = 0
    if port == 0:
        from engine.cli import CliError

        raise CliError(f"--listen {opts.listen}: cannot listen there (address in use, or not this machine's); "
                       "choose another --listen")

    changed = await state.refresh()
    log.info("settings loaded", extra={"event": "loaded", "tenants": len(changed)})
    await server.start()
    await health.set("", True)
    await health.set(names[1], True)
    await health.tick(bool(state.engine.tenants()), store)
    host = opts.listen.rpartition(":")[0]
    log.info("listening", extra={"event": "listening", "address": f"{host}:{port}"})
    if ready is not None:
        ready(port)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def watch() -> None:
        while not stopping.is_set():
            try:
                changed = await state.refresh()
                for tenant, version in changed:
                    log.info("version installed", extra={"event": "installed", "tenant": tenant, "version": version})
                metrics.flush()
            except StoreError:  # counted, logged (once per interval) and shown by health by the store itself
                pass
            except Exception:  # a bug: log, keep serving, try again
                log.exception("refresh from the store failed")
            # every tick, whoever installed the snapshots (this worker's own push too)
            await health.tick(bool(state.engine.tenants()), store)
            try:
                await background.tick()
            except StoreError:  # counted and logged by the store; the next tick tries again
                pass
            except Exception:  # a gateway outage or a bug: the next tick tries again
                log.exception("background work (top-ups, renewals, expiry) failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), opts.poll)

    watcher = asyncio.create_task(watch())
    warming = asyncio.create_task(compiler.warm())
    await stopping.wait()
    log.info("stopping: finishing calls in flight", extra={"event": "stopping", "grace_s": opts.grace})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(opts.grace)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    with contextlib.suppress(Exception):
        await warming
    metrics.flush()
    compiler.close()
    store.close()
    log.info("stopped", extra={"event": "stopped"})


def _seed(opts: Options) -> None:
    """Push the --seed document if its tenant has no settings yet (first start of `make run`)."""
    from engine.snapshot import build
    from server.rules.billing import to_micro
    from server.store.api import TenantFacts, VersionConflict
    from server.store.sqlite import SQLiteStore

    assert opts.seed is not None
    built = build(opts.seed.read_bytes())
    store = SQLiteStore(opts.data_dir / STORE_FILE)
    try:
        if store.current_versions():
            # a store that holds settings is not new: seeding it again could only hide a loss
            log.info("seed skipped: the store already holds settings (--seed applies to a new store only)",
                     extra={"event": "seed_skipped", "tenant": built.tenant})
            return
        document = built.document or opts.seed.read_bytes()
        version = store.commit_version(built.tenant, "push", document, built.blob, 0, f"seed from {opts.seed}",
                                       numbers=built.numbers, facts=TenantFacts(built.status, *built.backup))
        log.info("seeded", extra={"event": "seeded", "tenant": built.tenant, "version": version})
        if opts.seed_credit:
            currency = json.loads(document)["currency"]
            store.credit(built.tenant, to_micro(opts.seed_credit), "credit", "seed", currency)
            log.info("opening credit", extra={"event": "credit", "tenant": built.tenant, "amount": opts.seed_credit})
    except VersionConflict:
        log.info("seed skipped: tenant already has settings", extra={"event": "seed_skipped", "tenant": built.tenant})
    finally:
        store.close()


def _worker_main(opts: Options, log_format: str) -> None:
    setup_logging(log_format)
    asyncio.run(serve_worker(opts))


def _metrics_server(addr: str, multiproc_dir: str | None) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    from engine.cli import CliError

    host, port = _split(addr)
    try:
        if multiproc_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
            start_http_server(port, addr=host, registry=registry)
        else:
            start_http_server(port, addr=host)
    except OSError as exc:
        raise CliError(f"--metrics {addr}: {_bind_problem(exc)}; choose another with --metrics HOST:PORT, "
                       "or --metrics '' for none") from None
    log.info("metrics", extra={"event": "metrics", "address": f"http://{host}:{port}/metrics"})


def _bind_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another callgate, or another program, listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface of this machine has that address"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


def _check_listen(listen: str) -> None:
    """Refuse an address something already listens on, before any worker starts.

    Bound without SO_REUSEPORT: workers share their port with it, and so
    would silently share it with another callgate started on the same port.
    """
    from engine.cli import CliError

    host, port = _split(listen)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CliError(f"--listen {listen}: cannot resolve {host!r} ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as grpcio sets it: the connections of a server that just stopped (TIME_WAIT) do not
        # count; a listening socket does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
            probe.listen(1)
        except OSError as exc:
            raise CliError(f"--listen {listen}: {_bind_problem(exc)}; stop what listens there or choose another "
                           "--listen") from None


def prepare_data_dir(opts: Options) -> None:
    """Everything `serve` checks on the data directory before any worker starts (one-line errors)."""
    from engine.cli import CliError
    from server.store.api import NumberTaken, OwnershipConflicts, StoreError
    from server.store.sqlite import SQLiteStore
    from server.worker.spool import Spool

    try:
        opts.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--data-dir {opts.data_dir}: cannot create it ({exc.strerror})") from None
    try:
        store = SQLiteStore(opts.data_dir / STORE_FILE)  # create or migrate the store once, before any worker
        try:
            finished, damaged = store.quick_check(opts.startup_check_s) if opts.startup_check_s else (True, "")
            if damaged:
                raise CliError(f"{store.path} is damaged: {damaged}; callgate will not serve it. Stop everything "
                               f"that uses it, run `callgate store check --data-dir {opts.data_dir}` for the full "
                               "check and restore the store from a backup")
            if not finished:
                log.warning("the start-up check of the store did not finish in time: run `callgate store check` "
                            "when the server can be stopped", extra={"event": "startup_check_unfinished",
                                                                     "budget_s": opts.startup_check_s})
            conflicts = store.ownership_conflicts()
        finally:
            store.close()
    except StoreError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"--data-dir {opts.data_dir}: {exc.strerror or exc}") from None
    if conflicts:  # a store from before ownership lists numbers under several tenants: an operator decides
        error = OwnershipConflicts({n: [t for t, _ in holders] for n, holders in conflicts.items()},
                                   str(opts.data_dir))
        log.error("numbers held twice", extra={"event": "ownership_conflicts",
                                               "numbers": {n: [t for t, _ in h] for n, h in conflicts.items()}})
        raise CliError(str(error))
    Spool(opts.data_dir / SPOOL_DIR).sweep()   # uploads of workers that are gone (a crash, a kill -9)
    if opts.seed:
        try:
            _seed(opts)
        except (NumberTaken, StoreError) as exc:
            raise CliError(f"--seed {opts.seed}: {exc}") from None


def run(opts: Options) -> int:
    """Start the server as `callgate serve` does; returns the exit code."""
    setup_logging(opts.log_format)
    _check_listen(opts.listen)
    prepare_data_dir(opts)
    if opts.workers == 1:
        if opts.metrics:
            _metrics_server(opts.metrics, None)
        asyncio.run(serve_worker(opts))
        return 0
    return _supervise(opts)


def _supervise(opts: Options) -> int:
    from server.worker.spool import Spool

    host, port = _split(opts.listen)
    if port == 0:
        port = free_port(host)
    worker_opts = Options(**{**opts.__dict__, "listen": f"{host}:{port}", "reuse_port": True})
    metrics_dir = tempfile.mkdtemp(prefix="callgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if opts.metrics:
        _metrics_server(opts.metrics, metrics_dir)
    ctx = multiprocessing.get_context("spawn")
    workers: list[Any] = []

    def start() -> Any:
        p = ctx.Process(target=_worker_main, args=(worker_opts, opts.log_format), daemon=False)
        p.start()
        log.info("worker started", extra={"event": "worker_started", "worker_pid": p.pid})
        return p

    workers = [start() for _ in range(opts.workers)]
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("supervising", extra={"event": "supervising", "workers": opts.workers, "address": f"{host}:{port}"})
    spool = Spool(opts.data_dir / SPOOL_DIR)
    quick_deaths: list[float] = []   # workers that died within seconds of their start
    started_at = {p.pid: time.monotonic() for p in workers}
    failed = False
    while not stopping:
        time.sleep(0.2)
        for i, p in enumerate(workers):
            if not p.is_alive() and not stopping:
                log.warning("worker died; starting another", extra={"event": "worker_died", "worker_pid": p.pid,
                                                                    "exitcode": p.exitcode})
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(p.pid)
                spool.sweep(dead=p.pid)          # the upload it was receiving, if any
                now = time.monotonic()
                # a worker that fails at start (an error, a crash; not a kill by someone) within seconds, again and
                # again, will not start the next time either: a bad store, a port taken meanwhile
                killed = p.exitcode in (-signal.SIGKILL, -signal.SIGTERM)
                if now - started_at.pop(p.pid, now) < 5 and not killed:
                    quick_deaths = [t for t in quick_deaths if now - t < 60] + [now]
                if len(quick_deaths) >= 5:
                    log.error("workers keep dying at start (5 in a minute): stopping; see their last error above",
                              extra={"event": "crash_loop"})
                    stopping = failed = True
                    break
                workers[i] = start()
                started_at[workers[i].pid] = time.monotonic()
    for p in workers:
        if p.is_alive() and p.pid:
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + opts.grace + 5
    for p in workers:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("supervisor stopped", extra={"event": "stopped"})
    return 1 if failed else 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for --workers N with port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"address to serve gRPC on (default {DEFAULT_LISTEN}; port 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="directory of the SQLite store (created if missing; default ./data)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the port with SO_REUSEPORT (default 1)")
    parser.add_argument("--metrics", default="127.0.0.1:9464", metavar="HOST:PORT",
                        help="Prometheus /metrics address (default 127.0.0.1:9464; '' disables)")
    parser.add_argument("--seed", type=Path, help="settings document to push at start if its tenant has none")
    parser.add_argument("--seed-credit", metavar="AMOUNT",
                        help="with --seed: opening balance credited to a freshly seeded tenant (e.g. 10.00)")
    parser.add_argument("--startup-check-s", type=float, default=30.0, metavar="SECONDS",
                        help="SQLite's quick check of the store before serving, stopped after this long (a damaged "
                             "store is refused; default 30; 0 skips it)")
    parser.add_argument("--poll", type=float, default=0.2,
                        help="seconds between checks of the store for new versions (default 0.2)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds calls in flight get to finish on SIGTERM (default 5)")
    parser.add_argument("--max-message-mb", type=int, default=64,
                        help="largest gRPC message, and so settings document, accepted (default 64)")
    parser.add_argument("--upload-mb-per-s", type=float, default=25.0, metavar="MB",
                        help="read settings uploads (PushSettingsUpload) at most this fast, so that a big push "
                             "does not take the CPU from decisions (default 25; 0: no limit)")
    parser.add_argument("--max-list-entries", type=int, default=10_000_000, metavar="N",
                        help="entries a tenant's blacklist or off-hours blacklist may hold (default 10,000,000)")
    parser.add_argument("--max-upload-mb", type=int, default=10,
                        help="largest document image accepted, per file (default 10)")
    parser.add_argument("--topup-retry-s", type=float, default=30.0, metavar="SECONDS",
                        help="first retry of a declined auto top-up; doubles each time up to an hour, "
                             f"{MAX_TOPUP_ATTEMPTS} attempts (default 30)")
    parser.add_argument("--topup-stale-s", type=int, default=60, metavar="SECONDS",
                        help="a top-up claimed this long ago by a worker that died is taken over; the gateway's "
                             "idempotency key makes sure it is not charged twice (default 60)")
    parser.add_argument("--sandbox-latency-ms", type=int, default=0, metavar="MS",
                        help="the sandbox payment gateway answers after this long, as a real one does "
                             "(default 0)")
    parser.add_argument("--ring-timeout-s", type=int, default=600, metavar="SECONDS",
                        help="expire a call ringing this long without an answer or an end (default 600)")
    parser.add_argument("--call-max-s", type=int, default=86_400, metavar="SECONDS",
                        help="talk a call is billed for at most, and an answered call this long without an end "
                             "is expired and charged that much (default 86400)")
    parser.add_argument("--max-clock-skew-s", type=int, default=120, metavar="SECONDS",
                        help="a call event stamped more than this ahead of the server's clock is refused "
                             "(INVALID_ARGUMENT: the proxy's clock is wrong; default 120)")
    parser.add_argument("--max-event-age-s", type=int, metavar="SECONDS",
                        help="a call event older than this is refused; younger late events are recorded, as a "
                             "proxy replays what it could not deliver (default: --call-max-s)")
    parser.add_argument("--reserve-max-s", type=int, default=3_600, metavar="SECONDS",
                        help="the most talk one outbound call or forwarded leg holds credit for from its RINGING "
                             "(its RINGING reply's max_duration_s); lower shares a small balance among more "
                             "parallel calls (default 3600; at most --call-max-s)")
    parser.add_argument("--auth", choices=("auto", "tokens", "off"), default="auto",
                        help="bearer tokens (callgate tokens create) required on every call but health and "
                             "reflection: 'tokens' always, 'auto' (default) unless listening on loopback only")
    parser.add_argument("--admin-calls-per-minute", type=int, default=600, metavar="N",
                        help="with --auth: Admin calls a token may make per minute, per worker (default 600; 0: no "
                             "limit); beyond, RESOURCE_EXHAUSTED with when to try again")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate (chain)")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="... and this private key")
    parser.add_argument("--client-ca", type=Path, metavar="PEM",
                        help="mutual TLS: require a client certificate signed by this CA")
    parser.add_argument("--log-format", choices=("json", "text"), default="json",
                        help="log lines as JSON objects (default) or plain text")


def options_from(args: argparse.Namespace) -> Options:
    if args.workers < 1 or args.workers > 64:
        raise ValueError("--workers must be 1..64")
    if args.poll <= 0 or args.poll > 5:
        raise ValueError("--poll must be in (0, 5] seconds: pushes must be in force everywhere within a second")
    if not 0 <= args.startup_check_s <= 86_400:
        raise ValueError("--startup-check-s must be 0..86400")
    if not 0 < args.max_upload_mb <= 1024:
        raise ValueError("--max-upload-mb must be 1..1024")
    if not 0 < args.topup_retry_s <= 86_400:
        raise ValueError("--topup-retry-s must be in (0, 86400]")
    if args.ring_timeout_s < 1 or args.call_max_s < 1 or args.topup_stale_s < 1:
        raise ValueError("--ring-timeout-s, --call-max-s and --topup-stale-s must be at least 1 second")
    max_age = args.call_max_s if args.max_event_age_s is None else args.max_event_age_s
    if not 0 <= args.max_clock_skew_s <= 86_400 or max_age < 1 or not 1 <= args.reserve_max_s:
        raise ValueError("--max-clock-skew-s must be 0..86400 s, --max-event-age-s and --reserve-max-s at least 1 s")
    if args.max_list_entries < 1:
        raise ValueError("--max-list-entries must be at least 1")
    if args.admin_calls_per_minute < 0:
        raise ValueError("--admin-calls-per-minute must be >= 0 (0: no limit)")
    if not 0 <= args.sandbox_latency_ms <= 60_000:
        raise ValueError("--sandbox-latency-ms must be 0..60000")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        raise ValueError("--client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--client-ca", args.client_ca)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
        if path is not None and b"-----BEGIN" not in path.read_bytes()[:100_000]:
            raise ValueError(f"{flag} {path} is not PEM")
    if args.upload_mb_per_s < 0:
        raise ValueError("--upload-mb-per-s must be >= 0 (0: no limit)")
    _split(args.listen)
    if args.metrics:
        _split(args.metrics)
    if args.seed is not None and not args.seed.is_file():
        raise ValueError(f"--seed {args.seed}: no such file")
    if args.seed_credit is not None:
        from server.rules.billing import to_micro

        try:
            if to_micro(args.seed_credit) < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"--seed-credit {args.seed_credit!r} is not an amount such as 10.00") from None
    return Options(listen=args.listen, data_dir=args.data_dir, workers=args.workers, metrics=args.metrics,
                   seed=args.seed, seed_credit=args.seed_credit, poll=args.poll, grace=args.grace,
                   max_message_mb=args.max_message_mb, max_upload_mb=args.max_upload_mb,
                   upload_mb_per_s=args.upload_mb_per_s, auth=args.auth, admin_per_minute=args.admin_calls_per_minute,
                   tls_cert=args.tls_cert, max_list_entries=args.max_list_entries,
                   tls_key=args.tls_key, client_ca=args.client_ca, startup_check_s=args.startup_check_s,
                   jobs=JobOptions(topup_retry_s=args.topup_retry_s, topup_stale_s=args.topup_stale_s,
                                   gateway_latency_s=args.sandbox_latency_ms / 1000,
                                   ring_timeout_s=args.ring_timeout_s,
                                   call_max_s=args.call_max_s,
                                   expire_every_s=min(5.0, args.ring_timeout_s / 2)),
                   events=EventOptions(max_clock_skew_s=args.max_clock_skew_s, max_event_age_s=max_age,
                                       ring_timeout_s=args.ring_timeout_s, call_max_s=args.call_max_s,
                                       reserve_max_s=min(args.reserve_max_s, args.call_max_s)),
                   log_format=args.log_format)
