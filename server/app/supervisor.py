"""`callgate serve`: one worker in this process, or a supervisor of N worker processes.

With `--workers N` (N > 1) the supervisor starts N workers that bind the
same address with SO_REUSEPORT, serves the metrics of all of them, and
starts a new worker when one dies (and stops when they keep dying at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection as mp_connection
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any

from server.app.logs import setup_logging
from server.app.options import SPOOL_DIR, Options, split_address, store_location
from server.app.scrape import StoreCollector, WorkersCollector
from server.app.startup import bind_problem, check_listen, prepare_data_dir
from server.app.worker import serve_worker, worker_main

log = logging.getLogger("callgate.server")


def run(opts: Options) -> int:
    """Start the server as `callgate serve` does; returns the exit code."""
    setup_logging(opts.log_format)
    check_listen(opts.listen)
    prepare_data_dir(opts)
    if opts.workers == 1:
        if opts.metrics:
            metrics_server(opts, None, WorkersCollector(1))
        asyncio.run(serve_worker(opts))
        return 0
    return supervise(opts)


def supervise(opts: Options) -> int:
    from server.worker.spool import Spool

    host, port = split_address(opts.listen)
    if port == 0:
        port = free_port(host)
    worker_opts = Options(**{**opts.__dict__, "listen": f"{host}:{port}", "reuse_port": True})
    sweep_metrics_dirs()
    metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    counts = WorkersCollector(opts.workers)
    if opts.metrics:
        metrics_server(opts, metrics_dir, counts)
    ctx = multiprocessing.get_context("spawn")
    workers: list[Any] = []

    def start() -> Any:
        p = ctx.Process(target=worker_main, args=(worker_opts, opts.log_format), daemon=False)
        p.start()
        log.info("worker started", extra={"event": "worker_started", "worker_pid": p.pid})
        return p

    workers = [start() for _ in range(opts.workers)]
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    # The supervisor sleeps until a worker dies (its sentinel) or a signal comes (the wakeup socket): nothing to do
    # at rest, where it looked at its workers five times a second
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("supervising", extra={"event": "supervising", "workers": opts.workers, "address": f"{host}:{port}"})
    spool = Spool(opts.data_dir / SPOOL_DIR)
    quick_deaths: list[float] = []   # workers that died within seconds of their start
    started_at = {p.pid: time.monotonic() for p in workers}
    failed = False
    while not stopping:
        mp_connection.wait([p.sentinel for p in workers] + [wake_r], timeout=WAKE_EVERY_S)
        with contextlib.suppress(OSError):
            while wake_r.recv(4096):
                pass
        counts.alive = sum(p.is_alive() for p in workers)
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
                counts.restarts += 1
                started_at[workers[i].pid] = time.monotonic()
    signal.set_wakeup_fd(previous_wakeup)
    wake_r.close()
    wake_w.close()
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


METRICS_PREFIX = "callgate-metrics-"
WAKE_EVERY_S = 5.0  # a worker's death and a signal wake the supervisor at once; this is only a safety net


def sweep_metrics_dirs(parent: str | None = None) -> list[str]:
    """Remove the workers' metrics folders of supervisors that are gone (a SIGKILL leaves its folder behind:
    `callgate-metrics-<pid>-*` in the temporary directory); returns them."""
    from server.worker.spool import alive

    removed = []
    base = parent or tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in names:
        head = name.removeprefix(METRICS_PREFIX).partition("-")[0]
        if not name.startswith(METRICS_PREFIX) or not head.isdigit() or alive(int(head)):
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        removed.append(name)
    return removed


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for --workers N with port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def metrics_server(opts: Options, multiproc_dir: str | None, workers: WorkersCollector) -> None:
    """Serve /metrics at `--metrics`: the workers' samples (from `multiproc_dir` when there are several), the
    store's figures and the supervisor's."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    from engine.cli import CliError

    host, port = split_address(opts.metrics)
    registry = REGISTRY
    if multiproc_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    registry.register(StoreCollector(store_location(opts), opts.metrics_tenants))
    registry.register(workers)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise CliError(f"--metrics {opts.metrics}: {bind_problem(exc)}; choose another with --metrics HOST:PORT, "
                       "or --metrics '' for none") from None
    log.info("metrics", extra={"event": "metrics", "address": f"http://{host}:{port}/metrics"})
