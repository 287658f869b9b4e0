"""`callgate tokens create|list|revoke` and `callgate audit`: over gRPC, or on the server's host with --data-dir.

Tokens are made where the store is, not over the network: the first owner
token cannot come from a server that already wants one.  The token is shown
once; only its SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

from engine import cli as offline
from engine.cli import CliError
from server.cli.grammar import print_json
from server.cli.local import open_store
from server.cli.rpc import call, stubs
from server.cli.text import shown, when

DURATION = re.compile(r"^(\d+)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


MAX_DURATION_S = 100 * 365 * 86_400


def seconds(text: str) -> int:
    match = DURATION.match(text.strip())
    if not match or len(match.group(1)) > 12 or int(match.group(1)) == 0:
        raise CliError(f"{text[:40]!r} is not a duration such as 90d, 12h or 30m")
    value = int(match.group(1)) * UNITS[match.group(2)]
    if value > MAX_DURATION_S:
        raise CliError(f"{text[:40]!r} is more than a hundred years")
    return value


def _info(t: Any) -> Any:
    """A TokenInfo message as the record the printers use."""
    from server.rules.tokens import TokenRecord

    return TokenRecord(t.id, t.role, tuple(t.tenants), t.created_at, t.expires_at, t.revoked_at, t.comment)


def cmd_tokens_create(args: argparse.Namespace) -> int:
    import time

    from server.rules.tokens import new_token

    if args.data_dir is None:  # over gRPC, with an owner token
        from callgate.v1 import admin_pb2

        admin, _ = stubs(args)
        reply = call(args, admin.CreateToken, admin_pb2.CreateTokenRequest(
            role=args.role, tenants=args.tenant or [], comment=args.comment or "",
            expires_in_seconds=seconds(args.expires_in) if args.expires_in else 0))
        print(reply.token)
        print(f"# token {reply.info.id}: {reply.info.role}; shown once: keep it (only its hash is stored)",
              file=sys.stderr)
        return 0
    expires = int(time.time()) + seconds(args.expires_in) if args.expires_in else 0
    ident, token, token_hash = new_token()
    store = open_store(args, create=True)
    from server.store.api import StoreError

    try:
        record = store.add_token(ident, token_hash, args.role, args.tenant or [], expires, args.comment or "")
    except (ValueError, StoreError) as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    print(token)
    scope = f"tenants {', '.join(record.tenants)}" if record.tenants else "every tenant"
    print(f"# token {record.id}: {record.role}, {scope}, expires {when(record.expires_at) if expires else 'never'}; "
          "shown once: keep it (only its hash is stored)", file=sys.stderr)
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    if args.data_dir is None:
        from callgate.v1 import admin_pb2

        admin, _ = stubs(args)
        reply = call(args, admin.ListTokens, admin_pb2.ListTokensRequest())
        tokens = [_info(t) for t in reply.tokens]
    else:
        store = open_store(args)
        try:
            tokens = store.list_tokens()
        finally:
            store.close()
    if print_json(args, [{"id": t.id, "role": t.role, "tenants": list(t.tenants), "created_at": t.created_at,
                          "expires_at": t.expires_at, "revoked_at": t.revoked_at, "comment": t.comment}
                         for t in tokens]):
        return 0
    print(f"{'id':<14} {'role':<13} {'tenants':<24} {'created (UTC)':<21} {'expires':<21} {'revoked':<21} comment")
    for t in tokens:
        print(f"{t.id:<14} {t.role:<13} {shown(','.join(t.tenants) or '*', 60):<24} {when(t.created_at):<21} "
              f"{when(t.expires_at):<21} {when(t.revoked_at):<21} {shown(t.comment, 200)}")
    if not tokens:
        print("(no tokens)")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from server.store.api import NotFound

    if args.data_dir is None:
        from callgate.v1 import admin_pb2

        admin, _ = stubs(args)
        record = _info(call(args, admin.RevokeToken, admin_pb2.RevokeTokenRequest(id=args.id)))
    else:
        store = open_store(args)
        try:
            record = store.revoke_token(args.id)
        except NotFound as exc:
            raise CliError(str(exc)) from None
        finally:
            store.close()
    print(f"token {record.id} ({record.role}) revoked at {when(record.revoked_at)}; servers refuse it within "
          "2 seconds")
    return 0


def _since(text: str | None) -> float:
    import time

    if not text:
        return 0.0
    try:
        return time.time() - seconds(text)
    except CliError:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise CliError(f"--since {text!r}: a duration (2h, 7d) or an ISO time with a zone") from None
        if moment.tzinfo is None:
            raise CliError(f"--since {text!r} has no time zone") from None
        return moment.timestamp()


AUDIT_FIELDS = ("id", "at", "token_id", "role", "tenant", "action", "object", "version_before", "version_after",
                "result", "detail", "peer")


def cmd_audit(args: argparse.Namespace) -> int:
    since = _since(args.since)
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit is 1 to 1000")
    if args.before is not None and not 0 < args.before < 2**63:
        raise CliError("--before is an audit row id (the first column of `callgate audit`)")
    if args.data_dir is None:  # over gRPC, with an operator or owner token
        from callgate.v1 import admin_pb2

        admin, _ = stubs(args)
        reply = call(args, admin.ListAudit, admin_pb2.ListAuditRequest(
            tenant=args.tenant or "", since=since, action=args.action or "", limit=args.limit,
            before_id=args.before or 0))
        rows: list[Any] = list(reply.entries)
    else:
        store = open_store(args)
        try:
            rows = store.audit_rows(args.tenant or "", since, args.limit, args.action or "", args.before or 0)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        finally:
            store.close()
    if args.json:
        for r in rows:
            print(json.dumps({k: getattr(r, k) for k in AUDIT_FIELDS}, ensure_ascii=False))
        return 0
    print(f"{'id':>6} {'when (UTC)':<21} {'token':<14} {'role':<13} {'tenant':<12} {'action':<18} "
          f"{'object':<24} {'versions':<9} {'result':<19} detail")
    for r in rows:
        versions = f"{r.version_before}->{r.version_after}" if r.version_after else ""
        print(f"{r.id:>6} {when(r.at):<21} {r.token_id or '-':<14} {r.role or '-':<13} {shown(r.tenant, 12):<12} "
              f"{shown(r.action, 18):<18} {shown(r.object, 24):<24} {versions:<9} {shown(r.result, 19):<19} "
              f"{shown(r.detail, 200)}")
    if not rows:
        print("(no audit rows)")
    return 0


def add_security_commands(sub: Any) -> None:
    from server.rules.tokens import ROLES

    def data_dir(p: argparse.ArgumentParser, required: bool = False) -> None:
        p.add_argument("--data-dir", type=Path, required=required,
                       help="work on the server's data directory (on its host)" +
                            ("" if required else "; without it, over gRPC with --token (owner for tokens, operator "
                                                   "or owner for audit)"))

    tokens = sub.add_parser("tokens", help="create, list and revoke API tokens (over gRPC with an owner token, "
                                           "or with --data-dir on the server's host: the first token)")
    tsub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="a new token, printed once")
    create.add_argument("--role", required=True, choices=ROLES,
                        help="proxy: Decisions; tenant-admin: its tenants' settings, lists, documents, balance; "
                             "operator: reading, document review, billing; owner: everything")
    create.add_argument("--tenant", action="append", help="a tenant a tenant-admin token may touch (repeatable)")
    create.add_argument("--expires-in", metavar="DURATION", help="e.g. 90d, 12h (default: never)")
    create.add_argument("--comment", help="who or what it is for")
    data_dir(create)
    create.set_defaults(run=cmd_tokens_create)
    ls = tsub.add_parser("list", help="every token (ids, roles, tenants, expiry, revocation; never the secret)")
    data_dir(ls)
    ls.set_defaults(run=cmd_tokens_list)
    rev = tsub.add_parser("revoke", help="refuse a token from now on")
    rev.add_argument("id", help="the token's id, as `tokens list` shows it (never the secret)")
    data_dir(rev)
    rev.set_defaults(run=cmd_tokens_revoke)

    audit = sub.add_parser("audit", help="the audit log of Admin calls, newest first (operator or owner token, or "
                                         "--data-dir on the server's host)",
                           description="Every Admin call, refused ones included: when, which token and role, the "
                                       "tenant, the action and its object, the versions before and after, and the "
                                       "result with the refusal's message. Example: callgate audit --tenant acme "
                                       "--since 24h --action PushSettings --json")
    audit.add_argument("--tenant", help="one tenant's rows only")
    audit.add_argument("--since", help="a duration back (2h, 7d) or an ISO time with a zone")
    audit.add_argument("--action", help="one RPC's rows only, e.g. PushSettings, TransferNumber, CreateToken")
    audit.add_argument("--limit", type=offline.LIMIT, default=100, help="rows to show, 1 to 1000 (default 100)")
    audit.add_argument("--before", type=offline.ROW_ID, metavar="ID", help="rows older than this id (paging)")
    data_dir(audit)
    audit.set_defaults(run=cmd_audit)
