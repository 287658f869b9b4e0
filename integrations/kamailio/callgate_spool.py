"""The event spool of callgate's Kamailio script (callgate_kemi.py): call events waiting for callgate, in a
SQLite file per host shared by every Kamailio process.  Plain Python and SQLite: no Kamailio, no gRPC."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

PENDING, SENT, REFUSED = 0, 1, 2   # an event's state: waiting, answered by callgate, refused for good

T = TypeVar("T")


def retry_locked(fn: Callable[[], T], patience_s: float, pause_s: float = 0.0) -> T:
    """fn(), tried again while SQLite says the file is locked or busy, for up to `patience_s` (0: once)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            if pause_s:
                time.sleep(pause_s)


class Spool:
    """Call events waiting for callgate: a SQLite file per host, shared by every Kamailio process.

    A row per event, unique on its key (call id and kind), so that the first
    of 180/183/200 makes the RINGING and a retransmitted reply adds nothing.
    Rows are sent in id order and kept an hour after they were sent.
    """

    def __init__(self, path: str, max_pending: int) -> None:
        self.path, self.max_pending = path, max_pending
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._counted = (0.0, 0)

    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # one connection per process, opened after the fork
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            # Every Kamailio process opens the file as it starts, all at once: the first to switch it to WAL and
            # create the table holds it for a moment, so the opening waits up to 5 s for the others; then a
            # SIP worker never waits more than 0.2 s on the spool.  SQLite answers "database is locked" at once,
            # without waiting out its timeout, where waiting could deadlock (processes switching a new file to WAL
            # together; seen in a test run's log): the whole opening is tried again, for 5 s.
            self._conn, self._pid = retry_locked(self._open, 5.0, pause_s=0.02), os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # survives a Kamailio crash; a power cut may lose the last
            conn.execute("""CREATE TABLE IF NOT EXISTS events (
                                id       INTEGER PRIMARY KEY AUTOINCREMENT,
                                key      TEXT    NOT NULL UNIQUE,
                                call     TEXT    NOT NULL,
                                request  BLOB    NOT NULL,
                                created  REAL    NOT NULL,
                                state    INTEGER NOT NULL DEFAULT 0,
                                attempts INTEGER NOT NULL DEFAULT 0,
                                error    TEXT    NOT NULL DEFAULT '',
                                done_at  REAL    NOT NULL DEFAULT 0)""")
            conn.execute("CREATE INDEX IF NOT EXISTS events_pending ON events (state, call, id)")
            conn.execute("PRAGMA busy_timeout = 200")
        except BaseException:
            conn.close()
            raise
        return conn

    def full(self, ended: bool) -> bool:
        """Past `max_pending` (CALLGATE_SPOOL_MAX) waiting events new calls' events are refused; an ENDED is
        taken up to twice that (a lost ENDED leaves its call to the expiry, which bills it as talking until
        then).  The count is read at most once a second per process."""
        now = time.monotonic()
        if now - self._counted[0] > 1.0:
            self._counted = (now, self.conn().execute("SELECT COUNT(*) FROM events WHERE state = 0").fetchone()[0])
        return self._counted[1] >= (2 * self.max_pending if ended else self.max_pending)

    def add(self, items: list[tuple[str, str, bytes]]) -> list[str]:
        """Append (key, call, request) events in one transaction; returns the keys that were new."""
        conn = self.conn()
        ended = all(key.endswith(":ENDED") for key, _, _ in items)
        if not ended and self.full(False):
            # past the limit only a call's end is taken: with, at most, its RINGING that is spooled already (the
            # script sends the RINGING with every first event it may be: the key ignores a second one)
            items = [item for item in items if not (item[0].endswith(":RINGING") and self.has(item[0]))]
            if not items:   # a RINGING spooled already (a 183 after a 180): nothing to add, nothing lost
                return []
            ended = all(key.endswith(":ENDED") for key, _, _ in items)
        if self.full(ended):
            raise OverflowError(f"the spool holds {self._counted[1]} waiting events, its limit "
                                f"(CALLGATE_SPOOL_MAX) is {self.max_pending}")
        added = []
        now = time.time()
        # A SIP worker waits 0.2 s at most for the spool (busy_timeout); an ENDED, whose loss leaves its call to
        # the expiry (billed as talking until then), is worth waiting for up to 2 s: it is sent at the dialog's
        # end (a BYE, or the timer process), where no caller waits for a reply
        # (each try waits out busy_timeout itself: no pause between them)
        retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"), 2.0 if ended else 0.0)
        try:
            for key, call, request in items:
                if conn.execute("INSERT OR IGNORE INTO events (key, call, request, created) VALUES (?, ?, ?, ?)",
                                (key, call, request, now)).rowcount:
                    added.append(key)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return added

    def has(self, key: str) -> bool:
        return self.conn().execute("SELECT 1 FROM events WHERE key = ?", (key,)).fetchone() is not None

    def pending(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest waiting event of each call (a call's next event goes only after this one is answered:
        if it must wait, the ones after it wait too), oldest first."""
        return self.conn().execute("""SELECT id, request FROM events WHERE id IN (
                                          SELECT MIN(id) FROM events WHERE state = 0 GROUP BY call)
                                      ORDER BY id LIMIT ?""", (limit,)).fetchall()

    def mark(self, done: list[tuple[int, int, str]]) -> None:
        """(id, state, error) of events sent or refused for good."""
        conn = self.conn()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("UPDATE events SET state = ?, error = ?, done_at = ?, attempts = attempts + 1 "
                             "WHERE id = ?", [(state, error[:500], now, i) for i, state, error in done])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def mark_sent(self, key: str) -> None:
        self.conn().execute("UPDATE events SET state = 1, done_at = ? WHERE key = ? AND state = 0", (time.time(), key))

    def stats(self) -> tuple[int, float, int]:
        """(pending events, age of the oldest in seconds, refused events)."""
        conn = self.conn()
        pending, oldest = conn.execute("SELECT COUNT(*), MIN(created) FROM events WHERE state = 0").fetchone()
        refused = conn.execute("SELECT COUNT(*) FROM events WHERE state = 2").fetchone()[0]
        return int(pending), (time.time() - oldest) if oldest else 0.0, int(refused)

    def purge(self, sent_s: float, refused_s: float) -> None:
        """Forget sent events after `sent_s` and refused ones after `refused_s`, a thousand rows a transaction
        (the workers' writes wait on it for a moment only)."""
        conn = self.conn()
        for state, age in ((SENT, sent_s), (REFUSED, refused_s)):
            while conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE state = ? AND "
                               "done_at < ? LIMIT 1000)", (state, time.time() - age)).rowcount == 1000:
                pass
