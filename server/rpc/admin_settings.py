"""Admin: settings pushes (whole or in pieces), versions, rollbacks, blacklist patches and stats.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator

import grpc

from callgate.v1 import admin_pb2
from engine.settings import E164
from engine.snapshot import Built
from server import metrics
from server.rpc import auth
from server.rpc.admin_base import AdminBase
from server.rpc.errors import RequestError
from server.rpc.messages import committed, facts_of
from server.rpc.requests import LIST_NAMES, _text
from server.store.api import StoreBusy, TenantMissing, VersionConflict, VersionMoved

log = logging.getLogger("callgate.service")


class SettingsAdmin(AdminBase):
    async def _push_settings(self, request: admin_pb2.PushSettingsRequest) -> admin_pb2.PushSettingsReply:
        document = request.document  # each read of a bytes field copies it: read it once
        self._check_push(request, len(document))
        start = time.perf_counter()
        built = await self.state.compiler.build(document, request.format or None)
        return await self._commit(built, built.document or document, "push",
                                  request.expected_version, request.comment, start)


    def _check_lists(self, built: Built) -> None:
        if self.max_list and built.longest_list > self.max_list:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"a blacklist of tenant {built.tenant!r} would hold {built.longest_list:,} entries; "
                               f"at most {self.max_list:,} per list (the server's --max-list-entries)")

    def _check_push(self, request: admin_pb2.PushSettingsRequest, size: int) -> None:
        if request.format not in ("", "json", "msgpack"):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "format is json or msgpack")
        if size > self.max_document:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"document is {size} bytes or more; at most {self.max_document}")
        if request.expected_version < 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "expected_version must be >= 0")

    async def _push_settings_upload(self, request_iterator: AsyncIterator[admin_pb2.PushSettingsRequest]
                                    ) -> admin_pb2.PushSettingsReply:
        first: admin_pb2.PushSettingsRequest | None = None
        size = 0
        began = time.monotonic()
        with self.state.compiler.spool.file() as handle:
            async for piece in request_iterator:
                data = piece.document
                size += len(data)
                if first is None:
                    first = piece
                elif piece.format or piece.expected_version or piece.comment:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       "format, expected_version and comment belong in the first message only")
                self._check_push(first, size)
                handle.write(data)  # a piece to the page cache: microseconds, the loop keeps answering
                if self.upload_rate:
                    # Reading slower than the client sends lets HTTP/2 flow control hold the rest
                    # back: on a small machine, receiving 20 MB at full speed takes the CPU the
                    # decisions need (p99 x2.6 measured on 2 cores; x1.6 at 25 MB/s).
                    ahead = began + size / self.upload_rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            if first is None or size == 0:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the upload carried no document")
            handle.flush()
            start = time.perf_counter()
            fmt = first.format or None
            built = await self.state.compiler.build_path(handle.name, fmt)
            document = built.document
            if document is None:  # stored as sent (JSON): read back off the loop
                handle.seek(0)
                document = await asyncio.to_thread(handle.read)
        return await self._commit(built, document, "push", first.expected_version, first.comment, start)


    async def _commit(self, built: Built, document: bytes, kind: str, expected: int, comment: str,
                      start: float) -> admin_pb2.PushSettingsReply:
        state = self.state
        auth.note(tenant=built.tenant)     # before the check: a refused push is filed under the tenant it named
        auth.require_tenant(built.tenant)  # a pushed document names its tenant only inside
        self._check_lists(built)
        principal = auth.CURRENT.get()
        role = principal.role if principal is not None else ""   # "": no auth, every act allowed
        who = f"token {principal.token_id} ({role})" if principal is not None else "this caller"
        expected_version: int | None = expected if expected else None
        if role == "operator":
            # an operator creates tenants (their first version) and nothing else: its tenant-admin or an
            # owner pushes the versions after that
            if expected:
                raise auth.AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                     f"{who} creates tenants only: expected_version must be 0")
            expected_version = 0
        state.installing.add(built.tenant)
        built_at = time.perf_counter()
        try:
            try:
                version = await committed(functools.partial(
                    state.store.commit_version, built.tenant, kind, document, built.blob, expected_version,
                    comment[:500], numbers=built.numbers, may_create=role != "tenant-admin", facts=facts_of(built)),
                    lambda v: {"version_before": v - 1, "version_after": v, "object": f"version {v}"})
            except VersionConflict as exc:
                if role == "operator" and exc.expected == 0:
                    raise auth.AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                         f"{who} creates tenants only: tenant {built.tenant!r} exists (version "
                                         f"{exc.actual}); its new versions come from its tenant-admin or an owner"
                                         ) from None
                raise
            except TenantMissing:
                raise auth.AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                     f"{who} may not create tenant {built.tenant!r}: creating a tenant is an "
                                     "operator's or an owner's act") from None
            stored_at = time.perf_counter()
            await state.install_blob(built.tenant, version, built.blob)
        finally:
            state.installing.discard(built.tenant)
        end = time.perf_counter()
        auth.note(version_before=version - 1, version_after=version, object=f"version {version}",
                  detail=comment[:500])
        seconds = end - start
        metrics.PUSH_SECONDS.observe(seconds)
        # the phases tell an operator where a slow push spent its time
        log.info("settings in force", extra={"event": kind, "tenant": built.tenant, "version": version,
                                             "seconds": round(seconds, 3),
                                             "build_s": round(built_at - start, 3),
                                             "store_s": round(stored_at - built_at, 3),
                                             "install_s": round(end - stored_at, 3)})
        return admin_pb2.PushSettingsReply(tenant=built.tenant, version=version,
                                           compile_seconds=built.compile_seconds)

    async def _get_settings(self, request: admin_pb2.GetSettingsRequest) -> admin_pb2.SettingsVersion:
        record = await asyncio.to_thread(self.state.store.get_version, _text("tenant", request.tenant),
                                         request.version or None)
        return admin_pb2.SettingsVersion(tenant=record.tenant, version=record.version, kind=record.kind,
                                         document=record.document or b"", created_at=record.created_at,
                                         comment=record.comment, in_force=record.in_force)


    async def _list_versions(self, request: admin_pb2.ListVersionsRequest) -> admin_pb2.ListVersionsReply:
        limit = request.limit or 50
        if limit > 1000:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "limit is at most 1000")
        records = await asyncio.to_thread(self.state.store.list_versions, _text("tenant", request.tenant), limit)
        return admin_pb2.ListVersionsReply(versions=[
            admin_pb2.SettingsVersion(tenant=r.tenant, version=r.version, kind=r.kind, created_at=r.created_at,
                                      comment=r.comment, in_force=r.in_force) for r in records])


    async def _rollback(self, request: admin_pb2.RollbackRequest) -> admin_pb2.PushSettingsReply:
        if request.version <= 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "version must be a version number (>= 1)")
        start = time.perf_counter()
        record = await asyncio.to_thread(self.state.store.get_version, _text("tenant", request.tenant),
                                         request.version)
        assert record.document is not None
        built = await self.state.compiler.build(record.document, "json")
        return await self._commit(built, record.document, "rollback", request.expected_version,
                                  f"rollback to version {request.version}", start)


    async def _patch_blacklist(self, request: admin_pb2.PatchBlacklistRequest) -> admin_pb2.PatchBlacklistReply:
        tenant = _text("tenant", request.tenant)
        list_name = LIST_NAMES.get(request.list)
        if list_name is None:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "list is BLACKLIST or OFFHOURS_BLACKLIST")
        if not request.add and not request.remove:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "nothing to add or remove")
        for field, listed in (("add", request.add), ("remove", request.remove)):
            bad = [i for i, n in enumerate(listed) if not E164.fullmatch(n)]
            if bad:
                shown = ", ".join(f"{field}[{i}] {listed[i][:20]!r}" for i in bad[:5])
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"{len(bad)} entries are not E.164 numbers (+ and 8 to 15 digits): {shown}")
        start = time.perf_counter()
        add, remove, expected = list(request.add), list(request.remove), request.expected_version or None
        made = False
        self.state.installing.add(tenant)
        try:
            for _attempt in range(5):
                patch = await asyncio.to_thread(self.state.store.prepare_patch, tenant, list_name, add, remove,
                                                expected)
                if not patch.ops:  # changes nothing: no version (a replayed patch)
                    result = patch.unchanged()
                    break
                # compiled in the compile process, outside any store lock: a big list takes a second
                built = await self.state.compiler.build(patch.document, "json")
                self._check_lists(built)
                try:
                    result = await asyncio.to_thread(self.state.store.commit_patch, patch, built.blob)
                except VersionMoved:
                    continue  # another version came in while this one compiled: patch that one
                made = True
                await self.state.install_blob(tenant, result.version, built.blob)
                break
            else:
                raise StoreBusy(f"tenant {tenant!r}: other versions kept arriving while this patch compiled; "
                                "try again")
        finally:
            self.state.installing.discard(tenant)
        metrics.PUSH_SECONDS.observe(time.perf_counter() - start)
        auth.note(version_before=result.version - (1 if made else 0), version_after=result.version,
                  object=list_name, detail=f"+{result.added} -{result.removed}")
        log.info("blacklist patched", extra={"event": "patch", "tenant": tenant, "version": result.version,
                                             "list": list_name, "added": result.added,
                                             "removed": result.removed})
        return admin_pb2.PatchBlacklistReply(tenant=tenant, version=result.version, added=result.added,
                                             removed=result.removed, size=result.size)


    async def _stats(self, request: admin_pb2.StatsRequest) -> admin_pb2.StatsReply:
        versions = await asyncio.to_thread(self.state.store.current_versions)
        tenants = [request.tenant] if request.tenant else sorted(versions)
        if request.tenant and request.tenant not in versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant[:64]!r} has no settings")
        out = []
        for t in tenants:
            snap = self.state.engine.get(t)
            out.append(admin_pb2.TenantStats(
                tenant=t, version=versions.get(t, 0), loaded_version=snap.version if snap else 0,
                numbers=len(snap.meta["numbers"]) if snap else 0,
                blacklist=snap.meta["blacklist_size"] if snap else 0,
                offhours_blacklist=snap.meta["offhours_blacklist_size"] if snap else 0,
                status="active" if snap and snap.meta["active"] else "unavailable"))
        return admin_pb2.StatsReply(tenants=out, pid=os.getpid(), decisions=metrics.decided(),
                                    uptime_seconds=time.monotonic() - self.state.started)
