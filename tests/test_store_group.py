"""The group commit's promise, on both backends: the writes of one batch commit together, a write that fails is
rolled back alone (its own refusal, or a database error), and nobody hears "done" for a write that is not stored.

SQLite isolates each write in a savepoint; PostgreSQL (pipeline mode, no savepoints) runs the batch again without
the write that refused, or each write alone after a database error.  The batches here are made for certain: the
writer thread is held inside a first write while the others queue behind it, so they all go in one batch.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

from server.rules import calls
from server.store.api import TopupPolicy


class Refused(Exception):
    """A write's own refusal (as a replay that does not match raises), after it has written."""


def lead(call_id: str) -> Any:
    def write(conn: Any) -> str:
        conn.execute("INSERT INTO leads (tenant, call_id, responsible, trigger, created_at) VALUES (?, ?, ?, ?, ?)",
                     ("grp", call_id, "u1", "test", 0))
        return call_id
    return write


def refusing(call_id: str) -> Any:
    def write(conn: Any) -> str:
        lead(call_id)(conn)
        raise Refused(call_id)
    return write


def batch(store: Any, writes: list[Any]) -> list[Future[Any]]:
    """Submit `writes` so that they make one batch: a first write holds the writer until all are queued."""
    return batch_of(store, [functools.partial(store._submit, w) for w in writes])


def batch_of(store: Any, submitters: list[Callable[[], Future[Any]]]) -> list[Future[Any]]:
    """Call each of `submitters` (each queues one group write) while the writer is held in a first write, so
    that they all make the next batch; their futures."""
    queued, release = threading.Event(), threading.Event()

    def hold(conn: Any) -> str:
        queued.set()
        assert release.wait(10)
        return lead("hold")(conn)

    first = store._submit(hold)
    assert queued.wait(10)
    futures = [submit() for submit in submitters]
    release.set()
    first.result(timeout=30)
    return futures


def stored(store: Any) -> set[str]:
    return {row[0] for row in store._read("SELECT call_id FROM leads WHERE tenant = ?", ("grp",))}


def outcome(future: Future[Any]) -> Any:
    try:
        return future.result(timeout=30)
    except Exception as exc:
        return type(exc).__name__


def test_a_write_that_refuses_is_rolled_back_alone(store: Any) -> None:
    futures = batch(store, [lead("a"), refusing("b"), lead("c"), refusing("d"), lead("e")])
    assert [outcome(f) for f in futures] == ["a", "Refused", "c", "Refused", "e"]
    assert stored(store) == {"hold", "a", "c", "e"}


def test_a_database_error_in_a_batch_is_the_failing_writes_alone(store: Any) -> None:
    store._submit(lead("x")).result(timeout=30)
    # "x" again breaks the primary key: a database error, inside the batch, between good writes
    futures = batch(store, [lead("a"), lead("x"), lead("c"), refusing("d"), lead("e")])
    results = [outcome(f) for f in futures]
    assert results[0] == "a" and results[2:] == ["c", "Refused", "e"], results
    assert results[1] not in ("x", "a"), results            # refused, by whichever name the backend gives it
    assert stored(store) == {"x", "hold", "a", "c", "e"}


def test_a_write_that_raises_before_writing_costs_the_others_nothing(store: Any) -> None:
    def broken(conn: Any) -> None:
        raise ValueError("bad input")

    futures = batch(store, [broken, lead("a"), broken, broken, lead("b")])
    assert [outcome(f) for f in futures] == ["ValueError", "a", "ValueError", "ValueError", "b"]
    assert stored(store) == {"hold", "a", "b"}


@pytest.mark.parametrize("size", [1, 70])
def test_every_write_of_a_batch_is_stored_and_answered(store: Any, size: int) -> None:
    # 70 > 64: on PostgreSQL a savepoint per write would overflow the session's subtransaction cache
    futures = batch(store, [lead(f"w{i}") for i in range(size)])
    assert [f.result(timeout=30) for f in futures] == [f"w{i}" for i in range(size)]
    assert stored(store) == {"hold", *(f"w{i}" for i in range(size))}


# -- call events in one batch: what a write reads is what the writes before it in the batch left ------------------

def outbound(kind: str, at: int) -> calls.Event:
    if kind == "RINGING":   # 0.02 a minute in one-minute increments: a hold of a minute, then the charge
        return calls.Event(kind, "u3", at, "outbound", "+442071234567", "+15551230000", "rent-1", 20_000, 60)
    return calls.Event(kind, "u3", at)


def workload(replays: bool) -> list[tuple[str, calls.Event] | tuple[str, int]]:
    """Three calls of one tenant interleaved, with `replays` each event twice (a careless proxy's replay, in the
    same batch), and a credit between them: every write after the first depends on what an earlier one changed
    (the call's state, the credit held, the balance, whether the event was recorded)."""
    steps: list[tuple[str, calls.Event] | tuple[str, int]] = []
    for kind, at in (("RINGING", 100), ("ANSWERED", 103), ("ENDED", 164)):
        for c in ("c1", "c2", "c3"):
            steps += [(c, outbound(kind, at))] * (2 if replays else 1)
        if kind == "ANSWERED":
            steps.append(("credit", 10_000))
    return steps


def submit(store: Any, tenant: str, step: Any, policy: TopupPolicy) -> Future[Any]:
    name, what = step
    if name == "credit":
        return store._submit(lambda conn: store._ledger(conn, tenant, "credit", what, "mid", "USD", policy, 0))
    rules = functools.partial(calls.apply, event=what, tenant=tenant, call_id=name, lead_trigger="on_answer",
                              limits=calls.Limits(200, reserve_max_s=60))
    return store.submit_call_event(tenant, name, what, rules, policy, "USD")


def account_state(store: Any, tenant: str) -> Any:
    return (store.account(tenant), store.ledger_sum(tenant),
            sorted((t.trigger, t.amount_micro) for t in store.topups(tenant)),
            sorted((c.call_id, c.state, c.charge_micro, c.reserved_micro, c.talked_s)
                   for c in store.calls(tenant, ("ringing", "answered", "ended"))))


@pytest.mark.parametrize("replays", [False, True], ids=["events", "events-and-replays"])
def test_call_events_in_one_batch_end_as_they_do_one_by_one(store: Any, replays: bool) -> None:
    # 3.05 of credit and a threshold of 3.00: the third call's hold crosses it, once
    policy = TopupPolicy(amount_micro=20_000_000, threshold_micro=3_000_000, currency="USD")
    for tenant in ("one-by-one", "batched"):
        store.credit(tenant, 3_050_000, "credit", "opening", "USD", policy)
    alone = [outcome(submit(store, "one-by-one", step, policy)) for step in workload(replays)]
    futures = batch_of(store, [functools.partial(submit, store, "batched", step, policy)
                               for step in workload(replays)])
    together = [outcome(f) for f in futures]
    assert together == alone
    assert account_state(store, "batched") == account_state(store, "one-by-one")
    balance, _, topups, ended = account_state(store, "batched")
    assert balance == calls.Account(3_050_000 + 10_000 - 3 * 40_000, 0) and len(topups) == 1, (balance, topups)
    assert [c[1:] for c in ended] == [("ended", 40_000, 20_000, 61)] * 3     # each held a minute, charged two
