"""What /metrics reads at each scrape beside the workers' own samples.

The store's figures are the same whichever worker would read them, so the
process serving /metrics (the supervisor, or the only worker) reads them
once per scrape instead of every worker exporting a copy: ledger entries
written by kind, the tenants in force and their snapshots' bytes.  Per-tenant
series are capped (`--metrics-tenants`, the largest snapshots first): a
store of 50,000 tenants must not give Prometheus 50,000 series per name.
The supervisor adds its own: workers alive and workers restarted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.store.accounts import LEDGER_KINDS
from server.store.location import open_store

log = logging.getLogger("callgate.metrics")


class StoreCollector(Collector):
    def __init__(self, location: str, tenants_cap: int, wait_s: float = 1.0) -> None:
        self.location, self.tenants_cap, self.wait_s = location, tenants_cap, wait_s
        self._store: Any = None
        self._lock = threading.Lock()  # scrapes may overlap (one thread per HTTP request)
        self._reading: concurrent.futures.Future[Any] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metrics-store")
        self._logged = 0.0

    def _read(self) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
        """The store's figures, waited for at most `wait_s`: a store that does not answer (a database gone
        silent) must not hold every scrape for its network timeout.  A read still running is not started again:
        the next scrape takes its answer."""
        with self._lock:
            if self._reading is None or (self._reading.done() and self._reading.exception() is not None):
                self._reading = self._pool.submit(self._query)
            reading = self._reading
        result = reading.result(timeout=self.wait_s)
        with self._lock:
            if self._reading is reading:
                self._reading = None
        return result

    def _query(self) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
        if self._store is None:
            self._store = open_store(self.location, migrate=False)
        return self._store.ledger_counts(), self._store.snapshot_sizes()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        ok = GaugeMetricFamily("callgate_store_scrape_ok", "1 when this scrape could read the store's figures "
                               "(ledger writes, tenants, snapshot bytes) within a second")
        try:
            counts, sizes = self._read()
        except Exception as exc:  # StoreError, a timeout: the figures are left out, the scrape answers
            now = time.monotonic()
            if now - self._logged > 60:  # a store outage is reported by the workers; this is once a minute
                self._logged = now
                log.warning("metrics: the store's figures cannot be read: %s", exc, extra={"event": "scrape_failed"})
            ok.add_metric([], 0)
            yield ok
            return
        ok.add_metric([], 1)
        yield ok
        writes = CounterMetricFamily("callgate_ledger_writes", "Ledger entries written, over every tenant, by kind "
                                     "(call: a call's charge, rental, topup, credit)", labels=["kind"])
        for kind in sorted(set(LEDGER_KINDS) | counts.keys()):
            writes.add_metric([kind], counts.get(kind, 0))
        yield writes
        yield GaugeMetricFamily("callgate_store_tenants", "Tenants with settings in force in the store",
                                value=len(sizes))
        yield GaugeMetricFamily("callgate_store_snapshot_bytes", "Bytes of the compiled snapshots in force, every "
                                "tenant (what each worker holds in memory)", value=sum(s for _, s in sizes.values()))
        size = GaugeMetricFamily("callgate_tenant_snapshot_bytes", "Bytes of a tenant's compiled snapshot in force, "
                                 "for the tenants with the largest (--metrics-tenants of them)", labels=["tenant"])
        version = GaugeMetricFamily("callgate_tenant_version", "A tenant's settings version in force in the store, "
                                    "for the same tenants", labels=["tenant"])
        largest = sorted(sizes.items(), key=lambda item: (-item[1][1], item[0]))[:self.tenants_cap]
        for tenant, (number, nbytes) in largest:
            size.add_metric([tenant], nbytes)
            version.add_metric([tenant], number)
        yield size
        yield version


class WorkersCollector(Collector):
    """The supervisor's figures (a single worker reports itself as one, never restarted)."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.alive = wanted
        self.restarts = 0

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("callgate_workers", "Worker processes alive", value=self.alive)
        yield GaugeMetricFamily("callgate_workers_wanted", "Worker processes asked for (--workers)", value=self.wanted)
        yield CounterMetricFamily("callgate_worker_restarts", "Workers that died and were replaced",
                                  value=self.restarts)
