"""What a worker tells grpc.health.v1 and the metrics about itself (spec §7: "a health signal").

Three service names, each SERVING or NOT_SERVING:

* `""` (the server): the worker answers calls.
* `callgate.v1.Decisions`: this worker holds settings (at least one tenant's
  snapshot is in memory), so decisions can be answered.  Checked every tick,
  whoever installed the snapshot (the watcher or this worker's own push).
* `callgate.v1.Store`: the store takes writes.  NOT_SERVING from the first
  store failure (full, I/O, ...; a store locked by other writers from its
  third time in 30 s) until a real write (a probe row) succeeds again, tried
  once a second; damage keeps it NOT_SERVING until it is repaired and the
  worker restarted.  Monitoring tells "decisions fine, billing failing"
  apart by this name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from server import metrics
from server.store.faults import DAMAGE

log = logging.getLogger("callgate.health")

STORE = "callgate.v1.Store"
PROBE_EVERY_S = 1.0


class Health:
    def __init__(self, servicer: Any, serving: Any, not_serving: Any, decisions: str) -> None:
        self._servicer, self._serving, self._not_serving = servicer, serving, not_serving
        self.decisions = decisions
        self._status: dict[str, bool] = {}
        self._faults = 0                    # store faults seen (from any thread)
        self._faults_lock = threading.Lock()
        self._cleared = 0                   # faults up to here are answered by a good probe
        self._last_probe = 0.0
        self._busy: list[float] = []        # when the store was last found locked too long
        self.damaged = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.wake = asyncio.Event()         # set (from any thread) when a fault was reported: tick now

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop whose health task `store_fault` wakes (a fault is told at once, not at the next tick)."""
        self._loop = loop

    def store_fault(self, op: str, kind: str) -> None:
        """The store's fault listener (called from store threads).

        Damage stays NOT_SERVING until someone fixes it and restarts (a probe write to another table
        succeeding says nothing about the damaged one); a store locked by other writers counts from its
        third time in 30 s (one slow moment is not an outage); every other fault at once."""
        now = time.monotonic()
        with self._faults_lock:
            if kind in DAMAGE:
                self.damaged = True
            if kind == "busy":
                self._busy = [t for t in self._busy if now - t < 30] + [now]
                if len(self._busy) < 3:
                    return
            self._faults += 1
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):   # the loop is closed: the worker is stopping
                loop.call_soon_threadsafe(self.wake.set)

    def serving(self, name: str) -> bool:
        return self._status.get(name, False)

    async def set(self, name: str, serving: bool) -> None:
        if self._status.get(name) == serving:
            return
        before = self._status.get(name)
        self._status[name] = serving
        await self._servicer.set(name, self._serving if serving else self._not_serving)
        metrics.HEALTH.labels(name or "server").set(1 if serving else 0)
        if before is not None:
            level = logging.INFO if serving else logging.WARNING
            log.log(level, "health of %s: %s", name or "the server", "SERVING" if serving else "NOT_SERVING",
                    extra={"event": "health", "service": name or "server",
                           "status": "SERVING" if serving else "NOT_SERVING"})

    async def tick(self, holds_settings: bool, store: Any) -> None:
        await self.set(self.decisions, holds_settings)
        with self._faults_lock:
            faults, damaged = self._faults, self.damaged
        if damaged:
            await self.set(STORE, False)
            return
        if faults == self._cleared:
            await self.set(STORE, True)
            return
        await self.set(STORE, False)
        now = time.monotonic()
        if now - self._last_probe < PROBE_EVERY_S:
            return
        self._last_probe = now
        try:
            await asyncio.to_thread(store.probe)
        except Exception:  # counted and logged by the store; the next probe tries again
            return
        self._cleared = faults  # faults reported while the probe ran keep it NOT_SERVING until the next one
        await self.set(STORE, self._faults_since(faults) == 0)

    def _faults_since(self, mark: int) -> int:
        with self._faults_lock:
            return self._faults - mark
