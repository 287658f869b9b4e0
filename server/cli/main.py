# PYTHON_ARGCOMPLETE_OK  (argcomplete: the console script's module completes; `callgate completion bash`)
"""The `callgate` command: the server, the admin commands over gRPC, and the offline tools.

    callgate serve --listen 127.0.0.1:50051 --data-dir data --workers 2
    callgate settings push FILE [--expect-version N]
    callgate settings show --tenant T [--version V]
    callgate settings history --tenant T
    callgate settings rollback VERSION --tenant T
    callgate blacklist add|remove --tenant T [--offhours] NUMBER...
    callgate blacklist import FILE.csv --tenant T [--offhours]
    callgate decide inbound --tenant T --caller X --called Y [--at TIME]
    callgate decide outbound --tenant T --user U --destination D [--at TIME]
    callgate decide pickup --tenant T --user U --dialed CODE
    callgate stats [--tenant T]
    callgate check FILE | compile FILE -o SNAP | demo [FILE]     (offline)

Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# grpc's C core writes its own lines on stderr (a TLS handshake a client got wrong, in the server; the
# handshake's details, in the CLI): callgate says what went wrong in its own words and logs.  GRPC_VERBOSITY=INFO
# brings them back for debugging.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from engine import cli as offline
from engine.cli import CliError
from engine.document_json import dumps_document, loads_document
from engine.settings import document_format
from server.cli.grammar import add_examples, add_global_options, print_json, spread_global_options, tenant_option
from server.cli.progress import Ticker
from server.cli.rpc import call, stubs
from server.cli.text import instant, shown, when

# -- settings -------------------------------------------------------------------

def cmd_settings_push(args: argparse.Namespace) -> int:

    data = offline._read(args.file)
    fmt = document_format(data, args.format, args.file.name)
    admin, _ = stubs(args)
    start = time.perf_counter()
    from server.client import upload_messages

    # in pieces: a document of megabytes never sits in the server as one message
    reply = call(args, admin.PushSettingsUpload, upload_messages(
        data, fmt, expected_version=args.expect_version or 0, comment=args.comment or ""),
        check="callgate settings history --tenant TENANT")
    print(f"tenant {reply.tenant!r} is at version {reply.version} "
          f"(compiled in {reply.compile_seconds:.2f} s, in force after {time.perf_counter() - start:.2f} s)")
    return 0


def cmd_settings_show(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    record = call(args, admin.GetSettings, admin_pb2.GetSettingsRequest(tenant=args.tenant,
                                                                                version=args.version or 0))
    if args.json:  # the record, with the document as it is (exact decimals)
        meta = {"tenant": record.tenant, "version": record.version, "kind": record.kind,
                "created_at": record.created_at, "in_force": record.in_force, "comment": record.comment}
        document = dumps_document(loads_document(record.document)).decode()
        print(json.dumps(meta, ensure_ascii=False)[:-1] + ', "document": ' + document + "}")
        return 0
    force = "in force" if record.in_force else "not in force"
    print(f"# tenant {record.tenant!r} version {record.version} ({record.kind}, {when(record.created_at)}, {force})",
          file=sys.stderr)
    sys.stdout.write(dumps_document(loads_document(record.document), indent=2).decode() + "\n")
    return 0


def cmd_settings_history(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    reply = call(args, admin.ListVersions, admin_pb2.ListVersionsRequest(tenant=args.tenant,
                                                                                 limit=args.limit))
    if print_json(args, reply):
        return 0
    print(f"{'version':>8}  {'kind':<9} {'created (UTC)':<20} comment")
    for v in reply.versions:
        when = dt.datetime.fromtimestamp(v.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        mark = " *" if v.in_force else "  "
        print(f"{v.version:>8}{mark}{v.kind:<9} {when:<20} {shown(v.comment, 500)}")
    print("(* in force)")
    return 0


def cmd_settings_rollback(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    reply = call(args, admin.Rollback, admin_pb2.RollbackRequest(
        tenant=args.tenant, version=args.version, expected_version=args.expect_version or 0),
        check=f"callgate settings history --tenant {args.tenant}")
    print(f"tenant {reply.tenant!r} is at version {reply.version}: the settings of version {args.version}")
    return 0


# -- blacklists -----------------------------------------------------------------

def _patch(args: argparse.Namespace, add: list[str], remove: list[str]) -> Any:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    which = admin_pb2.PatchBlacklistRequest.OFFHOURS_BLACKLIST if args.offhours else \
        admin_pb2.PatchBlacklistRequest.BLACKLIST
    return call(args, admin.PatchBlacklist, admin_pb2.PatchBlacklistRequest(
        tenant=args.tenant, list=which, add=add, remove=remove),
        check=f"callgate settings history --tenant {args.tenant}")


def _list_name(args: argparse.Namespace) -> str:
    return "off-hours blacklist" if args.offhours else "blacklist"


def cmd_blacklist_change(args: argparse.Namespace) -> int:
    add = args.numbers if args.action == "add" else []
    remove = args.numbers if args.action == "remove" else []
    reply = _patch(args, add, remove)
    print(f"{_list_name(args)} of {reply.tenant!r}: {reply.added} added, {reply.removed} removed, "
          f"{reply.size} entries; version {reply.version}")
    return 0


MAX_BAD_LINES = 20  # bad lines listed by an import that sends nothing


def read_numbers_csv(path: Path, ticker: Ticker | None = None) -> tuple[list[str], list[str], int]:
    """The first column of a CSV file: (numbers, problems with their CSV line numbers, lines with a problem).

    A header row and blank or '#' lines are skipped; every other value must be
    an E.164 number, or its line is reported (the first MAX_BAD_LINES, and
    how many more).
    """
    from engine.settings import E164

    text = offline._read(path).decode("utf-8-sig", errors="replace")
    numbers: list[str] = []
    problems: list[str] = []
    bad = 0
    reader = csv.reader(io.StringIO(text))
    first = True
    end = 0
    for row in reader:
        line, end = end + 1, reader.line_num   # a quoted field may span lines: the row's first line names it
        if ticker is not None and line % 65536 == 0:
            ticker.update(line)
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        value = row[0].strip()
        header, first = first and not value.lstrip("+").isdigit(), False
        if header:
            continue  # a header such as "number"
        if E164.fullmatch(value):
            numbers.append(value)
            continue
        bad += 1
        if len(problems) < MAX_BAD_LINES:
            problems.append(f"line {line}: {shown(value, 40)!r} is not an E.164 number (+ and 8 to 15 digits)")
    if ticker is not None:
        ticker.update(reader.line_num)
    return numbers, problems, bad


def cmd_blacklist_import(args: argparse.Namespace) -> int:
    """All or nothing: the file is checked whole first, then its numbers join the list in ONE new version (the
    whole document pushed in pieces, on the version it was read from: a version made meanwhile makes it read
    and try again), so an import of any size is one version or none."""
    from callgate.v1 import admin_pb2
    from server.client import upload_messages

    name = "offhours_blacklist" if args.offhours else "blacklist"
    with Ticker() as ticker:
        ticker.stage(f"reading {args.file}", unit="lines")
        numbers, problems, bad = read_numbers_csv(args.file, ticker)
        if bad:
            more = f"; and {bad - len(problems):,} more" if bad > len(problems) else ""
            raise CliError(f"{args.file}: {bad:,} bad line(s), nothing imported: {'; '.join(problems)}{more}")
        if not numbers:
            raise CliError(f"{args.file}: no numbers found (one per line, in the first column)")
        admin, _ = stubs(args)
        for _attempt in range(5):
            ticker.stage(f"reading the settings of {args.tenant!r}")
            record = call(args, admin.GetSettings, admin_pb2.GetSettingsRequest(tenant=args.tenant))
            doc = loads_document(record.document)
            listed = doc.get(name) or []
            present = set(listed)
            new = [n for n in dict.fromkeys(numbers) if n not in present]
            if not new:
                print(f"all {len(numbers):,} numbers are already in the {_list_name(args)} of {args.tenant!r}; "
                      f"version {record.version} unchanged")
                return 0
            doc[name] = [*listed, *new]
            data = dumps_document(doc)
            ticker.stage(f"sending {len(new):,} new numbers", total=len(data), unit="B")
            comment = f"{name} import {args.file.name}: +{len(new)}"

            def pieces(data: bytes = data, comment: str = comment, version: int = record.version) -> Any:
                sent = 0
                for message in upload_messages(data, "json", expected_version=version, comment=comment):
                    sent += len(message.document)
                    ticker.update(sent)
                    yield message
                ticker.stage("the server checks and compiles the whole list")

            try:
                reply = call(args, admin.PushSettingsUpload, pieces(),
                              check=f"callgate settings history --tenant {args.tenant}")
            except CliError as exc:
                if str(exc).startswith("FAILED_PRECONDITION") and "is at version" in str(exc):
                    continue  # another version came in while we worked: read it and add to it
                raise
            ticker.stage(f"{len(new):,} new numbers in version {reply.version}")
            break
        else:
            raise CliError(f"tenant {args.tenant!r} kept getting new versions during the import: try again")
    print(f"imported {len(numbers):,} numbers into the {_list_name(args)} of {reply.tenant!r}: "
          f"{len(new):,} new, {len(numbers) - len(new):,} already listed; {len(doc[name]):,} entries; "
          f"version {reply.version}")
    return 0


# -- decisions ------------------------------------------------------------------

def describe(d: Any) -> str:
    """A decision in words, with the rule that decided it."""
    from callgate.v1 import decisions_pb2

    verdict = decisions_pb2.Verdict.Name(d.verdict)
    reason = decisions_pb2.Reason.Name(d.reason)
    lines = [f"{verdict} ({reason}{', SIP ' + str(d.sip_status) if d.sip_status else ''})"]
    if verdict == "ROUTE":
        lines.append(f"  to queue group {d.group or '(none)'}: {', '.join(d.members) or '(no members)'}")
    if verdict == "FORWARD":
        lines.append(f"  to {d.target} on line {d.line}")
    if verdict == "ALLOW":
        lines.append(f"  present {d.caller_id}, line {d.line}, {d.rate_per_minute} per minute billed per "
                     f"{d.increment_s} s, at most {d.max_duration_s} s")
    if verdict == "INTERCEPT":
        lines.append(f"  call {d.call_id}")
    lines.append(f"  rule: {d.rule}")
    extras = [f"settings version {d.version}"]
    if d.chat_mode:
        extras.append(f"chat {d.chat_mode}")
    if d.lead_trigger:
        extras.append(f"lead {d.lead_trigger}")
    lines.append("  " + ", ".join(extras))
    return "\n".join(lines)


def cmd_decide(args: argparse.Namespace) -> int:
    from callgate.v1 import decisions_pb2

    _, decisions = stubs(args)
    if args.kind == "inbound":
        d = call(args, decisions.Inbound, decisions_pb2.InboundRequest(
            tenant=args.tenant, caller=args.caller, called=args.called, at=instant(args.at), explain=True))
    elif args.kind == "outbound":
        d = call(args, decisions.Outbound, decisions_pb2.OutboundRequest(
            tenant=args.tenant, user=args.user, destination=args.destination, at=instant(args.at), explain=True))
    else:  # a dry run: deciding never changes anything (`calls pickup` intercepts)
        d = call(args, decisions.Pickup, decisions_pb2.PickupRequest(
            tenant=args.tenant, user=args.user, dialed=args.dialed, explain=True, dry_run=True))
    if not print_json(args, d):
        print(describe(d))
        if args.kind == "pickup" and d.call_id:
            print("  (a dry run: nothing was intercepted; `callgate calls pickup` takes the call)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    reply = call(args, admin.Stats, admin_pb2.StatsRequest(tenant=args.tenant or ""))
    if print_json(args, reply):
        return 0
    print(f"worker pid {reply.pid}, up {reply.uptime_seconds:.0f} s, {reply.decisions:,} decisions")
    print(f"{'tenant':<24}{'version':>8}{'loaded':>8}{'numbers':>9}{'blacklist':>11}{'off-hours':>11}  status")
    for t in reply.tenants:
        print(f"{t.tenant:<24}{t.version:>8}{t.loaded_version:>8}{t.numbers:>9,}{t.blacklist:>11,}"
              f"{t.offhours_blacklist:>11,}  {t.status}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from server.app.options import options_from
    from server.app.supervisor import run

    try:
        opts = options_from(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return run(opts)


def cmd_dev_ca(args: argparse.Namespace) -> int:
    from server.tls import make_dev_ca

    for path in make_dev_ca(args.folder, args.days):
        print(path)
    print(f"# a throwaway CA and certificates for 127.0.0.1/::1/localhost, valid {args.days} days: "
          f"callgate serve --tls-cert {args.folder}/server.pem --tls-key {args.folder}/server.key "
          f"[--client-ca {args.folder}/ca.pem]; clients: --tls-ca {args.folder}/ca.pem", file=sys.stderr)
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    """The load-test harness, loaded only when asked for (it sits above the product, not inside it)."""
    import importlib

    return int(importlib.import_module("loadtest.harness").main(args.args))


# -- parser ---------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from server.app.options import add_arguments

    parser = offline.Parser(
        prog="callgate", description="callgate: the call-decision engine for cloud telephony.",
        epilog="Admin and decide commands talk to a running server (--server); check, compile and demo work "
               "offline. The options above may also follow the command (callgate stats --server H:P); the "
               "tenant is always --tenant (default: $CALLGATE_TENANT). Errors: one line on stderr, exit code 2.")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC server",
                           description="Serve the Decisions and Admin gRPC services, health checking and "
                                       "reflection, with state in a SQLite file under --data-dir.")
    add_arguments(serve)
    serve.set_defaults(run=cmd_serve)

    settings = sub.add_parser("settings", help="push, show, list and roll back a tenant's settings")
    ssub = settings.add_subparsers(dest="action", required=True, metavar="ACTION")
    push = ssub.add_parser("push", help="push a whole settings document (validated whole; all or nothing)")
    push.add_argument("file", type=Path, help="settings document (JSON, or msgpack)")
    push.add_argument("--expect-version", type=offline.VERSION_OR_ZERO,
                      help="push only if this version is in force (0: none yet)")
    push.add_argument("--format", choices=("json", "msgpack"), help="document format (default: by file name)")
    push.add_argument("--comment", help="a note kept in the history")
    push.set_defaults(run=cmd_settings_push)
    show = ssub.add_parser("show", help="print the document of the version in force (or --version)")
    tenant_option(show)
    show.add_argument("--version", type=offline.VERSION, help="an older version (default: the one in force)")
    show.set_defaults(run=cmd_settings_show)
    hist = ssub.add_parser("history", help="list a tenant's versions, newest first")
    tenant_option(hist)
    hist.add_argument("--limit", type=offline.LIMIT, default=50, help="versions to list (default 50)")
    hist.set_defaults(run=cmd_settings_history)
    roll = ssub.add_parser("rollback", help="put an older version's settings back in force (as a new version)")
    roll.add_argument("version", type=offline.VERSION, metavar="VERSION", help="the version whose settings to put back")
    tenant_option(roll)
    roll.add_argument("--expect-version", type=offline.VERSION,
                      help="roll back only if this version is in force")
    roll.set_defaults(run=cmd_settings_rollback)

    black = sub.add_parser("blacklist", help="add, remove or import numbers on a tenant's blacklists")
    bsub = black.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "list numbers"), ("remove", "unlist numbers")):
        b = bsub.add_parser(action, help=f"{text} (E.164) without a full settings push")
        b.add_argument("numbers", nargs="+", metavar="NUMBER", help="E.164 numbers, e.g. +14155550666")
        tenant_option(b)
        b.add_argument("--offhours", action="store_true", help="the off-hours blacklist instead of the blacklist")
        b.set_defaults(run=cmd_blacklist_change)
    imp = bsub.add_parser("import", help="add every number of a CSV file (first column)")
    imp.add_argument("file", type=Path, help="a CSV file: one number per line in its first column")
    tenant_option(imp)
    imp.add_argument("--offhours", action="store_true", help="the off-hours blacklist instead of the blacklist")
    imp.set_defaults(run=cmd_blacklist_import)

    decide = sub.add_parser("decide", help="ask the server for a decision and print it in words")
    dsub = decide.add_subparsers(dest="kind", required=True, metavar="KIND")
    inb = dsub.add_parser("inbound", help="what to do with a call to one of the tenant's numbers")
    tenant_option(inb)
    inb.add_argument("--caller", required=True, help="E.164, digits, national, or 'anonymous'")
    inb.add_argument("--called", required=True, help="the tenant's number that was dialled, e.g. +14155550199")
    inb.add_argument("--at", help="epoch seconds or ISO time with zone (default: now)")
    out = dsub.add_parser("outbound", help="may a user call this destination, as whom, for how long")
    tenant_option(out)
    out.add_argument("--user", required=True, help="the calling user's id, e.g. u3")
    out.add_argument("--destination", required=True, help="the number dialled, as the user dialled it")
    out.add_argument("--at", help="epoch seconds or ISO time with zone (default: now)")
    pick = dsub.add_parser("pickup", help="which ringing call the user's pickup code would take (a dry run: "
                                          "`calls pickup` takes it)")
    tenant_option(pick)
    pick.add_argument("--user", required=True, help="the user who dialled the pickup code")
    pick.add_argument("--dialed", required=True, help="what the user dialled, e.g. *8")
    decide.set_defaults(run=cmd_decide)

    stats = sub.add_parser("stats", help="versions in force and sizes, per tenant")
    tenant_option(stats, "one tenant only (default: every tenant)", required=False)
    stats.set_defaults(run=cmd_stats)

    ca = sub.add_parser("dev-ca", help="a throwaway CA with server and client certificates, for TLS on loopback")
    ca.add_argument("folder", type=Path, help="where to write ca.pem, server.pem/key, client.pem/key")
    ca.add_argument("--days", type=offline.int_in(1, 3650, "a number of days"), default=30,
                    help="validity (default 30)")
    ca.set_defaults(run=cmd_dev_ca)

    lt = sub.add_parser("loadtest", add_help=False, prefix_chars="\0",
                        help="the load-test harness: a synthetic world, a call mix, every answer checked "
                             "(`callgate loadtest --help`; the same as python -m loadtest)")
    lt.add_argument("args", nargs=argparse.REMAINDER, help="the harness's own options (callgate loadtest --help)")
    lt.set_defaults(run=cmd_loadtest)

    comp = sub.add_parser(
        "completion", help="the shell code that completes callgate's commands and options (argcomplete)",
        description="Print the code that makes SHELL complete callgate's commands and options with Tab: "
                    "eval \"$(callgate completion bash)\" in ~/.bashrc (zsh: the same with zsh in ~/.zshrc, after "
                    "compinit; fish: callgate completion fish | source), or write it where the shell's completion "
                    "files are read from (example below).")
    comp.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete in")
    comp.set_defaults(run=cmd_completion)

    from server.cli.operator import add_operator_commands

    add_operator_commands(sub)
    from server.cli.security import add_security_commands

    add_security_commands(sub)
    from server.cli.numbers import add_numbers_commands
    from server.cli.store import add_store_commands

    add_numbers_commands(sub)
    add_store_commands(sub)
    from server.cli.tenants import add_tenant_commands

    add_tenant_commands(sub)
    from server.cli.tools import add_grpc_commands

    add_grpc_commands(sub)
    from server.cli.replicas import add_replica_commands

    add_replica_commands(sub)
    offline.add_offline_commands(sub)
    spread_global_options(parser)
    add_examples(parser)
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    # the shell asks `callgate` itself (argcomplete's protocol: _ARGCOMPLETE, COMP_LINE, COMP_POINT), so the code
    # is the same for any install of callgate on the PATH, an editable one included
    print(argcomplete.shellcode(["callgate"], shell=args.shell), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if argv is None and "_ARGCOMPLETE" in os.environ:  # a shell asking for completions: answer, then exit
        import argcomplete

        argcomplete.autocomplete(parser)
    return offline.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
