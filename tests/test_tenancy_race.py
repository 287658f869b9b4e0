"""Tenant boundaries through a real server: two workers create two tenants at the same moment, both listing one number.

tests/test_numbers.py races two processes on the SQLite store directly; here
the race goes through `callgate serve --workers 2`, one push on each worker,
so that the check in the push path, the compile and the store's commit all
take part.  In every round exactly one push wins, the other is refused with
FAILED_PRECONDITION naming the number and its field path, and the store's
ownership table holds the number once, under the winner.
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc

from .serving import Server, example_doc
from .test_tenancy import channels_per_worker

ROUNDS = 50


def claimant(tenant: str, block: int, shared: str) -> bytes:
    """The example document for `tenant` with numbers of its own (block) plus the round's shared number."""
    doc = example_doc(tenant, block)
    doc["numbers"].append({"number": shared, "line": "rent-1", "country": "US"})
    return json.dumps(doc).encode()


def test_two_workers_creating_tenants_that_claim_one_number_never_both_hold_it(tmp_path: Path) -> None:
    from loadtest.process import free_port

    srv = Server(tmp_path / "data", listen=f"127.0.0.1:{free_port()}", workers=2)
    workers: dict[int, grpc.Channel] = {}
    try:
        workers = channels_per_worker(srv.address)
        lanes = [admin_pb2_grpc.AdminStub(c) for c in workers.values()]
        assert len({admin_pb2_grpc.AdminStub(c).Stats(admin_pb2.StatsRequest(), timeout=10).pid
                    for c in workers.values()}) == 2, "the lanes reach both workers"
        db = tmp_path / "data" / "callgate.sqlite"

        def push(lane: int, doc: bytes, barrier: threading.Barrier) -> Any:
            barrier.wait(timeout=30)
            try:
                return lanes[lane].PushSettings(admin_pb2.PushSettingsRequest(document=doc), timeout=60)
            except grpc.RpcError as exc:
                return exc

        winners: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for r in range(ROUNDS):
                shared = f"+1212700{r:04d}"                       # a fresh number each round
                tenants = (f"race-a{r}", f"race-b{r}")
                # blocks 300.. and 400..: never 123 (own_number(+442071234567, 123) is acme's own number) nor 555
                docs = (claimant(tenants[0], 300 + r, shared), claimant(tenants[1], 400 + r, shared))
                barrier = threading.Barrier(2)
                outcomes = list(pool.map(push, range(2), docs, [barrier] * 2))
                won = [i for i, o in enumerate(outcomes) if isinstance(o, admin_pb2.PushSettingsReply)]
                assert len(won) == 1, (r, outcomes)                 # exactly one winner in every round
                winner, loser = won[0], 1 - won[0]
                reply, err = outcomes[winner], outcomes[loser]
                assert (reply.tenant, reply.version) == (tenants[winner], 1), (r, reply)
                assert isinstance(err, grpc.RpcError), (r, err)
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (r, err.code(), err.details())
                assert f"numbers[3].number: {shared} belongs to another tenant" in err.details(), (r, err.details())
                assert tenants[winner] not in err.details()         # the holder is never named
                with sqlite3.connect(db) as conn:
                    rows = conn.execute("SELECT tenant FROM number_owners WHERE number = ?", (shared,)).fetchall()
                    assert rows == [(tenants[winner],)], (r, rows)
                    loser_rows = conn.execute("SELECT COUNT(*) FROM number_owners WHERE tenant = ?",
                                              (tenants[loser],)).fetchone()[0]
                    assert loser_rows == 0, (r, loser_rows)         # refused whole: none of its own numbers
                    assert conn.execute('SELECT COUNT(*) FROM "current" WHERE tenant = ?',
                                        (tenants[loser],)).fetchone()[0] == 0   # and the tenant was not created
                winners[shared] = tenants[winner]
        with sqlite3.connect(db) as conn:
            held = dict(conn.execute("SELECT number, tenant FROM number_owners WHERE number LIKE '+1212700%'"))
            # each winner holds its three own numbers and the shared one; acme (the seed) its three
            assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT number) FROM number_owners").fetchone() == (
                3 + 4 * ROUNDS, 3 + 4 * ROUNDS)
        assert held == winners
    finally:
        for c in workers.values():
            c.close()
        assert srv.stop() == 0
