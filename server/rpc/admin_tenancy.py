"""Admin: API tokens, the owner of every number and its transfers, the failover export, the audit log, the
removal of a tenant.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time

import grpc

from callgate.v1 import admin_pb2
from engine.document_json import dumps_document, loads_document
from engine.settings import SettingsError
from server.rpc import auth
from server.rpc.admin_base import AdminBase
from server.rpc.errors import RequestError
from server.rpc.messages import audit_message, committed, facts_of, number_owner_message, token_message
from server.rpc.requests import _number_arg, _tenant_arg, _text
from server.rules import billing, numbers, tokens
from server.store.api import TenantBusy, TenantRemoval, VersionConflict, VersionWrite

log = logging.getLogger("callgate.service")

SWEEP_AFTER_S = 11.0  # after a removal: twice the longest --poll (5 s) and a second, then the sweep
_SWEEPS: set[asyncio.Task[None]] = set()  # the sweeps under way (a task nobody holds may be collected)


class TenancyAdmin(AdminBase):
    async def _create_token(self, r: admin_pb2.CreateTokenRequest) -> admin_pb2.CreateTokenReply:
        if not 0 <= r.expires_in_seconds <= 10 * 365 * 86_400:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "expires_in_seconds is 0 (never) up to ten years")
        ident, token, token_hash = tokens.new_token()
        expires = int(time.time()) + r.expires_in_seconds if r.expires_in_seconds else 0
        record = await asyncio.to_thread(self.state.store.add_token, ident, token_hash, _text("role", r.role),
                                         [_text("tenant", t) for t in r.tenants], expires, _text("comment", r.comment))
        auth.note(object=f"token {record.id}", detail=f"created token {record.id} ({record.role}"
                  + (f" of {', '.join(record.tenants)}" if record.tenants else "") + ")")
        log.info("token created", extra={"event": "token_created", "id": record.id, "role": record.role})
        return admin_pb2.CreateTokenReply(info=token_message(record), token=token)

    async def _list_tokens(self, r: admin_pb2.ListTokensRequest) -> admin_pb2.ListTokensReply:
        records = await asyncio.to_thread(self.state.store.list_tokens)
        return admin_pb2.ListTokensReply(tokens=[token_message(t) for t in records])

    async def _revoke_token(self, r: admin_pb2.RevokeTokenRequest) -> admin_pb2.TokenInfo:
        record = await asyncio.to_thread(self.state.store.revoke_token, _text("id", r.id))
        auth.note(detail=f"revoked token {record.id}")
        log.info("token revoked", extra={"event": "token_revoked", "id": record.id})
        return token_message(record)

    # -- numbers and audit --------------------------------------------------------

    async def _number_owner(self, r: admin_pb2.NumberOwnerRequest) -> admin_pb2.NumberOwnerReply:
        number = _number_arg("number", r.number)
        owner = await asyncio.to_thread(self.state.store.number_owner, number)
        if owner is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no tenant holds {number}")
        auth.note(tenant=owner.tenant)
        return number_owner_message(owner)

    async def _transfer_number(self, r: admin_pb2.TransferNumberRequest) -> admin_pb2.TransferNumberReply:
        number = _number_arg("number", r.number)
        src, dst = _tenant_arg("from_tenant", r.from_tenant), _tenant_arg("to_tenant", r.to_tenant)
        if src == dst:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "from_tenant and to_tenant are the same tenant")
        line, route_to = _text("line", r.line), _text("route_to", r.route_to)
        comment = _text("comment", r.comment) or f"{number} from {src} to {dst}"
        auth.note(tenant=src, object=f"number {number}", detail=f"to tenant {dst}")
        store, state = self.state.store, self.state
        for _attempt in range(3):  # a push to either tenant in between: work the move out again
            owner = await asyncio.to_thread(store.number_owner, number)
            if owner is None or owner.tenant != src:
                held = f"tenant {owner.tenant!r} holds it" if owner else "no tenant holds it"
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{number} is not {src!r}'s: {held}")
            a = await asyncio.to_thread(store.get_version, src)
            b = await asyncio.to_thread(store.get_version, dst)
            assert a.document is not None and b.document is not None
            doc_a, entry, notes = numbers.release(loads_document(a.document), number)
            doc_b, more = numbers.adopt(loads_document(b.document), entry, line, route_to)
            notes += more
            built = []
            for tenant, doc in ((src, doc_a), (dst, doc_b)):
                document = dumps_document(doc)
                try:
                    one = await state.compiler.build(document, "json")
                except SettingsError as exc:
                    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"moving {number} would leave tenant {tenant!r} with settings that are not "
                                       f"valid: {exc}") from None
                built.append((one, document))
            writes = [VersionWrite(t, "transfer", one.document or document, one.blob, one.numbers, record.version,
                                   comment[:500], facts_of(one))
                      for t, record, (one, document) in ((src, a, built[0]), (dst, b, built[1]))]
            state.installing.update((src, dst))
            try:
                try:
                    versions = await committed(functools.partial(store.commit_versions, writes, may_create=False),
                                               lambda vs: {"version_before": vs[0] - 1, "version_after": vs[0]})
                except VersionConflict:
                    continue
                for (one, _document), version, tenant in zip(built, versions, (src, dst), strict=True):
                    await state.install_blob(tenant, version, one.blob)
            finally:
                state.installing.difference_update((src, dst))
            break
        else:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"tenants {src!r} and {dst!r} kept getting new versions "
                                                            "while the transfer was worked out: try again")
        auth.note(version_before=a.version, version_after=versions[0],
                  detail=f"to tenant {dst} (version {versions[1]}); " + "; ".join(notes))
        auth.note_also(tenant=dst, version_before=b.version, version_after=versions[1],
                       detail=f"from tenant {src} (version {versions[0]}); " + "; ".join(notes))
        log.info("number transferred", extra={"event": "number_transferred", "number": number, "from": src,
                                              "to": dst, "from_version": versions[0], "to_version": versions[1],
                                              "notes": notes})
        return admin_pb2.TransferNumberReply(number=number, from_tenant=src, from_version=versions[0], to_tenant=dst,
                                             to_version=versions[1], notes=notes)

    async def _export_failover(self, r: admin_pb2.ExportFailoverRequest) -> admin_pb2.FailoverTable:
        view = await asyncio.to_thread(self.state.store.failover_view)
        return admin_pb2.FailoverTable(
            generated_at=int(time.time()),
            tenants=[admin_pb2.TenantFailover(tenant=t.tenant, version=t.version, status=t.status,
                                              backup_number=t.backup_number, backup_line=t.backup_line)
                     for t in view.tenants],
            numbers=[number_owner_message(n) for n in view.numbers])

    async def _list_audit(self, r: admin_pb2.ListAuditRequest) -> admin_pb2.ListAuditReply:
        if r.tenant:
            _tenant_arg("tenant", r.tenant)
        if not r.since == r.since or r.since < 0:  # NaN or before 1970
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "since is UTC seconds (0: from the start)")
        if r.limit > 1000 or r.before_id >= 2**63:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "limit is at most 1000; before_id is an audit row id")
        rows = await asyncio.to_thread(self.state.store.audit_rows, r.tenant, r.since, r.limit or 100,
                                       _text("action", r.action), int(r.before_id))
        return admin_pb2.ListAuditReply(entries=[audit_message(row) for row in rows])

    # -- proxy replicas -------------------------------------------------------------

    async def _list_replicas(self, r: admin_pb2.ListReplicasRequest) -> admin_pb2.ListReplicasReply:
        tenant = _tenant_arg("tenant", r.tenant) if r.tenant else ""
        rows = await asyncio.to_thread(self.state.store.list_replicas, tenant, _text("replica", r.replica))
        # the version in force is the store's, not this worker's (which may not have installed it yet)
        in_force = await asyncio.to_thread(self.state.store.current_versions) if rows else {}
        reply = admin_pb2.ListReplicasReply()
        for row in rows:
            reply.replicas.append(admin_pb2.ReplicaInfo(
                replica=row.replica, tenant=row.tenant, version=row.version, checksum=row.checksum,
                installed_at=row.installed_at, refused_version=row.refused_version, refused_reason=row.refused_reason,
                refused_at=row.refused_at, peer=row.peer, token_id=row.token_id, seen_at=row.seen_at,
                in_force=in_force.get(row.tenant, 0), refused_checksum=row.refused_checksum))
        return reply

    # -- removing a tenant --------------------------------------------------------

    async def _remove_tenant(self, r: admin_pb2.RemoveTenantRequest) -> admin_pb2.RemoveTenantReply:
        tenant = _tenant_arg("tenant", r.tenant)
        auth.note(object=f"tenant {tenant}")
        if r.confirm != tenant:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"confirm must repeat the tenant id exactly ({tenant!r}), got {r.confirm[:64]!r}: "
                               "nothing was removed")
        snap = self.state.engine.get(tenant)
        currency = str(snap.meta.get("currency", "")) if snap is not None else ""
        store = self.state.store
        who = auth.CURRENT.get()
        comment = f"removed by token {who.token_id}" if who is not None else "removed"
        try:
            if r.dry_run:
                done = await asyncio.to_thread(store.remove_tenant, tenant, force=r.force, dry_run=True)
            else:
                done = await committed(
                    functools.partial(store.remove_tenant, tenant, force=r.force, comment=comment),
                    lambda d: {"version_before": d.last_version, "version_after": d.removed_version})
        except TenantBusy as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        if not r.dry_run:
            self.state.forget(tenant)  # here at once; every other worker at its next poll of the store
            deleted = await asyncio.to_thread(self._delete_document_files, done.document_files)
            sweep = asyncio.create_task(self._sweep_later(tenant, done.removed_version))
            _SWEEPS.add(sweep)
            sweep.add_done_callback(_SWEEPS.discard)
        else:
            deleted = len(done.document_files)
        reply = _removal_message(done, currency, deleted)
        summary = (f"{'would remove' if r.dry_run else 'removed'}: {done.versions} version(s), {done.numbers} "
                   f"number(s), {done.calls} call(s) ({done.calls_in_progress} in progress), {done.document_sets} "
                   f"document set(s), balance {reply.balance}" + (" (forced)" if r.force else "")
                   + (f"; ledger kept as {done.ledger_archive!r}" if done.ledger_archive else "")
                   + (f"; tokens revoked: {', '.join(done.tokens_revoked)}" if done.tokens_revoked else ""))
        auth.note(version_before=done.last_version, version_after=0 if r.dry_run else done.removed_version,
                  detail=summary)
        if not r.dry_run:
            log.info("tenant %s removed", tenant, extra={
                "event": "tenant_removed", "tenant": tenant, "version": done.last_version, "forced": r.force,
                "by": who.token_id if who is not None else "", "numbers": done.numbers, "calls": done.calls,
                "calls_in_progress": done.calls_in_progress, "balance": reply.balance,
                "ledger_archive": done.ledger_archive, "tokens_revoked": list(done.tokens_revoked)})
        return reply

    async def _sweep_later(self, tenant: str, removed_version: int) -> None:
        """Another worker takes a call event, a credit or an upload for the tenant until its next poll (--poll, at
        most 5 s): once every worker must know, sweep what they wrote as the removal would have."""
        await asyncio.sleep(SWEEP_AFTER_S)
        try:
            swept, files = await asyncio.to_thread(self.state.store.sweep_removed, tenant, removed_version)
            if files:
                await asyncio.to_thread(self._delete_document_files, files)
        except Exception as exc:  # a store that fails now: what was written late stays, said in the log
            log.error("tenant %s: the sweep after its removal failed: %s", tenant, exc,
                      extra={"event": "tenant_sweep_failed", "tenant": tenant})
            return
        if swept:
            log.warning("tenant %s: %d row(s) written after its removal swept", tenant, swept,
                        extra={"event": "tenant_swept", "tenant": tenant, "rows": swept})

    def _delete_document_files(self, digests: tuple[str, ...]) -> int:
        """Delete the image files only the removed tenant's sets named (from a thread); returns how many.

        Each file is moved aside, the store asked again whether a set names it (an upload of the very same
        image for another tenant may have come in since the removal), and put back if one does: a file is never
        taken from under a set that names it, short of an upload whose set is written between those two steps.
        """
        deleted = 0
        for digest in digests:
            path = self.blobs.path(digest)
            aside = path.with_name(path.name + ".removing")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("cannot delete document file %s of a removed tenant: %s", digest, exc,
                          extra={"event": "document_delete_failed", "sha256": digest})
                continue
            try:
                named = self.state.store.document_file_named(digest)
            except Exception as exc:  # cannot tell: put it back (the removal stands; the file stays on disk)
                log.error("document file %s of a removed tenant kept: %s", digest, exc,
                          extra={"event": "document_delete_failed", "sha256": digest})
                named = True
            if named:
                os.replace(aside, path)
                continue
            aside.unlink(missing_ok=True)
            deleted += 1
        return deleted


def _removal_message(d: TenantRemoval, currency: str, files: int) -> admin_pb2.RemoveTenantReply:
    return admin_pb2.RemoveTenantReply(
        tenant=d.tenant, dry_run=d.dry_run, last_version=d.last_version, removed_version=d.removed_version,
        versions=d.versions, numbers=d.numbers, calls=d.calls, calls_in_progress=d.calls_in_progress,
        document_sets=d.document_sets, document_files=files, balance=billing.format_amount(d.balance_micro),
        reserved=billing.format_amount(d.reserved_micro), currency=currency, ledger_entries=d.ledger_entries,
        topups=d.topups, ledger_archive=d.ledger_archive, card_removed=d.card_removed,
        tokens_revoked=list(d.tokens_revoked), tokens_narrowed=list(d.tokens_narrowed))
