"""Group commit for the store's small, frequent writes (call events, ledger entries).

Each call event is a write transaction, and a durable commit (WAL with
synchronous=FULL) costs an fsync.  One transaction per event, from several
threads, spends its time in the fsync and in SQLite's busy handler sleeping
for the write lock: 373 whole calls/s with one worker, multi-second tails
(measured by loadtest.lifecycle_bench).  Here one writer thread per process
takes every write that is waiting, runs each in its own SAVEPOINT inside one
transaction, commits once, and only then answers each caller: the same
durability per write (nobody hears "done" before the fsync), one fsync for
many writes, and no busy-handler sleeps between threads of one process.

A write that raises is rolled back to its savepoint alone; the others in the
batch commit.  If the commit itself fails, every write of the batch gets the
error (none was acknowledged).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

MAX_BATCH = 256


class GroupCommitter:
    def __init__(self, connect: Callable[[], Any], translate: Callable[[BaseException], BaseException]) -> None:
        self._connect = connect      # a new connection (sqlite3's, or server.store.postgres.PGConnection)
        self._translate = translate  # the database's error -> the store's (a lock timeout: StoreBusy)
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="store-group-commit", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Any], T]) -> Future[T]:
        """Queue `fn(conn)` for the next group transaction; the future is done once that committed
        (an event loop awaits it with asyncio.wrap_future, without a thread of its own waiting)."""
        future: Future[T] = Future()
        self._queue.put((fn, future))
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

    def _fail(self, batch: list[tuple[Callable[[Any], Any], Future[Any]]],
              exc: BaseException) -> None:
        error = self._translate(exc)
        for _fn, future in batch:
            if not future.done():
                future.set_exception(error)

    def _commit(self, conn: Any,
                batch: list[tuple[Callable[[Any], Any], Future[Any]]]) -> bool:
        """Run and commit one batch; False when the connection could not even roll back (open a new one).

        On a pipelined connection (PostgreSQL: `conn.sync`, `conn.db_error`) a
        write's statements are not waited for one by one: a database error can
        then surface in the next write's read or at COMMIT, where it cannot be
        told whose it is.  Such a batch is rolled back whole and its writes run
        again one transaction each, where every error is the write's own.
        """
        pipelined = getattr(conn, "db_error", None)
        results: list[tuple[Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future in batch:
                conn.execute("SAVEPOINT one_write")
                try:
                    value = fn(conn)
                except BaseException as exc:
                    if pipelined is not None and len(batch) > 1 and pipelined(exc):
                        raise _Unattributed from exc
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
            usable = not getattr(conn, "broken", lambda: False)()   # a lost server connection: open a new one
            if usable and conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # a failing disk, a lost server connection: open a new one
                    usable = False
            if usable and pipelined is not None and len(batch) > 1 and (
                    isinstance(exc, _Unattributed) or pipelined(exc)):
                return all([self._commit(conn, [item]) for item in batch])  # each write on its own
            self._fail(batch, (exc.__cause__ or exc) if isinstance(exc, _Unattributed) else exc)
            return usable
        for future, ok, value in results:  # only now, after the fsync: acknowledged means durable
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        return True


class _Unattributed(Exception):
    """A database error met by a write of a pipelined batch, perhaps an earlier write's."""
