"""The SQLite store's security tables: API tokens (hashes only) and the audit log of Admin calls.

A tenant-admin token names existing tenants only: checked in the transaction that writes it."""

from __future__ import annotations

import json
import time
from typing import Any

from server.rules.tokens import ROLES, TENANT_ROLES, TokenRecord
from server.store.api import AuditRow, NotFound, TenantMissing
from server.store.base import StoreBase
from server.store.checks import _check_int, _check_str, _check_tenant

TOKEN_COLUMNS = "id, role, tenants, created_at, expires_at, revoked_at, comment, token_hash"
AUDIT_COLUMNS = "id, at, token_id, role, tenant, action, object, version_before, version_after, result, detail, peer"


def _version(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value < 2**63 else 0


def _token(row: Any) -> TokenRecord:
    ident, role, tenants, created, expires, revoked, comment, token_hash = row
    return TokenRecord(ident, role, tuple(json.loads(tenants)), created, expires, revoked, comment, token_hash)


class SecurityPart(StoreBase):
    """Tokens and audit for SQLiteStore."""

    def add_token(self, ident: str, token_hash: str, role: str, tenants: list[str], expires_at: int,
                  comment: str) -> TokenRecord:
        _check_str("id", ident)
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if role in TENANT_ROLES and not tenants:
            raise ValueError(f"a {role} token needs the tenants it may touch (--tenant)")
        if role not in TENANT_ROLES and tenants:
            raise ValueError(f"a {role} token acts on every tenant: give no --tenant")
        for t in tenants:
            _check_tenant(t)
        _check_int("expires_at", expires_at, minimum=0)
        with self._transaction(True) as conn:
            for t in tenants:   # checked in the write: a token can never name a tenant that is not there
                if conn.execute('SELECT 1 FROM "current" WHERE tenant = ?', (t,)).fetchone() is None:
                    raise TenantMissing(f"tenant {t!r} does not exist: a tenant-admin token is made for an "
                                        "existing tenant (an operator or owner pushes its first settings)")
            conn.execute(f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                         (ident, role, json.dumps(sorted(set(tenants))), int(time.time()), expires_at, comment,
                          token_hash))
        return self.get_token(ident) or _never()

    def get_token(self, ident: str) -> TokenRecord | None:
        rows = self._read(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?", (ident,))
        return _token(rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        return [_token(r) for r in self._read(f"SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id", ())]

    def revoke_token(self, ident: str) -> TokenRecord:
        with self._transaction(True) as conn:
            cursor = conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at = 0",
                                  (int(time.time()), ident))
            if cursor.rowcount == 0 and conn.execute("SELECT 1 FROM tokens WHERE id = ?", (ident,)).fetchone() is None:
                raise NotFound(f"no token {ident!r}")
        return self.get_token(ident) or _never()

    def add_audit(self, row: dict[str, Any]) -> None:
        def text(key: str, limit: int = 256) -> str:
            return str(row.get(key, "") or "")[:limit]

        with self._transaction(True) as conn:
            conn.execute("INSERT INTO audit (at, token_id, role, tenant, action, object, version_before, "
                         "version_after, result, detail, peer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (time.time(), text("token_id"), text("role"), text("tenant"), text("action"),
                          text("object"), _version(row.get("version_before")), _version(row.get("version_after")),
                          text("result"), text("detail", 2000), text("peer", 128)))

    def audit_rows(self, tenant: str = "", since: float = 0.0, limit: int = 100, action: str = "",
                   before_id: int = 0) -> list[AuditRow]:
        _check_int("limit", limit, minimum=1)
        _check_int("before_id", before_id, minimum=0)
        _check_str("tenant", tenant, allow_empty=True)
        _check_str("action", action, allow_empty=True)
        if not isinstance(since, int | float) or since != since:
            raise ValueError("since must be UTC seconds")
        rows = self._read(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE (? = '' OR tenant = ?) AND (? = '' OR action = ?) "
                          "AND at >= ? AND (? = 0 OR id < ?) ORDER BY id DESC LIMIT ?",
                          (tenant, tenant, action, action, float(since), before_id, before_id, limit))
        return [AuditRow(*r) for r in rows]


def _never() -> TokenRecord:  # pragma: no cover - the row was just written in the same store
    raise RuntimeError("token row vanished")
