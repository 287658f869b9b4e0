"""One worker: a gRPC server over the store, every tenant's snapshot and the background jobs.

A worker holds the compiled snapshots of every tenant and nothing else of
its own: it loads them from the store at start, and a watcher polls the
store's versions (every `--poll` seconds) and installs new ones off the
request path, so a push through any worker is in force in all of them
within a second.  `build_worker` makes it (bound, not yet serving);
`run_worker` serves until SIGTERM/SIGINT, then stops gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from server import metrics
from server.app.health import STORE as STORE_HEALTH
from server.app.health import Health
from server.app.logs import setup_logging
from server.app.options import SPOOL_DIR, Options, auth_enabled, loopback, store_location
from server.rpc.admin import AdminServicer
from server.rpc.decisions import DecisionsServicer
from server.rules.billing import PaymentGateway, SandboxGateway
from server.rules.documents import BlobStore
from server.store.api import Store, StoreError
from server.store.location import open_store
from server.worker.compiler import Compiler
from server.worker.jobs import Jobs, SlowGateway
from server.worker.spool import Spool
from server.worker.state import State

log = logging.getLogger("callgate.server")

JOBS_EVERY_S = 1.0     # background jobs at rest (top-ups, expiry, renewals); every tick while call events come
SPOOL_CHECK_S = 5.0    # the upload spool's size (a directory listing) for its gauge
HEALTH_CALM_S = 5.0    # health's tick while every name is SERVING: a safety net, store faults wake it at once


class GenericOnly:
    """`server` as the generated `add_*Servicer_to_server` functions see it: every method found by the generic
    lookup (a dict per service), none registered.

    Why: grpc.aio's serving loop keeps one pending "request call" per registered method plus one for the rest,
    and for every call it accepts it waits on all of them again (asyncio.wait adds and removes a callback on
    each).  callgate's ~33 methods (Admin alone has 23) made that about 5-8 % of a worker's CPU per Inbound
    call, where a server with Decisions' 6 pays little (measured: README, "Two workers against two bare
    processes").  Unregistered, one request call serves every method.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Not registered: the same handlers came through `add_generic_rpc_handlers`."""


@dataclass
class Worker:
    """A worker made and bound to its port, not yet serving (`build_worker`)."""

    opts: Options
    store: Store
    compiler: Compiler
    state: State
    server: grpc.aio.Server
    health: Health
    health_servicer: Any
    background: Jobs
    port: int
    services: tuple[str, str]  # the full names of Decisions and Admin


async def build_worker(opts: Options) -> Worker:
    """Everything a worker serves with, bound to `opts.listen` (CliError when it cannot be)."""
    metrics.start()
    store = open_store(store_location(opts))
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
    elif not loopback(opts.listen):
        log.warning("listening beyond loopback with no authentication: anyone who reaches the port may push "
                    "any tenant's settings; use --auth tokens", extra={"event": "insecure"})
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.so_reuseport", 1 if opts.reuse_port else 0),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ])
    services = GenericOnly(server)
    decisions_pb2_grpc.add_DecisionsServicer_to_server(DecisionsServicer(state), services)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(
        state, max_document=limit, upload_rate=opts.upload_mb_per_s * 1024 * 1024,
        blobs=BlobStore(opts.data_dir / "documents"), max_upload=opts.max_upload_mb * 1024 * 1024,
        max_list=opts.max_list_entries), services)
    gateway: PaymentGateway = SandboxGateway(store)
    if opts.jobs.gateway_latency_s:
        gateway = SlowGateway(gateway, opts.jobs.gateway_latency_s)
    engine = state.engine
    background = Jobs(store, engine.snapshots, gateway, opts.jobs, lambda: engine.generation)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    names = (decisions_pb2.DESCRIPTOR.services_by_name["Decisions"].full_name,
             admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name)
    # what reflection.enable_server_reflection does for a grpc.aio server, through GenericOnly
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer((*names, health.SERVICE_NAME, reflection.SERVICE_NAME)), services)
    health_state = Health(health_servicer, health_pb2.HealthCheckResponse.SERVING,
                    health_pb2.HealthCheckResponse.NOT_SERVING, decisions=names[0])
    for name in ("", *names, STORE_HEALTH):
        await health_state.set(name, False)
    store.faults.listeners.append(health_state.store_fault)
    store.faults.listeners.append(lambda op, kind: metrics.STORE_ERRORS.labels(op, kind).inc())
    if opts.tls_cert is not None and opts.tls_key is not None:
        from server.tls import server_credentials

        add_port = functools.partial(server.add_secure_port, opts.listen,
                                     server_credentials(opts.tls_cert, opts.tls_key, opts.client_ca))
    else:
        if not loopback(opts.listen):
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

    return Worker(opts, store, compiler, state, server, health_state, health_servicer, background, port, names)


async def run_worker(w: Worker, ready: Any = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully; `ready(port)` is called once it serves."""
    opts, store, compiler, state, server, health = w.opts, w.store, w.compiler, w.state, w.server, w.health
    background, port, names = w.background, w.port, w.services
    changed = await state.refresh()
    log.info("settings loaded", extra={"event": "loaded", "tenants": len(changed)})
    await server.start()
    await health.set("", True)
    await health.set(names[1], True)
    await health.tick(bool(state.engine.snapshots), store)
    host = opts.listen.rpartition(":")[0]
    log.info("listening", extra={"event": "listening", "address": f"{host}:{port}"})
    if ready is not None:
        ready(port)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def watch() -> None:
        # At rest this loop is all a worker does: every tick must cost next to nothing.  The store's poll (one
        # pragma on SQLite) runs every tick, for pushes to be in force everywhere within a second; the gauges are
        # written when they change; the background jobs, whose every round is a store read in a thread, run at
        # every tick only while this worker records call events (a charge may cross a top-up threshold), else
        # once a second (a declined top-up is retried 30 s later at the soonest, expiry and renewals are slower).
        next_spool_check = next_jobs = 0.0
        gauges: tuple[int, int, int] | None = None
        spool_bytes = 0
        events = metrics.call_events()
        stopped = asyncio.ensure_future(stopping.wait())
        while not stopping.is_set():
            now = loop.time()
            try:
                changed = await state.refresh()
                for tenant, version in changed:
                    log.info("version installed", extra={"event": "installed", "tenant": tenant, "version": version})
                if bool(state.engine.snapshots) != health.serving(health.decisions):
                    health.wake.set()  # settings in or out of this worker: its health says so now
                if now >= next_spool_check:  # a directory listing: every few seconds is enough
                    next_spool_check = now + SPOOL_CHECK_S
                    spool_bytes = compiler.spool.bytes_of_mine()
                figures = (len(state.failed), len(state.engine.snapshots), spool_bytes)
                if figures != gauges:
                    gauges = figures
                    metrics.VERSIONS_BEHIND.set(figures[0])
                    metrics.TENANTS.set(figures[1])
                    metrics.SPOOL_BYTES.set(figures[2])
                metrics.flush()
            except StoreError:  # counted, logged (once per interval) and shown by health by the store itself
                pass
            except Exception:  # a bug: log, keep serving, try again
                log.exception("refresh from the store failed")
            recorded = metrics.call_events()
            if recorded != events or now >= next_jobs:
                events, next_jobs = recorded, now + JOBS_EVERY_S
                try:
                    await background.tick()
                except StoreError:  # counted and logged by the store; the next tick tries again
                    pass
                except Exception:  # a gateway outage or a bug: the next tick tries again
                    log.exception("background work (top-ups, renewals, expiry) failed")
            await asyncio.wait((stopped,), timeout=opts.poll)
        stopped.cancel()

    async def watch_health() -> None:
        # A task of its own: the store's figures may wait on the network (a poll, a top-up claim) for seconds
        # while the database is unreachable, and health must say so as soon as a store call has failed (it
        # wakes this task), not once those calls give up.  While every name is SERVING it sleeps until woken:
        # by a store fault (from any thread) or by the watcher when settings come into or leave this worker;
        # otherwise it ticks every --poll (the store's probe, once a second, until a write succeeds again).
        health.attach(loop)
        while not stopping.is_set():
            health.wake.clear()
            try:
                await health.tick(bool(state.engine.snapshots), store)
            except Exception:  # a bug: log, keep serving, try again
                log.exception("health check failed")
            calm = health.serving(health.decisions) and health.serving(STORE_HEALTH)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(health.wake.wait(), HEALTH_CALM_S if calm else opts.poll)

    watcher = asyncio.create_task(watch())
    health_watcher = asyncio.create_task(watch_health())
    warming = asyncio.create_task(compiler.warm())
    await stopping.wait()
    log.info("stopping: finishing calls in flight", extra={"event": "stopping", "grace_s": opts.grace})
    await w.health_servicer.enter_graceful_shutdown()
    await server.stop(opts.grace)
    for task in (watcher, health_watcher):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with contextlib.suppress(Exception):
        await warming
    metrics.flush()
    compiler.close()
    store.close()
    log.info("stopped", extra={"event": "stopped"})




async def serve_worker(opts: Options, ready: Any = None) -> None:
    """Build one worker and run it until SIGTERM/SIGINT; `ready(port)` is called once it serves."""
    await run_worker(await build_worker(opts), ready)


def worker_main(opts: Options, log_format: str) -> None:
    """A supervised worker process's entry point."""
    setup_logging(log_format)
    asyncio.run(serve_worker(opts))


