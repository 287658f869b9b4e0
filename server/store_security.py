"""The SQLite store's security tables: API tokens (hashes only) and the audit log of Admin calls."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .auth import ROLES, TENANT_ROLES, TokenRecord
from .store_api import NotFound
from .store_checks import _check_int, _check_str

TOKEN_COLUMNS = "id, role, tenants, created_at, expires_at, revoked_at, comment, token_hash"


def _token(row: Any) -> TokenRecord:
    ident, role, tenants, created, expires, revoked, comment, token_hash = row
    return TokenRecord(ident, role, tuple(json.loads(tenants)), created, expires, revoked, comment, token_hash)


class SecurityMixin:
    """Tokens and audit for SQLiteStore."""

    _transaction: Callable[[bool], AbstractContextManager[sqlite3.Connection]]
    _read: Callable[[str, tuple[Any, ...]], list[Any]]

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
            _check_str("tenant", t)
        _check_int("expires_at", expires_at, minimum=0)
        with self._transaction(True) as conn:
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
        with self._transaction(True) as conn:
            conn.execute("INSERT INTO audit (at, token_id, role, tenant, action, version_before, version_after, "
                         "result, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (time.time(), row.get("token_id", ""), row.get("role", ""), str(row.get("tenant", ""))[:256],
                          row.get("action", ""), int(row.get("version_before", 0) or 0),
                          int(row.get("version_after", 0) or 0), row.get("result", ""),
                          str(row.get("detail", ""))[:1000]))

    def audit_rows(self, tenant: str = "", since: float = 0.0, limit: int = 100) -> list[dict[str, Any]]:
        _check_int("limit", limit, minimum=1)
        rows = self._read("SELECT id, at, token_id, role, tenant, action, version_before, version_after, result, "
                          "detail FROM audit WHERE (? = '' OR tenant = ?) AND at >= ? ORDER BY id DESC LIMIT ?",
                          (tenant, tenant, since, limit))
        keys = ("id", "at", "token_id", "role", "tenant", "action", "version_before", "version_after", "result",
                "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]


def _never() -> TokenRecord:  # pragma: no cover - the row was just written in the same store
    raise RuntimeError("token row vanished")
