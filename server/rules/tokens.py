"""API tokens and roles, as rules: what a token looks like, how it is kept (its hash only), who may do what
to which tenant.  No gRPC here: the interceptor that enforces them is server/rpc/auth.py.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

ROLES = ("proxy", "tenant-admin", "operator", "owner")
TENANT_ROLES = ("tenant-admin",)
PREFIX = "cg_"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    role: str
    tenants: tuple[str, ...]
    created_at: int
    expires_at: int           # 0: never
    revoked_at: int           # 0: in force
    comment: str
    token_hash: str = field(repr=False, default="")


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    role: str
    tenants: tuple[str, ...]

    def may_touch(self, tenant: str) -> bool:
        return self.role not in TENANT_ROLES or tenant in self.tenants


def new_token() -> tuple[str, str, str]:
    """(token id, the token to hand out once, its hash to store)."""
    ident = secrets.token_hex(6)
    token = f"{PREFIX}{ident}_{secrets.token_urlsafe(32)}"
    return ident, token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token: str) -> str | None:
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    ident, sep, secret = token[len(PREFIX):].partition("_")
    return ident if sep and ident and secret and all(c in "0123456789abcdef" for c in ident) else None
