"""Admin: documents and their review, balances, the ledger, credits, cards, the call registry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import grpc

from callgate.v1 import admin_pb2
from server.rpc import auth
from server.rpc.admin_base import AdminBase
from server.rpc.errors import RequestError
from server.rpc.messages import document_set_message
from server.rpc.requests import MAX_DOCUMENT_FILES, _text
from server.rules import billing, calls, documents
from server.store.api import CardRecord, DocumentFile
from server.worker import jobs

log = logging.getLogger("callgate.service")


class AccountsAdmin(AdminBase):
    async def _upload_documents(self, r: admin_pb2.UploadDocumentsRequest) -> admin_pb2.DocumentSet:
        snap = self._tenant(r.tenant)
        number = _text("number", r.number)
        if number not in snap.meta["numbers"]:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"{number[:32]!r} is not one of tenant {r.tenant!r}'s numbers")
        if not r.files:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "no files: upload at least one document image")
        if len(r.files) > MAX_DOCUMENT_FILES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{len(r.files)} files; at most {MAX_DOCUMENT_FILES} per upload")
        checked = []
        for f in r.files:
            content = f.content  # each read of a bytes field copies it: read it once
            facts = await asyncio.to_thread(documents.check_image, content, f.name, self.max_upload)
            checked.append((facts, documents.clean_name(f.name), content))
        for _facts, _name, content in checked:  # every file is checked before any is kept
            await asyncio.to_thread(self.blobs.put, content)
        now = int(time.time())
        due = documents.due_date(dt.datetime.fromtimestamp(now, dt.UTC).date())
        files = [DocumentFile(f.sha256, name, f.format, f.width, f.height, f.size) for f, name, _ in checked]
        ds = await asyncio.to_thread(self.state.store.add_document_set, r.tenant, number, files, now,
                                     due.isoformat())
        await self.state.apply_documents(r.tenant)  # a rejected number's new set is pending again, here at once
        auth.note(object=f"number {number}, set {ds.id}", detail=f"{len(files)} file(s), review due {ds.due_on}")
        log.info("documents uploaded", extra={"event": "documents_uploaded", "tenant": r.tenant, "number": number,
                                              "set": ds.id, "files": len(files), "due_on": ds.due_on})
        return document_set_message(ds)

    async def _list_documents(self, r: admin_pb2.ListDocumentsRequest) -> admin_pb2.ListDocumentsReply:
        if r.status not in ("", "pending", "approved", "rejected"):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "status is pending, approved or rejected")
        sets = await asyncio.to_thread(self.state.store.document_sets, _text("tenant", r.tenant),
                                       _text("number", r.number), r.status, min(r.limit or 100, 1000))
        return admin_pb2.ListDocumentsReply(sets=[document_set_message(ds) for ds in sets])

    async def _review_documents(self, r: admin_pb2.ReviewDocumentsRequest) -> admin_pb2.DocumentSet:
        if r.set_id <= 0 or r.set_id >= 2**63:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "set_id is the id `documents list` shows")
        reason = _text("reason", r.reason).strip()
        if not r.approve and not reason:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "a rejection needs a reason the tenant can act on")
        ds = await asyncio.to_thread(self.state.store.review_document_set, int(r.set_id), r.approve, reason,
                                     _text("reviewer", r.reviewer) or "operator", int(time.time()))
        await self.state.apply_documents(ds.tenant)  # in force here at once; elsewhere at the next poll
        auth.note(tenant=ds.tenant, object=f"set {ds.id}, number {ds.number}",
                  detail=ds.status + (f": {ds.reason}" if ds.reason else ""))
        log.info("documents reviewed", extra={"event": "documents_reviewed", "tenant": ds.tenant,
                                              "number": ds.number, "set": ds.id, "status": ds.status,
                                              "reason": ds.reason})
        return document_set_message(ds)

    async def _get_balance(self, r: admin_pb2.BalanceRequest) -> admin_pb2.BalanceReply:
        snap = self._tenant(r.tenant)
        store = self.state.store
        account = await asyncio.to_thread(store.account, r.tenant)
        topups = await asyncio.to_thread(store.topups, r.tenant, 10)
        policy = jobs.topup_policy(snap, dt.datetime.now(dt.UTC).date())
        out = admin_pb2.BalanceReply(tenant=r.tenant, balance=billing.format_amount(account.balance_micro),
                                     reserved=billing.format_amount(account.reserved_micro),
                                     available=billing.format_amount(account.available_micro),
                                     currency=snap.meta["currency"],
                                     auto_topup=policy is not None,
                                     topups=[admin_pb2.TopupInfo(
                                         id=t.id, amount=billing.format_amount(t.amount_micro), status=t.status,
                                         attempts=t.attempts, last_reason=t.last_reason, gateway_ref=t.gateway_ref,
                                         trigger=t.trigger, created_at=t.created_at,
                                         next_attempt_at=t.next_attempt_at) for t in topups])
        if policy is not None:
            out.topup_threshold = billing.format_amount(policy.threshold_micro)
            out.topup_amount = billing.format_amount(policy.amount_micro)
        return out

    async def _list_ledger(self, r: admin_pb2.LedgerRequest) -> admin_pb2.LedgerReply:
        self._tenant(r.tenant)
        if r.before_id >= 2**63:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "before_id is a ledger entry id")
        entries = await asyncio.to_thread(self.state.store.ledger, r.tenant, min(r.limit or 50, 1000),
                                          int(r.before_id))
        return admin_pb2.LedgerReply(entries=[admin_pb2.LedgerEntry(
            id=e.id, kind=e.kind, amount=billing.format_amount(e.amount_micro), ref=e.ref, currency=e.currency,
            created_at=e.created_at, balance=billing.format_amount(e.balance_micro)) for e in entries])

    async def _credit(self, r: admin_pb2.CreditRequest) -> admin_pb2.CreditReply:
        snap = self._tenant(r.tenant)
        micro = billing.to_micro(_text("amount", r.amount))
        if micro <= 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "amount must be more than 0, e.g. 20.00")
        reference = _text("reference", r.reference).strip()
        if not reference:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "reference is required (the payment's id): the same reference is credited once")
        currency = snap.meta["currency"]
        recorded = await asyncio.to_thread(self.state.store.credit, r.tenant, micro, "credit", reference, currency)
        balance = await asyncio.to_thread(self.state.store.balance, r.tenant)
        log.info("credit", extra={"event": "credit", "tenant": r.tenant, "amount": billing.format_amount(micro),
                                  "reference": reference, "recorded": recorded})
        return admin_pb2.CreditReply(recorded=recorded, balance=billing.format_amount(balance), currency=currency)

    async def _card(self, r: admin_pb2.CardRequest) -> admin_pb2.CardReply:
        self._tenant(r.tenant)
        store = self.state.store
        if r.number:
            card = billing.tokenize_card(_text("number", r.number), r.exp_month, r.exp_year,
                                         dt.datetime.now(dt.UTC).date())
            await asyncio.to_thread(store.set_card, CardRecord(r.tenant, card.token, card.brand, card.last4,
                                                               r.exp_month, r.exp_year))
            log.info("card on file", extra={"event": "card", "tenant": r.tenant, "brand": card.brand,
                                            "last4": card.last4})
        found = await asyncio.to_thread(store.card, r.tenant)
        if found is None:
            return admin_pb2.CardReply(tenant=r.tenant, on_file=False)
        return admin_pb2.CardReply(tenant=r.tenant, on_file=True, brand=found.brand, last4=found.last4,
                                   exp_month=found.exp_month, exp_year=found.exp_year)

    async def _list_calls(self, r: admin_pb2.ListCallsRequest) -> admin_pb2.ListCallsReply:
        self._tenant(r.tenant)
        if r.state and r.state not in calls.STATES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"state is one of {', '.join(calls.STATES)}")
        states = (r.state,) if r.state else ("ringing", "answered")
        found = await asyncio.to_thread(self.state.store.calls, r.tenant, states, min(r.limit or 100, 1000))
        return admin_pb2.ListCallsReply(calls=[admin_pb2.CallInfo(
            call_id=c.call_id, direction=c.direction, caller=c.caller, called=c.called, state=c.state,
            ringing_user=c.ringing_user, answered_by=c.answered_by, last_user=c.last_user, ringing_at=c.ringing_at,
            answered_at=c.answered_at, ended_at=c.ended_at, talked_seconds=c.talked_s,
            charge=billing.format_amount(c.charge_micro), outcome=c.outcome, caller_raw=c.caller_raw,
            called_raw=c.called_raw) for c in found])
