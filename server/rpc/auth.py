"""Who may do what: bearer tokens with a role and, for tenant roles, the tenants they may touch.

A token is `cg_<id>_<secret>`: the id finds its row, the secret is checked
against the stored SHA-256 of the whole token with a constant-time compare,
and only the hash is ever stored.  Roles:

- `proxy`: the Decisions service (every tenant: a SIP proxy serves them all);
- `tenant-admin`: settings, blacklists, document upload, balance, ledger and
  calls of its tenants, and their decisions (`callgate decide`);
- `operator`: reading every tenant, document review, billing operations;
- `owner`: everything, tokens and the removal of a tenant included.

No token, or an unknown, revoked or expired one -> UNAUTHENTICATED; a token
whose role may not call the method, or may not touch the request's tenant ->
PERMISSION_DENIED, with the same words whether or not that tenant exists.
Health checking and reflection stay open.  Every Admin call is written to the
audit log, refused ones included (`callgate audit`).
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server.rules.tokens import TENANT_ROLES, Principal, TokenRecord, hash_token, token_id
from server.store.api import StoreDamaged, StoreUnavailable

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")

D, A = "/callgate.v1.Decisions/", "/callgate.v1.Admin/"
# method -> roles allowed; tenant-admin calls are further limited to the request's tenant
PERMISSIONS: dict[str, frozenset[str]] = {
    **{D + m: frozenset({"proxy", "operator", "owner", "tenant-admin"})
       for m in ("Inbound", "Outbound", "Pickup", "CallEvent", "DecideBatch")},
    D + "Stream": frozenset({"proxy", "operator", "owner"}),
    **{D + m: frozenset({"proxy", "operator", "owner"})   # any tenant's events: a proxy's spool
       for m in ("CallEvents", "CallEventsInOrder")},
    D + "WatchSnapshots": frozenset({"proxy", "operator", "owner"}),
    # operators may push only to create a tenant (its first version): the servicer enforces that part
    **{A + m: frozenset({"tenant-admin", "operator", "owner"}) for m in ("PushSettings", "PushSettingsUpload")},
    **{A + m: frozenset({"tenant-admin", "owner"}) for m in ("Rollback", "PatchBlacklist", "UploadDocuments")},
    **{A + m: frozenset({"tenant-admin", "operator", "owner"})
       for m in ("GetSettings", "ListVersions", "Stats", "ListDocuments", "GetBalance", "ListLedger", "ListCalls")},
    **{A + m: frozenset({"operator", "owner"})
       for m in ("ReviewDocuments", "Credit", "Card", "TransferNumber", "NumberOwner", "ExportFailover",
                 "ListAudit", "ListReplicas")},
    **{A + m: frozenset({"owner"}) for m in ("CreateToken", "ListTokens", "RevokeToken")},
    # removing a tenant is for good (its settings, numbers, calls, documents): the owner's act only, never a
    # tenant-scoped token (even of that tenant) nor an operator, who may create tenants but not wipe them
    A + "RemoveTenant": frozenset({"owner"}),
}


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


# The caller of the RPC being served (set by the interceptor, read by handlers that check the tenant of
# something they load, e.g. the tenant inside a pushed document), and what the audit row should say.
CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("callgate_principal", default=None)
AUDIT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("callgate_audit", default=None)


def require_tenant(tenant: str) -> None:
    """In a handler: refuse when the caller's token may not touch `tenant` (no-op without auth)."""
    principal = CURRENT.get()
    if principal is not None and not principal.may_touch(tenant):
        raise AuthError(grpc.StatusCode.PERMISSION_DENIED, denied(principal, tenant))


def note(**fields: Any) -> None:
    """In a handler: add to this call's audit row (versions before and after, the tenant, ...)."""
    audit = AUDIT.get()
    if audit is not None:
        audit.update(fields)


def note_also(**fields: Any) -> None:
    """In a handler: one more audit row for this call, the same but for these fields (another tenant the call
    changed, so that each tenant's audit shows it); written only if the call succeeds."""
    audit = AUDIT.get()
    if audit is not None:
        audit.setdefault("also", []).append(fields)


def _peer(context: Any) -> str:
    try:
        peer = context.peer()
    except (AttributeError, NotImplementedError):
        return ""
    return (peer.decode("utf-8", "replace") if isinstance(peer, bytes) else str(peer or ""))[:128]


def denied(principal: Principal, tenant: str) -> str:
    # the same words whether or not the tenant exists
    return f"token {principal.token_id} ({principal.role}) may not act on tenant {tenant[:64]!r}"


class Authenticator:
    """Resolves bearer tokens against the store, with a short cache (revocation is in force within `ttl_s`)."""

    def __init__(self, lookup: Callable[[str], TokenRecord | None], ttl_s: float = 2.0) -> None:
        self.lookup, self.ttl_s = lookup, ttl_s
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}

    def principal(self, metadata: Any) -> Principal:
        header = ""
        for key, value in metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        if not header:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            "no token: send 'authorization: Bearer <token>' (callgate tokens create)")
        scheme, _, token = header.partition(" ")
        ident = token_id(token.strip()) if scheme.lower() == "bearer" else None
        if ident is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "malformed token: expected 'Bearer cg_<id>_<secret>'")
        now = time.monotonic()
        cached = self._cache.get(ident)
        if cached is None or now - cached[0] > self.ttl_s:
            try:
                cached = (now, self.lookup(ident))
            except (StoreUnavailable, StoreDamaged) as exc:
                # a sick store: a token seen lately stays good (proxies keep deciding); a new one waits
                if cached is None:
                    code = (grpc.StatusCode.UNAVAILABLE if isinstance(exc, StoreUnavailable)
                            else grpc.StatusCode.INTERNAL)
                    raise AuthError(code, f"cannot check the token now: {exc}") from None
                cached = (now, cached[1])  # asked again after ttl_s, not on every call
            self._cache[ident] = cached
            if len(self._cache) > 10_000:
                self._cache.clear()
        record = cached[1]
        # compare even when there is no record, so that timing does not tell which ids exist
        expected = record.token_hash if record is not None else "0" * 64
        if not hmac.compare_digest(expected, hash_token(token.strip())) or record is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if record.revoked_at:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"token {ident} was revoked")
        if record.expires_at and record.expires_at <= time.time():
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"token {ident} has expired")
        return Principal(record.id, record.role, record.tenants)


def _tenant_of(request: Any) -> str | None:
    """The tenant a request names, if its message has one (empty string: every tenant)."""
    try:
        return str(request.tenant)
    except AttributeError:
        return None


# request field -> how the audit log names the object of the call
_OBJECTS = (("number", "number {}"), ("set_id", "set {}"), ("version", "version {}"), ("id", "token {}"),
            ("reference", "reference {}"))


def object_of(request: Any) -> str:
    """What a request acts on, for the audit row (before the handler says more)."""
    for name, form in _OBJECTS:
        value = getattr(request, name, None)
        if value:
            return form.format(str(value)[:64])
    return ""


class RateLimit:
    """At most `per_minute` calls per token in any 60 s (a sliding window of call times), in this worker."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.calls: dict[str, list[float]] = {}

    def check(self, token: str, now: float | None = None) -> float:
        """0 when the call may go ahead (and counts it), else the seconds until it may."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        recent = [t for t in self.calls.get(token, ()) if now - t < 60.0]
        if len(recent) >= self.per_minute:
            self.calls[token] = recent
            return 60.0 - (now - recent[0])
        recent.append(now)
        self.calls[token] = recent
        return 0.0


REFUSAL_ROWS = 60  # audit rows a minute of calls refused before they ran, per token (or address) and worker


class RowBudget:
    """At most `per_minute` audit rows per key in each minute; the calls beyond are counted, not written."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, rows written, skipped)

    def allow(self, key: str, now: float | None = None) -> int:
        """-1: do not write this row; else write it, saying this many were skipped before it."""
        now = time.monotonic() if now is None else now
        start, written, skipped = self.windows.get(key, (now, 0, 0))
        if now - start >= 60.0:
            start, written = now, 0
        if written >= self.per_minute:
            self.windows[key] = (start, written, skipped + 1)
            return -1
        self.windows[key] = (start, written + 1, 0)
        if len(self.windows) > 10_000:  # many addresses: forget the oldest windows
            for old in sorted(self.windows, key=lambda k: self.windows[k][0])[:5_000]:
                del self.windows[old]
        return skipped


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call but health and reflection; checks role and tenant; audits Admin calls."""

    def __init__(self, authenticator: Authenticator,
                 audit: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                 admin_per_minute: int = 0) -> None:
        self.authenticator = authenticator
        self.audit = audit
        self.limit = RateLimit(admin_per_minute)
        self.refusal_rows = RowBudget(REFUSAL_ROWS)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        handler = await continuation(details)
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        principal: Principal | None = None
        try:
            principal = self.authenticator.principal(details.invocation_metadata)
            allowed = PERMISSIONS.get(method)
            if allowed is None or principal.role not in allowed:
                name = method.rsplit("/", 1)[-1]
                raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                f"token {principal.token_id} ({principal.role}) may not call {name}")
            wait = self.limit.check(principal.token_id) if method.startswith(A) else 0.0
            if wait:
                raise AuthError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"token {principal.token_id} made {self.limit.per_minute} admin calls in the last "
                                f"minute, its limit: try again in {wait:.0f} s")
        except AuthError as exc:
            return self._refusal(handler, exc, method, principal)
        return self._wrap(handler, principal, method, details.invocation_metadata)

    def _refusal(self, handler: Any, exc: AuthError, method: str, principal: Principal | None) -> Any:
        async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = _peer(context)
            # a refused call costs its sender nothing: its rows are written at most REFUSAL_ROWS a minute per
            # token (or, without one, per address) and worker, the rest counted in the next one, so that a
            # flood of them cannot fill the disk or hold the store's write lock
            skipped = self.refusal_rows.allow(principal.token_id if principal else peer.rpartition(":")[0])
            if self.audit is not None and method.startswith(A) and skipped >= 0:
                more = f" ({skipped} more refusals from this address were not written)" if skipped else ""
                await self.audit({"token_id": principal.token_id if principal else "",
                                  "role": principal.role if principal else "", "action": method.rsplit("/", 1)[-1],
                                  "tenant": _tenant_of(request_or_iterator) or "",
                                  "object": object_of(request_or_iterator), "result": exc.code.name,
                                  "detail": str(exc) + more, "peer": peer})
            await context.abort(exc.code, str(exc))

        async def refuse_stream(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse(request_or_iterator, context)
            yield None  # pragma: no cover - abort() raises

        streaming = handler.unary_stream is not None or handler.stream_stream is not None
        return _same_kind(handler, refuse_stream if streaming else refuse)

    def _wrap(self, handler: Any, principal: Principal, method: str, metadata: Any) -> Any:
        audited = self.audit is not None and method.startswith(A)
        streams = handler.unary_stream is not None or handler.stream_stream is not None
        if not audited and principal.role not in TENANT_ROLES and not streams:
            return handler  # a decision by a proxy, operator or owner: nothing to check per request, no audit
        inner = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)
        is_unary_request = handler.unary_unary is not None or handler.unary_stream is not None

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            CURRENT.set(principal)
            row: dict[str, Any] = {"token_id": principal.token_id, "role": principal.role,
                                   "action": method.rsplit("/", 1)[-1], "tenant": "", "object": "", "result": "OK",
                                   "detail": "", "peer": _peer(context)}
            AUDIT.set(row)
            try:
                if is_unary_request:
                    row["object"] = object_of(request)
                    tenant = _tenant_of(request)
                    if tenant is not None:
                        row["tenant"] = tenant
                        if principal.role in TENANT_ROLES and not principal.may_touch(tenant):
                            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, denied(principal, tenant))
                return await inner(request, context)
            except AuthError as exc:
                row.update(result=exc.code.name, detail=str(exc))
                await context.abort(exc.code, str(exc))
            except asyncio.CancelledError:
                row.update(result="CANCELLED", detail=row["detail"] or "the caller left before the reply")
                raise
            except BaseException as exc:
                # a handler's abort() raises with "Locally aborted.": the real status and message are the context's
                code, details = _status_of(context)
                if code is None or code == grpc.StatusCode.OK:  # not a refusal: a failure of the server's own
                    row.update(result="UNKNOWN", detail=f"{type(exc).__name__}: {exc}"[:2000])
                else:
                    row.update(result=code.name, detail=details or str(exc) or type(exc).__name__)
                raise
            finally:
                if audited and self.audit is not None:
                    code, details = _status_of(context)
                    if row["result"] == "OK" and code not in (None, grpc.StatusCode.OK):
                        row.update(result=code.name, detail=details or row["detail"])
                    extra = row.pop("also", [])
                    await self.audit(dict(row))
                    if row["result"] == "OK":  # rows of the other tenants the call changed (a transfer's target)
                        for fields in extra:
                            await self.audit({**row, **fields})

        authenticator = self.authenticator

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # A stream lives for hours (a proxy's Stream, a replica's WatchSnapshots): its token is checked again
            # as it goes, at most every ttl_s (the cache's own pace), before each request is taken and each reply
            # sent, so that a revoked or expired token's stream ends within seconds instead of with the proxy.
            CURRENT.set(principal)
            checked = time.monotonic()
            ended: list[AuthError] = []   # the refusal that ended the stream (abort() may be called once)

            async def still_valid() -> None:
                nonlocal checked
                now = time.monotonic()
                if ended:   # the other side (requests or replies) aborted the call already: its status stands
                    raise grpc.aio.AbortError()
                if now - checked < authenticator.ttl_s:
                    return
                checked = now
                try:
                    authenticator.principal(metadata)
                except AuthError as exc:
                    # only a token that is no good ends the stream; a store that cannot say now (UNAVAILABLE)
                    # leaves a stream that was let in going, as it leaves a token seen lately good
                    if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                        ended.append(exc)
                        await context.abort(exc.code, f"{exc}: the stream ends")

            async def requests() -> Any:
                async for item in request:
                    await still_valid()
                    yield item

            async for reply in inner(requests() if handler.stream_stream is not None else request, context):
                await still_valid()
                yield reply

        if handler.unary_stream is not None or handler.stream_stream is not None:
            return _same_kind(handler, streaming)  # Stream: no tenant in the call, no audit (not Admin)
        return _same_kind(handler, behavior)


def _status_of(context: Any) -> tuple[Any, str]:
    """The status code and message the handler set (or aborted with), if any."""
    try:
        code, details = context.code(), context.details()
    except (AttributeError, NotImplementedError):
        return None, ""
    if isinstance(details, bytes):
        details = details.decode("utf-8", errors="replace")
    return code, str(details or "")


def _same_kind(handler: Any, behavior: Any) -> Any:
    """A method handler of the same streaming kind as `handler`, with `behavior` and its (de)serializers."""
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
