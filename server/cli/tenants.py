"""`callgate tenant remove` (over gRPC, owner only): a tenant removed for good, its id typed twice.

What goes and what stays is the README's "Removing a tenant"; the server does it in one transaction and audits
it (`callgate audit --action RemoveTenant`).
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli import CliError
from server.cli.grammar import print_json, tenant_of, tenant_option
from server.cli.rpc import call, stubs


def cmd_tenant_remove(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    tenant = tenant_of(args)
    if args.confirm != tenant:  # the server checks it too: a typo never even leaves this machine
        raise CliError(f"--confirm {args.confirm!r} is not the tenant {tenant!r}: type the tenant id twice, "
                       "exactly; nothing was removed")
    admin, _ = stubs(args)
    r = call(args, admin.RemoveTenant, admin_pb2.RemoveTenantRequest(
        tenant=tenant, confirm=args.confirm, force=args.force, dry_run=args.dry_run),
        check=f"callgate settings history --tenant {tenant}")
    if print_json(args, r):
        return 0
    money = f"{r.balance} {r.currency}".strip()
    if r.dry_run:
        print(f"tenant {r.tenant!r} (version {r.last_version}) would be removed; a dry run: nothing was removed")
    else:
        print(f"tenant {r.tenant!r} removed (it was at version {r.last_version}; history row {r.removed_version} "
              "records the removal)")
    print(f"  deleted: {r.versions} settings version(s); {r.numbers} number(s) released; {r.calls} call(s), "
          f"{r.calls_in_progress} of them in progress; {r.document_sets} document set(s), {r.document_files} "
          f"image file(s)" + ("; the card on file" if r.card_removed else ""))
    if r.ledger_archive:
        print(f"  kept: {r.ledger_entries} ledger row(s) and {r.topups} top-up(s), balance {money} "
              f"(reserved {r.reserved}), filed as {r.ledger_archive!r}")
    else:
        print(f"  kept: no money records (balance {money})")
    if r.tokens_revoked or r.tokens_narrowed:
        print("  tokens: " + "; ".join(part for part in (
            f"revoked {', '.join(r.tokens_revoked)}" if r.tokens_revoked else "",
            f"this tenant taken off {', '.join(r.tokens_narrowed)}" if r.tokens_narrowed else "") if part))
    if not r.dry_run:
        print("  every worker answers NOT_FOUND for it from its next poll of the store (within a second)")
    return 0


def add_tenant_commands(sub: Any) -> None:
    tenant = sub.add_parser("tenant", help="remove a tenant for good (owner)")
    tsub = tenant.add_subparsers(dest="action", required=True, metavar="ACTION")
    rm = tsub.add_parser(
        "remove", help="remove a tenant for good: settings, numbers, calls, documents (the ledger is kept)",
        description="Remove a tenant for good, with an owner token: its settings history and snapshots, its "
                    "numbers (released for others to claim), its calls and leads, its documents and card, and its "
                    "tenant-admin tokens' access to it. Its ledger and top-ups are kept for the accounts, under "
                    "an archive name. Refused while it has calls in progress or a balance that is not 0, unless "
                    "--force. Audited. Every worker answers NOT_FOUND for it within a second. There is no undo "
                    "but a backup of the store: try --dry-run first.")
    tenant_option(rm, "the tenant to remove")
    rm.add_argument("--confirm", required=True, metavar="TENANT",
                    help="the tenant id again, typed out (never taken from $CALLGATE_TENANT): unless it is the "
                         "same, nothing is removed")
    rm.add_argument("--force", action="store_true",
                    help="remove it even with calls in progress (their talk is never charged) or a balance that "
                         "is not 0 (kept in the archived ledger)")
    rm.add_argument("--dry-run", action="store_true", help="check everything and say what would go; remove nothing")
    rm.set_defaults(run=cmd_tenant_remove)
