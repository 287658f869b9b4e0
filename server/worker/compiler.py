"""The compile process: settings documents validated and compiled off the event loop, in a process of their own
(nice 10, SCHED_IDLE), so that a million-number push never takes the CPU the decisions need.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable

from engine.snapshot import Built, build
from server.worker.spool import Spool


def _compile_process_init(parent: int) -> None:
    """In the compile process: yield the CPU to the worker answering calls, and leave when it is gone.

    The nice value matters on small machines: a compile takes a whole core
    for about a second per million listed numbers, and must not take it from
    the decisions.  The parent watch covers kill -9 of the worker.
    """
    import threading

    with contextlib.suppress(OSError):
        os.nice(10)
    # SCHED_IDLE: run only on a core nothing else wants; nice 10 alone still took a share of a
    # contended core from the worker's decisions on a 2-core machine
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def build_file(path: str, fmt: str | None) -> Built:
    """In the compile process: build from a document written to a file."""
    with open(path, "rb") as handle:
        return build(handle.read(), fmt)


class Compiler:
    """Validates and compiles pushed documents in a separate process."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool  # big documents reach the compile process through its files
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_compile_process_init, initargs=(os.getpid(),))
        return self._pool

    def build_blocking(self, document: bytes, fmt: str | None) -> Built:
        """From a thread: compile in the pool and wait (the caller's thread, not the event loop).

        A big document goes to the compile process through a spool file, not
        through pickle: pickling 20 MB holds the GIL for tens of milliseconds
        in the worker that is answering calls, writing a file does not.
        """
        if len(document) < 1 << 20:
            return self._run(build, document, fmt)
        with self.spool.file() as handle:
            handle.write(document)
            handle.flush()
            return self._run(build_file, handle.name, fmt)

    def _run(self, fn: Callable[..., Built], what: str | bytes, fmt: str | None) -> Built:
        # imported here, in the worker: the compile process imports this module too, and metrics imported
        # there would add a process of zeros to the workers' samples (a "lowest over the workers" read 0)
        from server import metrics

        start = time.perf_counter()
        try:
            built = self._executor().submit(fn, what, fmt).result()
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None  # the compile process died (e.g. out of memory): start afresh next time
            metrics.COMPILE_FAILURES.labels("crashed").inc()
            raise
        except ValueError:  # SettingsError included: the document, as sent, will never compile
            metrics.COMPILE_FAILURES.labels("invalid").inc()
            raise
        except Exception:
            metrics.COMPILE_FAILURES.labels("error").inc()
            raise
        metrics.COMPILE_SECONDS.observe(time.perf_counter() - start)
        return built

    async def warm(self) -> None:
        """Start the compile process now, not at the first push: a spawned interpreter imports numpy and
        the engine at normal priority before its initializer lowers it, which took CPU from decisions
        in the middle of the first push (measured as slow calls right where the compile began)."""
        await asyncio.get_running_loop().run_in_executor(None, lambda: self._executor().submit(os.getpid).result())

    async def build(self, document: bytes, fmt: str | None) -> Built:
        return await asyncio.get_running_loop().run_in_executor(None, self.build_blocking, document, fmt)

    async def build_path(self, path: str, fmt: str | None) -> Built:
        """Compile a document already written to a file (a push that arrived in pieces)."""
        return await asyncio.get_running_loop().run_in_executor(None, self._run, build_file, path, fmt)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
