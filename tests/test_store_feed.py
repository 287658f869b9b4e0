"""The change feed (both backends): a poll says which tenants changed since the previous one, so that a worker's
tick costs what changed, not what there is; a worker that fell behind the pruned rows, or a PostgreSQL listener
that lost its connection, reads everything again."""

from __future__ import annotations

import time
from typing import Any

from server.store.api import Poll
from server.store.postgres import FEED_CHECK_S, PostgresStore

from .store_cases import doc, snap


def push(store, tenant: str, expected: int = 0) -> int:
    d = doc(tenant)
    return int(store.commit_version(tenant, "push", d, snap(d), expected))


def polled(store: Any) -> Poll:
    poll = store.poll()
    assert poll is not None
    return poll


def settle(store: Any) -> Poll:
    """A poll that has read the feed (PostgreSQL reads it on a NOTIFY: give it a moment to arrive)."""
    for _ in range(50):
        poll = store.poll()
        if poll is not None and poll.changed != frozenset():
            return poll
        time.sleep(0.02)
    return polled(store)


def test_a_poll_names_what_changed_since_the_last(store) -> None:
    push(store, "acme")
    push(store, "beta")
    first = store.poll()
    assert first.changed is None and first.versions == {"acme": 1, "beta": 1}   # the first poll: everyone
    assert store.poll().changed == frozenset()                                  # nothing since
    push(store, "acme", 1)
    store.credit("beta", 5_000_000, "credit", "r1", "USD")
    poll = settle(store)
    assert poll.changed == {"acme", "beta"}
    assert poll.versions == {"acme": 2, "beta": 1} and poll.available("beta") == 5_000_000
    assert store.poll().changed == frozenset()
    store.remove_tenant("beta", force=True)
    poll = settle(store)
    assert poll.changed is not None and "beta" in poll.changed
    assert "beta" not in poll.versions and "beta" not in poll.balances


def test_a_poll_behind_the_pruned_rows_reads_every_tenant(store) -> None:
    push(store, "acme")
    store.poll()
    for i in range(5):
        store.credit("acme", 1_000_000, "credit", f"r{i}", "USD")
    assert store.prune_changes(keep=2) > 0          # rows this poller never read are gone
    poll = settle(store)
    assert poll.changed is None and poll.available("acme") == 5_000_000
    assert store.prune_changes(keep=2) == 0          # nothing more to prune


def test_postgresql_reads_the_feed_again_after_its_listener_was_cut(pg_cluster) -> None:
    from .store_cases import pg_database

    store = PostgresStore(pg_database(pg_cluster))
    other = PostgresStore(store.dsn)                 # another host's store on the same database
    try:
        push(store, "acme")
        polled(store)
        assert polled(store).changed == frozenset()
        pg_cluster.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
        push(other, "acme", 1)                       # committed while the listener is gone: no NOTIFY reaches it
        start = time.monotonic()
        while (poll := polled(store)).changed == frozenset() and time.monotonic() - start < 10:
            time.sleep(0.05)
        # read at the next check of the feed (every FEED_CHECK_S), the dead listener found and opened again
        assert poll.changed == {"acme"} and poll.versions["acme"] == 2
        assert time.monotonic() - start <= FEED_CHECK_S + 1
        assert store._listener is not None and not store._listener.closed
        push(other, "acme", 2)                       # and the new listener hears the next change at once
        assert settle(store).versions["acme"] == 3
    finally:
        other.close()
        store.close()
