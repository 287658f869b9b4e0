"""Group commit for the store's small, frequent writes (call events, ledger entries).

Each call event is a write transaction, and a durable commit (WAL with
synchronous=FULL) costs an fsync.  One transaction per event, from several
threads, spends its time in the fsync and in SQLite's busy handler sleeping
for the write lock: 373 whole calls/s with one worker, multi-second tails
(measured by loadtest.lifecycle_bench).  Here one writer thread per process
takes every write that is waiting, runs them all inside one transaction,
commits once, and only then answers each caller: the same durability per
write (nobody hears "done" before the fsync), one fsync for many writes,
and no busy-handler sleeps between threads of one process.

A write that raises is rolled back alone; the others in the batch commit
(SQLite: a savepoint per write; PostgreSQL: the batch again without it, see
`_commit_pipelined`).  If the commit itself fails, every write of the batch
gets the error (none was acknowledged).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from server.store.api import StoreBusy

T = TypeVar("T")

MAX_BATCH = 256

Item = tuple[Callable[[Any], Any], Future[Any], Callable[[Any], None] | None]   # a write, its answer, its reads


class GroupCommitter:
    def __init__(self, connect: Callable[[], Any], translate: Callable[[BaseException], BaseException]) -> None:
        self._connect = connect      # a new connection (sqlite3's, or server.store.postgres.PGConnection)
        self._translate = translate  # the database's error -> the store's (a lock timeout: StoreBusy)
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store-group-commit", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Any], T], prefetch: Callable[[Any], None] | None = None) -> Future[T]:
        """Queue `fn(conn)` for the next group transaction; the future is done once that committed
        (an event loop awaits it with asyncio.wrap_future, without a thread of its own waiting).

        `prefetch(conn)`, on a pipelined connection only, is called for every write of the batch, in order,
        before the first write runs: it sends the reads its write will need, and the whole batch's reads
        cost one round trip instead of one per write.  What the batch's earlier writes changed meanwhile is
        the writes' to know (`conn.batch`, server/store/accounts.py)."""
        future: Future[T] = Future()
        self._queue.put((fn, future, prefetch))
        return future

    def run(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(conn)` in the next group transaction; return its result once committed."""
        return self.submit(fn).result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        # The writer never dies with work queued: a failed connect or a connection that a failing disk
        # left unusable fails the batch in hand (its callers hear the error) and is opened again for the next.
        conn: Any | None = None
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._queue.put(None)  # stop after this batch
                        break
                    batch.append(item)
                if conn is None:
                    try:
                        conn = self._connect()
                    except BaseException as exc:
                        self._fail(batch, exc)
                        continue
                if not self._commit(conn, batch):
                    with contextlib.suppress(Exception):  # best effort: the connection is dropped anyway
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def _fail(self, batch: list[Item],
              exc: BaseException) -> None:
        error = self._translate(exc)
        for _fn, future, _prefetch in batch:
            if not future.done():
                future.set_exception(error)

    def _commit(self, conn: Any, batch: list[Item]) -> bool:
        """Run and commit one batch; False when the connection could not even roll back (open a new one)."""
        db_error = getattr(conn, "db_error", None)
        if db_error is None:
            return self._commit_savepoints(conn, batch)
        return self._commit_pipelined(conn, batch, db_error)

    def _commit_savepoints(self, conn: Any, batch: list[Item]) -> bool:
        """SQLite: each write in its own SAVEPOINT, so that a write that raises is rolled back alone."""
        results: list[tuple[Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future, _prefetch in batch:
                conn.execute("SAVEPOINT one_write")
                try:
                    value = fn(conn)
                except BaseException as exc:
                    if not conn.in_transaction:  # a full disk or I/O error rolled the whole batch back: its error
                        raise
                    # this write only: its own changes go, the batch goes on
                    conn.execute("ROLLBACK TO one_write")
                    conn.execute("RELEASE one_write")
                    results.append((future, False, exc))
                    continue
                conn.execute("RELEASE one_write")
                results.append((future, True, value))
            conn.execute("COMMIT")
        except BaseException as exc:
            usable = self._rolled_back(conn)
            self._fail(batch, exc)
            return usable
        self._answer(results)
        return True

    def _commit_pipelined(self, conn: Any, batch: list[Item],
                          db_error: Callable[[BaseException], bool]) -> bool:
        """PostgreSQL, in pipeline mode: no savepoint per write.

        A savepoint there is a subtransaction: two more statements per write,
        and past 64 of them in one transaction every other session's snapshot
        pays for the overflow.  So a write that fails rolls the batch back
        whole, and then:
          - a write that raised on its own (a refusal, a replay that does not
            match) gets its error, and the batch runs again without it: the
            writes before it meet the same store again, so it would fail the
            same way, and the batch pays one rerun, not one per write;
          - a database error cannot be told whose it is (a statement's error
            surfaces at the next read or at COMMIT), so each write runs again
            in a transaction of its own, where every error is the write's own;
          - a lock not had in time (StoreBusy) is every write's: all get it.
        """
        while batch:
            results: list[tuple[Future[Any], bool, Any]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for _fn, _future, prefetch in batch:
                    if prefetch is not None:
                        prefetch(conn)
                for i, (fn, future, _prefetch) in enumerate(batch):
                    try:
                        results.append((future, True, fn(conn)))
                    except BaseException as exc:
                        raise _Failed(i, exc) from exc
                conn.execute("COMMIT")
            except BaseException as raised:
                failed = raised if isinstance(raised, _Failed) else None
                error = failed.error if failed is not None else raised
                if not self._rolled_back(conn):
                    self._fail(batch, error)
                    return False
                if isinstance(self._translate(error), StoreBusy) or len(batch) == 1:
                    self._fail(batch, error)
                    return True
                if failed is None or db_error(error):
                    return all([self._commit_pipelined(conn, [item], db_error) for item in batch])
                self._fail([batch[failed.index]], error)
                batch = batch[:failed.index] + batch[failed.index + 1:]
                continue
            self._answer(results)
            return True
        return True

    @staticmethod
    def _rolled_back(conn: Any) -> bool:
        """Roll back what a failed batch left open; False when the connection is lost or cannot even do that."""
        if getattr(conn, "broken", lambda: False)():   # a lost server connection: open a new one
            return False
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except Exception:  # a failing disk, a lost server connection: open a new one
                return False
        return True

    @staticmethod
    def _answer(results: list[tuple[Future[Any], bool, Any]]) -> None:
        for future, ok, value in results:  # only now, after the commit: acknowledged means durable
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class _Failed(Exception):
    """A write of a pipelined batch raised: which one, and what."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error
