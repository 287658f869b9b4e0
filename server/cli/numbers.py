"""`callgate numbers owner|transfer` (over gRPC, operator or owner) and `numbers conflicts|resolve` (on the host).

A phone number belongs to one tenant at a time.  `owner` says who holds one;
`transfer` moves one in a single step (two settings versions committed
together, audited).  A store made before numbers had owners may list a
number under several tenants: the server then refuses to start, and
`conflicts` / `resolve` (on the server's data directory, as the server is
down) let an operator give each such number to one of its claimants.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engine.cli import CliError
from engine.document_json import dumps_document, loads_document
from server.cli.local import open_store
from server.cli.rpc import call, stubs
from server.cli.text import when


def cmd_numbers_owner(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    r = call(args, admin.NumberOwner, admin_pb2.NumberOwnerRequest(number=args.number))
    if args.json:
        print(json.dumps({"number": r.number, "tenant": r.tenant, "line": r.line, "version": r.version,
                          "since": r.since}))
    else:
        print(f"{r.number} belongs to tenant {r.tenant!r} (line {r.line}), since its version {r.version} "
              f"({when(r.since)})")
    return 0


def cmd_numbers_transfer(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    r = call(args, admin.TransferNumber, admin_pb2.TransferNumberRequest(
        number=args.number, from_tenant=args.from_tenant, to_tenant=args.to_tenant, line=args.line or "",
        route_to=args.route_to or "", comment=args.comment or ""))
    print(f"{r.number} moved from tenant {r.from_tenant!r} (now at version {r.from_version}) to tenant "
          f"{r.to_tenant!r} (now at version {r.to_version})")
    for note in r.notes:
        print(f"  - {note}")
    return 0


def cmd_numbers_conflicts(args: argparse.Namespace) -> int:

    store = open_store(args)
    try:
        for problem in store.check_ownership():  # what a store touched by an older server may hold
            print(f"check: {problem}")
        conflicts = store.ownership_conflicts()
    finally:
        store.close()
    for number, holders in conflicts.items():
        print(f"{number}: listed by " + ", ".join(f"{t} (line {line})" for t, line in holders))
    if not conflicts:
        print("(no number is listed by more than one tenant)")
    return 0


def cmd_numbers_resolve(args: argparse.Namespace) -> int:
    """Give a number listed by several tenants to --owner: each other claimant gets a new version without it."""
    from engine.settings import SettingsError
    from engine.snapshot import build
    from server.rules import numbers
    from server.store.api import StoreError, TenantFacts, VersionWrite

    store = open_store(args)
    try:
        holders = [t for t, _ in store.ownership_conflicts().get(args.number, [])]
        if not holders:
            raise CliError(f"{args.number} is not listed by several tenants: nothing to resolve "
                           "(`callgate numbers conflicts --data-dir ...` lists what is)")
        if args.owner not in holders:
            raise CliError(f"--owner {args.owner!r} does not list {args.number}; its claimants are "
                           f"{', '.join(holders)}")
        writes, notes = [], []
        comment = f"{args.number} given to tenant {args.owner} (numbers resolve)"
        for tenant in holders:
            if tenant == args.owner:
                continue
            record = store.get_version(tenant)
            assert record.document is not None
            doc, _entry, said = numbers.release(loads_document(record.document), args.number)
            document = dumps_document(doc)
            try:
                built = build(document, "json")
            except SettingsError as exc:
                raise CliError(f"tenant {tenant!r} without {args.number} would not be valid settings: "
                               f"{'; '.join(exc.errors[:5])}") from None
            writes.append(VersionWrite(tenant, "resolve", document, built.blob, built.numbers, record.version,
                                       comment, TenantFacts(built.status, *built.backup)))
            notes += said
        try:
            versions = store.resolve_conflict(args.number, args.owner, writes)
        except (StoreError, ValueError) as exc:
            raise CliError(str(exc)) from None
        store.add_audit({"token_id": "", "role": "host", "tenant": args.owner, "action": "NumbersResolve",
                         "object": f"number {args.number}", "result": "OK",
                         "detail": "; ".join([comment, *notes])})
        for w, version in zip(writes, versions, strict=True):    # each tenant that let the number go
            store.add_audit({"token_id": "", "role": "host", "tenant": w.tenant, "action": "NumbersResolve",
                             "object": f"number {args.number}", "version_before": version - 1,
                             "version_after": version, "result": "OK",
                             "detail": f"{args.number} given to tenant {args.owner}: a new version without it"})
    finally:
        store.close()
    print(f"{args.number} belongs to tenant {args.owner!r} now")
    for w, version in zip(writes, versions, strict=True):
        print(f"  tenant {w.tenant!r} is at version {version}, without it")
    for note in notes:
        print(f"  - {note}")
    return 0


def add_numbers_commands(sub: Any) -> None:
    numbers = sub.add_parser("numbers", help="who holds a phone number; move one between tenants",
                             description="A phone number belongs to one tenant at a time: a push that lists "
                                         "another tenant's number is refused. Operators and owners move numbers.")
    nsub = numbers.add_subparsers(dest="action", required=True, metavar="ACTION")
    owner = nsub.add_parser("owner", help="the tenant that holds a number (operator or owner token)")
    owner.add_argument("number", help="E.164, e.g. +14155550100")
    owner.set_defaults(run=cmd_numbers_owner)
    tr = nsub.add_parser("transfer", help="move a number to another tenant in one step (operator or owner token)",
                         description="Makes a new settings version of --from without the number (and without it "
                                     "as a caller ID) and one of --to with it, committed together and audited. "
                                     "Example: callgate numbers transfer +14155550100 --from acme --to beta "
                                     "--line trunk-1")
    tr.add_argument("number", help="E.164, held by --from")
    tr.add_argument("--from", dest="from_tenant", required=True, metavar="TENANT", help="the tenant that holds it")
    tr.add_argument("--to", dest="to_tenant", required=True, metavar="TENANT", help="an existing tenant")
    tr.add_argument("--line", help="--to's line for the number (default: a line of the same id)")
    tr.add_argument("--route-to", metavar="GROUP",
                    help="--to's queue group for its calls (default: a group of the same id, else none)")
    tr.add_argument("--comment", help="kept in both tenants' history")
    tr.set_defaults(run=cmd_numbers_transfer)
    co = nsub.add_parser("conflicts", help="check the owners against the settings in force and list the numbers "
                                           "held twice (on the host; run it after an upgrade)",
                         description="Compares every number the settings in force list with its owner; a number "
                                     "listed twice, or held by a tenant that does not list it, is recorded as a "
                                     "conflict (the server will not start until `numbers resolve` settles it).")
    co.add_argument("--data-dir", type=Path, required=True, help="the server's data directory")
    co.set_defaults(run=cmd_numbers_conflicts)
    rs = nsub.add_parser("resolve", help="give a number listed by several tenants to one of them (on the host, "
                                         "with the server stopped)",
                         description="The other tenants get a new settings version without the number; the "
                                     "server starts once no such number is left. Example: callgate numbers "
                                     "resolve +14155550100 --owner acme --data-dir data")
    rs.add_argument("number", help="E.164, as `numbers conflicts` lists it")
    rs.add_argument("--owner", required=True, metavar="TENANT", help="the tenant that keeps it")
    rs.add_argument("--data-dir", type=Path, required=True, help="the server's data directory")
    rs.set_defaults(run=cmd_numbers_resolve)
