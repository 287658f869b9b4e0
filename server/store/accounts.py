"""The SQLite store's stateful half: calls and leads, ledger and balances, top-ups and cards, documents.

A mixin of `server.store.sqlite.SQLiteStore` (it uses the store's `_transaction`,
`_read` and `_busy`); the methods are the `Store` protocol's (server/store_api.py).

Call events and ledger entries go through the store's group commit
(server/store_group.py): many per transaction, each in its own savepoint,
acknowledged only after the commit.  Invariants kept here, each inside one
write (savepoint or transaction):
- `accounts.balance_micro` is the sum of the tenant's ledger: every ledger
  insert updates it in the same transaction, and a ledger entry is unique on
  (tenant, kind, ref), so a retried charge changes nothing.
- A call's record, the event that changed it (with its reply), its charge and
  its CRM lead are written together; a replayed event finds its key and gets
  the recorded reply.
- At most one open top-up per tenant (a partial unique index), opened only by
  the debit that crosses the threshold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from server.rules.billing import crossed
from server.rules.calls import Account, Call, Event, EventRefused, Outcome, Reply, check_replay
from server.store.api import (
    AlreadyReviewed,
    CardRecord,
    DocumentFile,
    DocumentSet,
    LedgerEntry,
    NotFound,
    Topup,
    TopupPolicy,
)
from server.store.base import Conn, StoreBase
from server.store.checks import _check_int, _check_str, _check_tenant

CALL_COLUMNS = ("tenant, call_id, direction, caller, called, state, ringing_user, ringing_at, answered_by, "
                "last_user, answered_at, ended_at, line, rate_micro, increment_s, talked_s, charge_micro, "
                "last_at, updated_at, reserved_micro, reserved_s, outcome, caller_raw, called_raw")
N_CALL_COLUMNS = CALL_COLUMNS.count(",") + 1
CALL_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in CALL_COLUMNS.split(", ")[2:])  # all but the key
TOPUP_COLUMNS = ("id, tenant, amount_micro, currency, status, attempts, next_attempt_at, last_reason, gateway_ref, "
                 "trigger, created_at")
LEDGER_KINDS = ("call", "rental", "topup", "credit")
ACCOUNT_SQL = "SELECT balance_micro, reserved_micro FROM accounts WHERE tenant = ?"
# a call event's reads as one statement: always one row, NULLs for what does not exist (see _event_read)
EVENT_READ_SQL = ("SELECT r.\"user\", r.reply, a.balance_micro, a.reserved_micro, l.id, "
                  + ", ".join(f"c.{column}" for column in CALL_COLUMNS.split(", ")) +
                  " FROM (SELECT 1 AS one) AS one"
                  " LEFT JOIN call_events r ON r.tenant = ? AND r.call_id = ? AND r.key = ?"
                  " LEFT JOIN accounts a ON a.tenant = ?"
                  " LEFT JOIN ledger l ON l.tenant = ? AND l.kind = 'call' AND l.ref = ?"
                  " LEFT JOIN calls c ON c.tenant = ? AND c.call_id = ?")


def _account_of(row: Any) -> Account:
    return Account(int(row[0]), int(row[1])) if row else Account()


def _call(row: Any) -> Call:
    return Call(*row)


def _topup(row: Any) -> Topup:
    return Topup(*row)


class _Batch:
    """What the writes of one PostgreSQL group transaction have made of the rows a later write of the same
    transaction reads: its call events, its calls, its tenants' accounts, its ledger entries.

    The group commit sends every call event's reads ahead, in one round trip
    (`GroupCommitter.submit`'s prefetch): those rows are as they were when
    the transaction began.  A write that changes one of them notes the row
    here as it now is, and a later write takes it from here instead.  Every
    write of the transaction is a group write (the transaction holds the
    write lock: nobody else writes meanwhile), and every group write that
    changes these rows goes through `_settle`, `_hold` and `_ledger`, which
    note them.  The notes live as long as the transaction (a new dict at
    each BEGIN, server/store/postgres.py, holding one `_Batch`): a rolled-back
    batch leaves none.
    SQLite's connections have no `batch`: they read each row when needed.
    """

    def __init__(self) -> None:
        self.replays: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.calls: dict[tuple[str, str], Call] = {}
        self.accounts: dict[str, Account] = {}
        self.ledger: set[tuple[str, str, str]] = set()   # (tenant, kind, ref) entered

    @staticmethod
    def of(conn: Conn) -> _Batch | None:
        """The notes of `conn`'s transaction (made at its first write; one dict lookup after that)."""
        notes = getattr(conn, "batch", None)
        if notes is None:
            return None
        batch = notes.get(_Batch)
        if batch is None:
            batch = notes[_Batch] = _Batch()
        return batch

    @staticmethod
    def set_account(conn: Conn, tenant: str, account: Account) -> None:
        batch = _Batch.of(conn)
        if batch is not None:
            batch.accounts[tenant] = account


class AccountsPart(StoreBase):
    """Calls, money and documents for SQLiteStore (see the module docstring)."""

    # -- calls -----------------------------------------------------------------

    def call_event(self, tenant: str, call_id: str, event: Event,
                   rules: Callable[[Call | None, Account], Outcome], topup: TopupPolicy | None,
                   currency: str) -> Reply:
        return self.submit_call_event(tenant, call_id, event, rules, topup, currency).result()

    def submit_call_event(self, tenant: str, call_id: str, event: Event,
                          rules: Callable[[Call | None, Account], Outcome], topup: TopupPolicy | None,
                          currency: str) -> Future[Reply]:
        _check_tenant(tenant)
        _check_str("call_id", call_id)
        sent: list[Any] = []   # the read sent ahead for this write (PostgreSQL), see _Batch

        def prefetch(conn: Conn) -> None:
            sent[:] = [self._event_read(conn, tenant, call_id, event.key)]

        def write(conn: Conn) -> Reply:
            cursor = sent.pop() if sent else self._event_read(conn, tenant, call_id, event.key)
            [row] = cursor.fetchall()   # read to the end: a statement left unfinished keeps SQLite's read lock
            replayed = [row[:2]] if row[1] is not None else []
            account_now = Account(int(row[2]), int(row[3])) if row[2] is not None else Account()
            charged = row[4] is not None
            call_now = _call(row[5:]) if row[5] is not None else None
            batch = _Batch.of(conn)
            if batch is not None:   # what this transaction's earlier writes changed since this row was read
                replayed = [batch.replays[k]] if (k := (tenant, call_id, event.key)) in batch.replays else replayed
                call_now = batch.calls.get((tenant, call_id), call_now)
                account_now = batch.accounts.get(tenant, account_now)
                charged = charged or (tenant, "call", call_id) in batch.ledger
            if replayed:
                check_replay(event, replayed[0][0], call_id)
                return Reply.from_json(replayed[0][1])
            outcome = rules(call_now, account_now)
            now = int(time.time())
            reply = outcome.reply.to_json()
            conn.execute("INSERT INTO call_events (tenant, call_id, key, kind, \"user\", at, reply, recorded_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (tenant, call_id, event.key, event.kind, event.user, event.at, reply, now))
            if batch is not None:
                batch.replays[(tenant, call_id, event.key)] = (event.user, reply)
            self._settle(conn, outcome, event.kind, currency, topup, now, account_now, charged)
            return outcome.reply

        return self._submit(write, prefetch)

    @staticmethod
    def _event_read(conn: Conn, tenant: str, call_id: str, key: str) -> Any:
        """What a call event reads, in one statement (one row, whatever exists): its replay (user, reply), its
        tenant's account, whether the call was charged, the call; the cursor, not yet read."""
        return conn.execute(EVENT_READ_SQL, (tenant, call_id, key, tenant, tenant, call_id, tenant, call_id))

    def _settle(self, conn: Conn, outcome: Outcome, kind: str, currency: str,
                topup: TopupPolicy | None, now: int, account: Account | None = None,
                charged: bool | None = None) -> None:
        """Write an outcome's call, its hold, its charge and its lead (inside the caller's write); `account`: the
        tenant's account as this write read it (None: read it when needed); `charged`: whether the call's charge
        is in the ledger already, as this write read it (None: not known)."""
        c = outcome.call
        conn.execute(f"INSERT INTO calls ({CALL_COLUMNS}) VALUES ({', '.join('?' * N_CALL_COLUMNS)}) "
                     f"ON CONFLICT (tenant, call_id) DO UPDATE SET {CALL_UPDATES}",
                     (c.tenant, c.call_id, c.direction, c.caller, c.called, c.state, c.ringing_user,
                      c.ringing_at, c.answered_by, c.last_user, c.answered_at, c.ended_at, c.line,
                      c.rate_micro, c.increment_s, c.talked_s, c.charge_micro, c.last_at, c.updated_at,
                      c.reserved_micro, c.reserved_s, c.outcome, c.caller_raw, c.called_raw))
        batch = _Batch.of(conn)
        if batch is not None:
            batch.calls[(c.tenant, c.call_id)] = c
        if outcome.hold_micro:
            self._hold(conn, c.tenant, outcome.hold_micro, topup, f"hold:{c.call_id}", now, account)
            if account is not None:
                account = Account(account.balance_micro, account.reserved_micro + outcome.hold_micro)
        if outcome.charge_micro:
            self._ledger(conn, c.tenant, "call", -outcome.charge_micro, c.call_id, currency, topup, now, account,
                         None if charged is None else not charged)
        if outcome.reply.create_lead:
            conn.execute("INSERT INTO leads (tenant, call_id, responsible, trigger, created_at, unassigned) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (c.tenant, c.call_id, outcome.reply.lead_responsible, kind, now,
                          int(outcome.reply.lead_unassigned)))

    @staticmethod
    def _account(conn: Conn, tenant: str) -> Account:
        batch = _Batch.of(conn)
        if batch is not None and tenant in batch.accounts:
            return batch.accounts[tenant]
        return _account_of(conn.execute(ACCOUNT_SQL, (tenant,)).fetchone())

    def _hold(self, conn: Conn, tenant: str, change: int, topup: TopupPolicy | None, trigger: str,
              now: int, account: Account | None = None) -> None:
        """Change the credit held by the tenant's open calls; a new hold may cross the top-up threshold."""
        before = account if account is not None else self._account(conn, tenant)
        conn.execute("INSERT INTO accounts (tenant, reserved_micro) VALUES (?, ?) ON CONFLICT (tenant) "
                     "DO UPDATE SET reserved_micro = accounts.reserved_micro + excluded.reserved_micro",
                     (tenant, change))
        _Batch.set_account(conn, tenant, Account(before.balance_micro, before.reserved_micro + change))
        if topup is not None and crossed(before.available_micro, before.available_micro - change,
                                         topup.threshold_micro):
            self._open_topup(conn, tenant, topup, trigger, now)

    def account(self, tenant: str) -> Account:
        _check_tenant(tenant)
        rows = self._read("SELECT balance_micro, reserved_micro FROM accounts WHERE tenant = ?", (tenant,))
        return Account(int(rows[0][0]), int(rows[0][1])) if rows else Account()

    def ringing_calls(self, tenant: str, since: int = 0) -> list[tuple[str, str, int]]:
        _check_tenant(tenant)
        # inbound calls only: an outbound call or a forwarded leg rings outside the tenant, nobody can pick it up
        rows = self._read("SELECT call_id, ringing_user, ringing_at FROM calls WHERE tenant = ? AND state = 'ringing' "
                          "AND direction = 'inbound' AND ringing_at >= ? ORDER BY ringing_at, call_id",
                          (tenant, since))
        return [(call_id, user, int(at)) for call_id, user, at in rows]

    def calls(self, tenant: str, states: tuple[str, ...], limit: int = 100) -> list[Call]:
        _check_tenant(tenant)
        _check_int("limit", limit, minimum=1)
        marks = ", ".join("?" * len(states))
        rows = self._read(f"SELECT {CALL_COLUMNS} FROM calls WHERE tenant = ? AND state IN ({marks}) "
                          "ORDER BY ringing_at, call_id LIMIT ?", (tenant, *states, limit))
        return [_call(r) for r in rows]

    def expire_calls(self, ring_cutoff: int, talk_cutoff: int, quiet_cutoff: int,
                     rules: Callable[[Call], Outcome], topup: Callable[[str], TopupPolicy | None],
                     currency: Callable[[str], str]) -> list[Call]:
        stale = ("state IN ('ringing', 'answered') AND updated_at < ? AND "
                 "((state = 'ringing' AND ringing_at < ?) OR (state = 'answered' AND answered_at < ?))")
        args = (quiet_cutoff, ring_cutoff, talk_cutoff)
        if not self._read(f"SELECT 1 FROM calls WHERE {stale} LIMIT 1", args):
            return []  # the common case, without the write lock
        now = int(time.time())
        out = []
        with self._transaction(True) as conn:
            for row in conn.execute(f"SELECT {CALL_COLUMNS} FROM calls WHERE {stale} LIMIT 1000", args).fetchall():
                outcome = rules(_call(row))
                self._settle(conn, outcome, "EXPIRED", currency(outcome.call.tenant), topup(outcome.call.tenant),
                             now)
                out.append(outcome.call)
        return out

    def lead_count(self, tenant: str, call_id: str) -> int:
        rows = self._read("SELECT count(*) FROM leads WHERE tenant = ? AND call_id = ?", (tenant, call_id))
        return int(rows[0][0])

    # -- money -----------------------------------------------------------------

    def _ledger(self, conn: Conn, tenant: str, kind: str, amount: int, ref: str, currency: str,
                topup: TopupPolicy | None, now: int, account: Account | None = None,
                new: bool | None = None) -> bool:
        """One ledger entry and the balance that follows it; opens a top-up on a crossing.  `account`: the
        tenant's account as the caller's write knows it (each read saved is a round trip to PostgreSQL);
        `new`: whether the caller's write found no entry for (kind, ref) (None: not known)."""
        if account is None:
            account = self._account(conn, tenant)
        before = account.balance_micro
        after = before + amount
        batch = _Batch.of(conn)
        entry = (tenant, kind, ref)
        if batch is not None and entry in batch.ledger:
            return False  # entered by an earlier write of this transaction
        values = (tenant, kind, amount, ref, now, currency, after)
        if batch is not None and new:
            # known to be new: no answer to wait for (a round trip each on PostgreSQL).  Were it there after all
            # (it cannot be: the read came after the write lock), the insert fails, and the write with it: never a
            # second charge
            conn.execute("INSERT INTO ledger (tenant, kind, amount_micro, ref, created_at, currency, balance_micro) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        else:
            cursor = conn.execute("INSERT INTO ledger (tenant, kind, amount_micro, ref, created_at, currency, "
                                  "balance_micro) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
                                  values)
            if not cursor.fetchall():   # read to the end: the statement is finished, not left open
                return False  # this (kind, ref) was entered before: a retry changes nothing
        if batch is not None:
            batch.ledger.add(entry)
        conn.execute("INSERT INTO accounts (tenant, balance_micro) VALUES (?, ?) "
                     "ON CONFLICT (tenant) DO UPDATE SET balance_micro = excluded.balance_micro", (tenant, after))
        _Batch.set_account(conn, tenant, Account(after, account.reserved_micro))
        if topup is not None:  # the threshold is on the available credit: what calls in progress hold is spent
            held = account.reserved_micro
            if crossed(before - held, after - held, topup.threshold_micro):
                self._open_topup(conn, tenant, topup, f"{kind}:{ref}", now)
        return True

    @staticmethod
    def _open_topup(conn: Conn, tenant: str, topup: TopupPolicy, trigger: str, now: int) -> None:
        # once per crossing: the partial unique index refuses a second open top-up for the tenant
        conn.execute("INSERT INTO topups (tenant, amount_micro, currency, status, next_attempt_at, "
                     "trigger, created_at) VALUES (?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT DO NOTHING",
                     (tenant, topup.amount_micro, topup.currency, now, trigger, now))

    def balance(self, tenant: str) -> int:
        _check_tenant(tenant)
        rows = self._read("SELECT balance_micro FROM accounts WHERE tenant = ?", (tenant,))
        return int(rows[0][0]) if rows else 0

    def ledger_sum(self, tenant: str) -> int:
        _check_tenant(tenant)
        rows = self._read("SELECT COALESCE(SUM(amount_micro), 0) FROM ledger WHERE tenant = ?", (tenant,))
        return int(rows[0][0])

    def ledger_counts(self) -> dict[str, int]:
        return {str(kind): int(n) for kind, n in self._read("SELECT kind, entries FROM ledger_counts", ())}

    def credit(self, tenant: str, amount_micro: int, kind: str, ref: str, currency: str = "",
               topup: TopupPolicy | None = None) -> bool:
        _check_tenant(tenant)
        _check_int("amount_micro", amount_micro)
        _check_str("kind", kind)
        _check_str("ref", ref)
        if kind not in LEDGER_KINDS:
            raise ValueError(f"kind must be one of {', '.join(LEDGER_KINDS)}, not {kind!r}")
        now = int(time.time())
        return self._grouped(lambda conn: self._ledger(conn, tenant, kind, amount_micro, ref, currency, topup, now))

    def ledger(self, tenant: str, limit: int = 50, before_id: int = 0) -> list[LedgerEntry]:
        _check_tenant(tenant)
        _check_int("limit", limit, minimum=1)
        _check_int("before_id", before_id, minimum=0)
        rows = self._read("SELECT id, tenant, kind, amount_micro, ref, currency, created_at, "
                          "COALESCE(balance_micro, 0) FROM ledger WHERE tenant = ? AND (? = 0 OR id < ?) "
                          "ORDER BY id DESC LIMIT ?", (tenant, before_id, before_id, limit))
        return [LedgerEntry(*r) for r in rows]

    def claim_topup(self, now: int, stale_s: int) -> tuple[Topup, CardRecord | None] | None:
        # every worker asks several times a second: answer "nothing due" without the write lock
        due = "(status = 'pending' AND next_attempt_at <= ?) OR (status = 'charging' AND claimed_at < ?)"
        if not self._read(f"SELECT 1 FROM topups WHERE {due} LIMIT 1", (now, now - stale_s)):
            return None
        with self._transaction(True) as conn:
            row = conn.execute(f"SELECT {TOPUP_COLUMNS} FROM topups WHERE {due} ORDER BY next_attempt_at, id LIMIT 1",
                               (now, now - stale_s)).fetchone()
            if row is None:
                return None
            t = _topup(row)
            # A stale claim keeps its attempt number, so the gateway sees the same idempotency key
            # and answers with what it did then instead of charging again.
            attempts = t.attempts + 1 if t.status == "pending" else t.attempts
            conn.execute("UPDATE topups SET status = 'charging', claimed_at = ?, attempts = ? WHERE id = ?",
                         (now, attempts, t.id))
            card = conn.execute("SELECT tenant, token, brand, last4, exp_month, exp_year FROM cards "
                                "WHERE tenant = ?", (t.tenant,)).fetchone()
        t = Topup(t.id, t.tenant, t.amount_micro, t.currency, "charging", attempts, t.next_attempt_at,
                  t.last_reason, t.gateway_ref, t.trigger, t.created_at)
        return t, (CardRecord(*card) if card else None)

    def finish_topup(self, topup_id: int, attempt: int, ok: bool, gateway_ref: str, reason: str,
                     retry_at: int | None) -> None:
        now = int(time.time())
        with self._transaction(True) as conn:
            row = conn.execute("SELECT tenant, amount_micro, currency, status, attempts FROM topups WHERE id = ?",
                               (topup_id,)).fetchone()
            if row is None:
                raise NotFound(f"no top-up {topup_id}")
            tenant, amount, currency, status, attempts = row
            if status != "charging" or attempts != attempt:
                return  # another worker took it over (a stale claim) and answers for it
            if ok:
                conn.execute("UPDATE topups SET status = 'charged', gateway_ref = ?, last_reason = '' WHERE id = ?",
                             (gateway_ref, topup_id))
                self._ledger(conn, tenant, "topup", amount, str(topup_id), currency, None, now)
            elif retry_at is None:
                conn.execute("UPDATE topups SET status = 'failed', gateway_ref = ?, last_reason = ? WHERE id = ?",
                             (gateway_ref, reason, topup_id))
            else:
                conn.execute("UPDATE topups SET status = 'pending', gateway_ref = ?, last_reason = ?, "
                             "next_attempt_at = ? WHERE id = ?", (gateway_ref, reason, retry_at, topup_id))

    def topups(self, tenant: str, limit: int = 20) -> list[Topup]:
        _check_tenant(tenant)
        rows = self._read(f"SELECT {TOPUP_COLUMNS} FROM topups WHERE tenant = ? ORDER BY id DESC LIMIT ?",
                          (tenant, limit))
        return [_topup(r) for r in rows]

    def set_card(self, card: CardRecord) -> None:
        _check_tenant(card.tenant)
        with self._transaction(True) as conn:
            conn.execute("INSERT INTO cards (tenant, token, brand, last4, exp_month, exp_year, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant) DO UPDATE SET token = excluded.token, "
                         "brand = excluded.brand, last4 = excluded.last4, exp_month = excluded.exp_month, "
                         "exp_year = excluded.exp_year, updated_at = excluded.updated_at",
                         (card.tenant, card.token, card.brand, card.last4, card.exp_month, card.exp_year,
                          int(time.time())))

    def card(self, tenant: str) -> CardRecord | None:
        _check_tenant(tenant)
        rows = self._read("SELECT tenant, token, brand, last4, exp_month, exp_year FROM cards WHERE tenant = ?",
                          (tenant,))
        return CardRecord(*rows[0]) if rows else None

    def sandbox_charge(self, key: str, tenant: str, card_token: str, amount_micro: int, currency: str,
                       ok: bool, reason: str) -> tuple[bool, str, str]:
        _check_str("key", key)
        with self._transaction(True) as conn:
            row = conn.execute("SELECT ok, reference, reason FROM sandbox_charges WHERE key = ?", (key,)).fetchone()
            if row is None:
                n = conn.execute("SELECT count(*) FROM sandbox_charges").fetchone()[0]
                reference = f"sbx_{n + 1:08d}"
                conn.execute("INSERT INTO sandbox_charges (key, tenant, card_token, amount_micro, currency, ok, "
                             "reference, reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (key, tenant, card_token, amount_micro, currency, int(ok), reference, reason,
                              int(time.time())))
                return ok, reference, reason
        return bool(row[0]), row[1], row[2]

    def rentals_since(self, tenant: str, numbers: list[str], today: str) -> dict[str, str]:
        _check_tenant(tenant)
        with self._transaction(True) as conn:
            conn.executemany("INSERT INTO rentals_seen (tenant, number, since) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                             [(tenant, n, today) for n in numbers])
            rows = conn.execute("SELECT number, since FROM rentals_seen WHERE tenant = ?", (tenant,)).fetchall()
        wanted = set(numbers)
        return {n: s for n, s in rows if n in wanted}

    # -- documents ---------------------------------------------------------------

    def _document_sets(self, where: str, args: tuple[Any, ...], limit: int) -> list[DocumentSet]:
        rows = self._read("SELECT id, tenant, number, status, reason, uploaded_at, due_on, decided_at, decided_by "
                          f"FROM document_sets WHERE {where} ORDER BY id DESC LIMIT ?", (*args, limit))
        out = []
        for r in rows:
            files = self._read("SELECT sha256, name, format, width, height, size FROM document_files "
                               "WHERE set_id = ? ORDER BY seq", (r[0],))
            set_id, tenant, number, status, reason, uploaded_at, due_on, decided_at, decided_by = r
            out.append(DocumentSet(set_id, tenant, number, status, reason, uploaded_at, due_on, decided_at, decided_by,
                                   tuple(DocumentFile(*f) for f in files)))
        return out

    def add_document_set(self, tenant: str, number: str, files: list[DocumentFile], uploaded_at: int,
                         due_on: str) -> DocumentSet:
        _check_tenant(tenant)
        _check_str("number", number)
        if not files:
            raise ValueError("a document set needs at least one file")
        with self._transaction(True) as conn:
            set_id = conn.execute("INSERT INTO document_sets (tenant, number, status, uploaded_at, due_on) "
                                  "VALUES (?, ?, 'pending', ?, ?) RETURNING id",
                                  (tenant, number, uploaded_at, due_on)).fetchone()[0]
            conn.executemany("INSERT INTO document_files (set_id, seq, sha256, name, format, width, height, size) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [(set_id, i, f.sha256, f.name, f.format, f.width, f.height, f.size)
                              for i, f in enumerate(files)])
            self._bump_documents(conn, tenant)
        return self._document_sets("id = ?", (set_id,), 1)[0]

    @staticmethod
    def _bump_documents(conn: Conn, tenant: str) -> None:
        conn.execute("INSERT INTO accounts (tenant, documents) VALUES (?, 1) "
                     "ON CONFLICT (tenant) DO UPDATE SET documents = accounts.documents + 1", (tenant,))

    def review_document_set(self, set_id: int, approve: bool, reason: str, by: str, at: int) -> DocumentSet:
        _check_int("set_id", set_id, minimum=1)
        with self._transaction(True) as conn:
            row = conn.execute("SELECT tenant, status, decided_by, decided_at, reason FROM document_sets "
                               "WHERE id = ?", (set_id,)).fetchone()
            if row is None:
                raise NotFound(f"no document set {set_id}")
            if row[1] != "pending":  # reviewed once: a second review would overwrite who decided, and when
                raise AlreadyReviewed(set_id, row[1], row[2], row[3], row[4])
            conn.execute("UPDATE document_sets SET status = ?, reason = ?, decided_at = ?, decided_by = ? "
                         "WHERE id = ?", ("approved" if approve else "rejected", reason, at, by, set_id))
            self._bump_documents(conn, row[0])
        return self._document_sets("id = ?", (set_id,), 1)[0]

    def document_sets(self, tenant: str, number: str = "", status: str = "", limit: int = 100
                      ) -> list[DocumentSet]:
        _check_int("limit", limit, minimum=1)
        return self._document_sets("(? = '' OR tenant = ?) AND (? = '' OR number = ?) AND (? = '' OR status = ?)",
                                   (tenant, tenant, number, number, status, status), limit)

    def rejected_numbers(self, tenant: str) -> dict[str, str]:
        _check_tenant(tenant)
        rows = self._read("SELECT number, status, reason FROM document_sets WHERE id IN (SELECT MAX(id) FROM "
                          "document_sets WHERE tenant = ? GROUP BY number) AND number NOT IN (SELECT number FROM "
                          "document_sets WHERE tenant = ? AND status = 'approved')", (tenant, tenant))
        return {str(number): str(reason) for number, status, reason in rows if status == "rejected"}

    def approved_numbers(self, tenant: str) -> list[str]:
        _check_tenant(tenant)
        rows = self._read("SELECT DISTINCT number FROM document_sets WHERE tenant = ? AND status = 'approved' "
                          "ORDER BY number", (tenant,))
        return [r[0] for r in rows]


__all__ = ["AccountsPart", "EventRefused"]
