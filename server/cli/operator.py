"""The operator's commands: `callgate billing ...`, `callgate documents ...`, `callgate calls ...` (over gRPC)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from engine import cli as offline
from engine.cli import CliError
from server.cli.grammar import old_tenant_argument, print_json, tenant_of, tenant_option
from server.cli.rpc import call, guarded, stubs
from server.cli.text import when

# -- billing ----------------------------------------------------------------------

def cmd_billing_balance(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    r = call(args, admin.GetBalance, admin_pb2.BalanceRequest(tenant=tenant_of(args)))
    if print_json(args, r):
        return 0
    print(f"tenant {r.tenant!r}: balance {r.balance} {r.currency}, reserved {r.reserved} by calls in progress, "
          f"available {r.available}")
    if r.auto_topup:
        print(f"auto top-up: {r.topup_amount} {r.currency} when the available credit falls below "
              f"{r.topup_threshold}")
    else:
        print("auto top-up: off")
    for t in r.topups:
        extra = f", last decline: {t.last_reason}" if t.last_reason else ""
        retry = f", next attempt {when(t.next_attempt_at)}" if t.status == "pending" and t.attempts else ""
        print(f"  top-up #{t.id} {t.amount} {r.currency} {t.status} after {t.attempts} attempt(s) "
              f"({t.trigger}, {when(t.created_at)}{extra}{retry})")
    return 0


def cmd_billing_ledger(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    r = call(args, admin.ListLedger, admin_pb2.LedgerRequest(tenant=tenant_of(args), limit=args.limit,
                                                                      before_id=args.before or 0))
    if print_json(args, r):
        return 0
    print(f"{'id':>8}  {'when (UTC)':<20} {'kind':<7} {'amount':>12} {'balance':>12}  ref")
    for e in r.entries:
        print(f"{e.id:>8}  {when(e.created_at):<20} {e.kind:<7} {e.amount:>12} {e.balance:>12}  {e.ref}")
    if not r.entries:
        print("(no entries)")
    return 0


def cmd_billing_topup(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    if len(args.words) == 2:  # the older form: topup TENANT AMOUNT
        args.old_tenant, amount = args.words
    elif len(args.words) == 1:
        amount = args.words[0]
    else:
        raise CliError("billing topup takes one AMOUNT (and --tenant T)")
    tenant = tenant_of(args)
    admin, _ = stubs(args)
    r = call(args, admin.Credit, admin_pb2.CreditRequest(tenant=tenant, amount=amount, reference=args.reference))
    said = "credited" if r.recorded else "already credited before (same reference): nothing changed"
    print(f"{amount} {r.currency} {said}; balance {r.balance} {r.currency}")
    return 0


def cmd_billing_card(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    month = year = 0
    if args.set:
        if not args.expires:
            raise CliError("--set needs --expires MM/YYYY")
        try:
            m, _, y = args.expires.partition("/")
            month, year = int(m), int(y)
        except ValueError:
            raise CliError(f"--expires {args.expires!r} is not MM/YYYY, e.g. 12/2028") from None
    admin, _ = stubs(args)
    r = call(args, admin.Card, admin_pb2.CardRequest(tenant=tenant_of(args), number=args.set or "",
                                                             exp_month=month, exp_year=year))
    if print_json(args, r):
        return 0
    if not r.on_file:
        print(f"tenant {r.tenant!r}: no card on file (auto top-ups cannot be charged)")
    else:
        print(f"tenant {r.tenant!r}: {r.brand} ending {r.last4}, expires {r.exp_month:02d}/{r.exp_year}")
    return 0


# -- documents ----------------------------------------------------------------------

def _print_set(s: Any) -> None:
    reason = f" ({s.reason})" if s.reason else ""
    decided = f", decided {when(s.decided_at)} by {s.decided_by}" if s.decided_at else ""
    print(f"set {s.id}: {s.tenant} {s.number} {s.status}{reason}; uploaded {when(s.uploaded_at)}, "
          f"review due {s.due_on}{decided}")
    for f in s.files:
        print(f"    {f.name}  {f.format} {f.width}x{f.height}  {f.size:,} bytes  sha256 {f.sha256[:16]}…")


def cmd_documents_upload(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    files = []
    for path in args.files:
        try:
            files.append(admin_pb2.DocumentUpload(name=path.name, content=path.read_bytes()))
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
    admin, _ = stubs(args)
    r = call(args, admin.UploadDocuments, admin_pb2.UploadDocumentsRequest(
        tenant=args.tenant, number=args.number, files=files))
    _print_set(r)
    return 0


def cmd_documents_list(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    r = call(args, admin.ListDocuments, admin_pb2.ListDocumentsRequest(
        tenant=args.tenant or "", number=args.number or "", status=args.status or "", limit=args.limit))
    if print_json(args, r):
        return 0
    for s in r.sets:
        _print_set(s)
    if not r.sets:
        print("(no document sets)")
    return 0


def cmd_documents_review(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    approve = args.action == "approve"
    admin, _ = stubs(args)
    r = call(args, admin.ReviewDocuments, admin_pb2.ReviewDocumentsRequest(
        set_id=args.set_id, approve=approve, reason=getattr(args, "reason", "") or "",
        reviewer=args.reviewer))
    _print_set(r)
    return 0


# -- calls ----------------------------------------------------------------------------

def cmd_calls_active(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    r = call(args, admin.ListCalls, admin_pb2.ListCallsRequest(tenant=tenant_of(args), state=args.state or "",
                                                                        limit=args.limit))
    if print_json(args, r):
        return 0
    print(f"{'call id':<24} {'direction':<9} {'state':<8} {'from':<16} {'to':<16} {'user':<10} since (UTC)")
    for c in r.calls:
        user = c.last_user or c.ringing_user
        print(f"{c.call_id[:24]:<24} {c.direction:<9} {c.state:<8} {c.caller[:16]:<16} {c.called[:16]:<16} "
              f"{user[:10]:<10} {when(c.ringing_at)}")
    if not r.calls:
        print("(no calls)")
    return 0


def cmd_calls_pickup(args: argparse.Namespace) -> int:
    from callgate.v1 import decisions_pb2

    _, decisions = stubs(args)
    d = call(args, decisions.Pickup, decisions_pb2.PickupRequest(
        tenant=args.tenant, user=args.user, dialed=args.dialed, explain=True),
        check=f"callgate calls active --tenant {args.tenant}")
    if print_json(args, d):
        return 0
    if d.call_id:
        print(f"call {d.call_id} intercepted: answered by {args.user}")
    else:
        print(f"nothing intercepted ({decisions_pb2.Reason.Name(d.reason)}): {d.rule}")
    return 0


# -- export ---------------------------------------------------------------------------

def failover_table(admin: Any, timeout: float) -> dict[str, Any]:
    """What a SIP proxy needs to keep rule 3 while callgate is down: every number's tenant and line, and each
    tenant's version, status and backup (integrations/kamailio/callgate_kemi.py reads it).  Built from the
    store's ownership table in one read, so a number is listed once, under the tenant that holds it."""
    from callgate.v1 import admin_pb2

    table = admin.ExportFailover(admin_pb2.ExportFailoverRequest(), timeout=timeout)
    return {"generated_at": dt.datetime.fromtimestamp(table.generated_at, dt.UTC).isoformat(timespec="seconds"),
            "tenants": {t.tenant: {"version": t.version, "status": t.status,
                                   "backup": ({"number": t.backup_number, "line": t.backup_line}
                                              if t.backup_number else None)} for t in table.tenants},
            "numbers": {n.number: {"tenant": n.tenant, "line": n.line} for n in table.numbers}}


def cmd_export_failover(args: argparse.Namespace) -> int:
    import json
    import os

    admin, _ = stubs(args)
    table = guarded(args, lambda: failover_table(admin, args.timeout))
    text = json.dumps(table, indent=2, sort_keys=True) + "\n"
    if args.output is None:
        print(text, end="")
        return 0
    partial = args.output.with_name(args.output.name + ".tmp")
    try:  # written whole, then renamed: a proxy reading it never sees half a table
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, args.output)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"failover table for {len(table['tenants'])} tenant(s), {len(table['numbers'])} number(s) "
          f"written to {args.output}", file=sys.stderr)
    return 0


def add_operator_commands(sub: Any) -> None:
    billing = sub.add_parser("billing", help="balances, ledger, operator credits and the card on file")
    bsub = billing.add_subparsers(dest="action", required=True, metavar="ACTION")
    bal = bsub.add_parser("balance", help="a tenant's balance, auto top-up rule and recent top-ups")
    tenant_option(bal, required=False)
    old_tenant_argument(bal)
    bal.set_defaults(run=cmd_billing_balance)
    led = bsub.add_parser("ledger", help="a tenant's ledger entries, newest first")
    tenant_option(led, required=False)
    old_tenant_argument(led)
    led.add_argument("--limit", type=offline.LIMIT, default=50, help="entries to list (default 50)")
    led.add_argument("--before", type=offline.ROW_ID, metavar="ID", help="entries older than this id (paging)")
    led.set_defaults(run=cmd_billing_ledger)
    top = bsub.add_parser("topup", help="credit a payment received (idempotent on --reference)")
    top.add_argument("words", nargs="+", metavar="AMOUNT",
                     help="e.g. 20.00, in the tenant's currency (the older form `topup TENANT AMOUNT` is "
                          "accepted until the next release)")
    tenant_option(top, required=False)
    top.add_argument("--reference", required=True, help="the payment's id: the same reference is credited once")
    top.set_defaults(run=cmd_billing_topup)
    card = bsub.add_parser("card", help="show the card auto top-ups charge, or --set a new one")
    tenant_option(card, required=False)
    old_tenant_argument(card)
    card.add_argument("--set", metavar="NUMBER", help="card number (the sandbox gateway tokenizes it; "
                                                      "4000000000000002 always declines)")
    card.add_argument("--expires", metavar="MM/YYYY", help="with --set: the card's expiry month")
    card.set_defaults(run=cmd_billing_card)

    docs = sub.add_parser("documents", help="upload, list, approve and reject a number's legal documents")
    dsub = docs.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = dsub.add_parser("upload", help="upload document images (PNG, JPEG, WEBP, TIFF; each side <= 2000 px) "
                                        "for one of the tenant's numbers")
    up.add_argument("number", help="E.164")
    up.add_argument("files", nargs="+", type=Path, metavar="FILE", help="the scans, one file a page")
    tenant_option(up)
    up.set_defaults(run=cmd_documents_upload)
    ls = dsub.add_parser("list", help="document sets, newest first")
    tenant_option(ls, "one tenant's sets only (default: every tenant)", required=False)
    ls.add_argument("--number", help="one number's sets only (E.164)")
    ls.add_argument("--status", choices=("pending", "approved", "rejected"), help="sets in this state only")
    ls.add_argument("--limit", type=offline.LIMIT, default=100, help="sets to list (default 100)")
    ls.set_defaults(run=cmd_documents_list)
    for action, text in (("approve", "approve a set: its number may be used at once"),
                         ("reject", "reject a set with a reason: its number stays unusable")):
        p = dsub.add_parser(action, help=text)
        p.add_argument("set_id", type=offline.int_in(1, 2**63 - 1, "a document set id"), metavar="SET_ID",
                       help="the set's id, as `documents list` shows it")
        if action == "reject":
            p.add_argument("--reason", required=True, help="what the tenant must fix")
        p.add_argument("--reviewer", default="operator", help="who decided (kept with the set)")
        p.set_defaults(run=cmd_documents_review)

    export = sub.add_parser("export", help="tables for SIP proxies")
    esub = export.add_subparsers(dest="action", required=True, metavar="ACTION")
    fo = esub.add_parser("failover", help="every number's tenant and line and each tenant's backup, as JSON, for "
                                          "a proxy's fail-open policy (rule 3 while callgate is down)")
    fo.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (atomically) instead of stdout")
    fo.set_defaults(run=cmd_export_failover)

    calls = sub.add_parser("calls", help="the call registry")
    csub = calls.add_subparsers(dest="action", required=True, metavar="ACTION")
    act = csub.add_parser("active", help="a tenant's calls ringing or answered (or --state)")
    tenant_option(act, required=False)
    old_tenant_argument(act)
    act.add_argument("--state", choices=("ringing", "answered", "ended", "expired"),
                     help="calls in this state (default: ringing and answered)")
    act.add_argument("--limit", type=offline.LIMIT, default=100, help="calls to list (default 100)")
    act.set_defaults(run=cmd_calls_active)
    pick = csub.add_parser("pickup", help="intercept the ringing call a user's pickup code takes (answers it; "
                                          "`decide pickup` only shows which)")
    tenant_option(pick)
    pick.add_argument("--user", required=True, help="the user who picks the call up")
    pick.add_argument("--dialed", required=True, help="what the user dialled: the tenant's pickup code, e.g. *8")
    pick.set_defaults(run=cmd_calls_pickup)
