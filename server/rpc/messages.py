"""From the engine's and the store's records to protobuf messages (and the audit notes of a commit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from callgate.v1 import admin_pb2, decisions_pb2
from engine import CoreDecision, CoreSnapshot, codes
from engine.snapshot import Built
from server.rpc import auth
from server.rules import tokens
from server.store.api import AuditRow, DocumentSet, NumberOwner, TenantFacts


def decision_message(d: CoreDecision, kind: str, snap: CoreSnapshot, explain: bool = False
                     ) -> decisions_pb2.Decision:
    """The protobuf form of a core decision (only the fields that apply are set).

    With `explain`, also the rule in words and (inbound) the caller and
    called number as read; proxies leave it off and get smaller replies.
    """
    verdict = d.verdict_code
    fields: dict[str, Any] = {"verdict": verdict, "reason": d.reason_code, "sip_status": d.sip_status,
                              "version": snap.version}
    if explain:
        fields["rule"] = codes.RULES[d.reason]
        if d.reason == "DOCUMENTS_REJECTED" and d.called:  # the operator's words, for the number called
            why = snap.meta.get("rejections", {}).get(d.called)
            if why:
                fields["rule"] += f"; rejected: {why}"
    if kind != "pickup":
        meta = snap.meta
        fields["chat_mode"] = meta["chat_mode"]
        fields["lead_trigger"] = meta["lead_trigger"]
    if kind == "inbound":
        if explain:
            fields["caller"] = d.caller or ""
            fields["called"] = d.called or ""
            readings = d.caller_readings
            if readings:
                fields["caller_readings"] = readings
                listed = d.reason in ("BLACKLISTED", "OFF_HOURS_BLOCKED")
                fields["rule"] += (f" (the caller's digits read as {readings[0]} and as {readings[1]}; "
                                   + (f"{d.caller} is listed)" if listed else "neither is listed)"))
        if verdict == codes.ROUTE:
            fields["group"] = d.group or ""
            fields["members"] = d.members
        elif verdict == codes.FORWARD:
            fields["target"] = d.target
            fields["line"] = d.line
    elif kind == "outbound" and verdict == codes.ALLOW:
        fields.update(caller_id=d.caller_id, destination=d.called, line=d.line,
                      rate_per_minute=str(d.rate_per_minute), increment_s=d.increment_s,
                      max_duration_s=d.max_duration_s)
    elif kind == "pickup" and verdict == codes.INTERCEPT:
        fields["call_id"] = d.call_id
    return decisions_pb2.Decision(**fields)


class ReplyCache:
    """Inbound replies built once per (snapshot, shape): a proxy's reply depends on nothing else.

    The cached messages are never mutated after they are built.
    """

    def __init__(self) -> None:
        self._by_tenant: dict[str, tuple[CoreSnapshot, dict[tuple[int, ...], decisions_pb2.Decision]]] = {}

    def inbound(self, snap: CoreSnapshot, d: CoreDecision) -> decisions_pb2.Decision:
        entry = self._by_tenant.get(snap.tenant)
        if entry is None or entry[0] is not snap:
            entry = self._by_tenant[snap.tenant] = (snap, {})
        shape = d.shape
        reply = entry[1].get(shape)
        if reply is None:
            if len(entry[1]) > 4096:  # bounded: FORWARD targets are few, but never trust that
                entry[1].clear()
            reply = entry[1][shape] = decision_message(d, "inbound", snap)
        return reply



def document_set_message(ds: DocumentSet) -> admin_pb2.DocumentSet:
    return admin_pb2.DocumentSet(
        id=ds.id, tenant=ds.tenant, number=ds.number, status=ds.status, reason=ds.reason,
        uploaded_at=ds.uploaded_at, due_on=ds.due_on, decided_at=ds.decided_at, decided_by=ds.decided_by,
        files=[admin_pb2.DocumentFile(sha256=f.sha256, name=f.name, format=f.format, width=f.width,
                                      height=f.height, size=f.size) for f in ds.files])


async def committed(write: Callable[[], Any], audit: Callable[[Any], dict[str, Any]]) -> Any:
    """Run a store write in a thread and return its result.  When the RPC is cancelled meanwhile (the client's
    deadline, a dropped connection) the write still completes: wait for it, put what it did in the audit row
    (`audit(result)`), then let the cancellation go on, so that the log never calls a committed write failed."""
    task = asyncio.ensure_future(asyncio.to_thread(write))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            result = await task
        except Exception as exc:  # the write failed as well: the cancellation is what the caller saw
            auth.note(detail=f"the caller left; the write failed: {exc}"[:500])
        else:
            auth.note(**audit(result), detail="committed, but the caller left before the reply (its deadline "
                                              "or connection): check `settings history`")
        raise


def facts_of(built: Built) -> TenantFacts:
    return TenantFacts(built.status, *built.backup)


def number_owner_message(n: NumberOwner) -> admin_pb2.NumberOwnerReply:
    return admin_pb2.NumberOwnerReply(number=n.number, tenant=n.tenant, line=n.line, version=n.version, since=n.since)


def audit_message(a: AuditRow) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(id=a.id, at=a.at, token_id=a.token_id, role=a.role, tenant=a.tenant, action=a.action,
                                object=a.object, version_before=a.version_before, version_after=a.version_after,
                                result=a.result, detail=a.detail, peer=a.peer)


def token_message(t: tokens.TokenRecord) -> admin_pb2.TokenInfo:
    return admin_pb2.TokenInfo(id=t.id, role=t.role, tenants=list(t.tenants), created_at=t.created_at,
                               expires_at=t.expires_at, revoked_at=t.revoked_at, comment=t.comment)
