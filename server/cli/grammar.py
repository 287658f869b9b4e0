"""The one grammar of the `callgate` command.

- The global options (`--server`, `--timeout`, `--token`, `--tls-*`, `--json`)
  are accepted anywhere on the line: before the command, as always, and
  after it (`spread_global_options` gives each command that talks to a
  server its own copy, whose default leaves what came before untouched).
- The tenant is always `--tenant T`, with `$CALLGATE_TENANT` as its default
  (`tenant_option`).  The commands that took it as a plain argument
  (`billing balance acme`, `calls active acme`) still do for one release,
  with a deprecation line (`old_tenant_argument`, `tenant_of`).
- `--json` prints a reply as one JSON object (`print_json`), for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.cli import CliError
from server.cli.rpc import DEFAULT_SERVER

TENANT_ENV = "CALLGATE_TENANT"

# (flags, default when not given anywhere, argparse options)
GLOBAL_OPTIONS: tuple[tuple[str, Any, dict[str, Any]], ...] = (
    ("--server", DEFAULT_SERVER, {"metavar": "HOST:PORT",
                                  "help": f"the callgate server to ask (default {DEFAULT_SERVER})"}),
    ("--timeout", 60.0, {"type": float, "metavar": "SECONDS", "help": "how long to wait for an answer (default 60)"}),
    ("--token", None, {"help": "bearer token for a server with --auth (default: $CALLGATE_TOKEN)"}),
    ("--tls-ca", None, {"type": Path, "metavar": "PEM", "help": "talk TLS to the server, trusting this CA"}),
    ("--tls-cert", None, {"type": Path, "metavar": "PEM", "help": "client certificate, for mutual TLS"}),
    ("--tls-key", None, {"type": Path, "metavar": "PEM", "help": "the client certificate's private key"}),
    ("--json", False, {"action": "store_true",
                       "help": "print the answer as JSON, for scripts (one object; audit: one per row)"}),
)

# commands with options of their own under these names, or that never talk to a server
LOCAL_COMMANDS = frozenset({"serve", "loadtest", "check", "compile", "demo", "dev-ca", "completion"})


# one example per command, shown at the end of its --help (a test checks every command has one)
EXAMPLES: dict[str, str] = {
    "serve": "callgate serve --listen 127.0.0.1:50051 --data-dir data --seed examples/acme.json",
    "settings push": "callgate settings push examples/acme.json --expect-version 1 --comment 'new hours'",
    "settings show": "callgate settings show --tenant acme --version 2",
    "settings history": "callgate settings history --tenant acme --limit 10",
    "settings rollback": "callgate settings rollback 2 --tenant acme",
    "blacklist add": "callgate blacklist add +14155550666 +14155550667 --tenant acme",
    "blacklist remove": "callgate blacklist remove +14155550666 --tenant acme --offhours",
    "blacklist import": "callgate blacklist import spam.csv --tenant acme",
    "decide inbound": "callgate decide inbound --tenant acme --caller +14155550666 --called +14155550199",
    "decide outbound": "callgate decide outbound --tenant acme --user u3 --destination 02071112222 --json",
    "decide pickup": "callgate decide pickup --tenant acme --user u2 --dialed '*8'",
    "stats": "callgate stats --tenant acme",
    "dev-ca": "callgate dev-ca data/tls --days 30",
    "loadtest": "callgate loadtest --open-loop 1000 --duration 10 --compare-bare",
    "completion": "callgate completion bash > ~/.local/share/bash-completion/completions/callgate",
    "billing balance": "callgate billing balance --tenant acme --json",
    "billing ledger": "callgate billing ledger --tenant acme --limit 20",
    "billing topup": "callgate billing topup 20.00 --tenant acme --reference wire-2026-12-01",
    "billing card": "callgate billing card --tenant acme --set 4242424242424242 --expires 12/2028",
    "documents upload": "callgate documents upload +14155550100 page1.png page2.png --tenant acme",
    "documents list": "callgate documents list --status pending",
    "documents approve": "callgate documents approve 7 --reviewer alice",
    "documents reject": "callgate documents reject 7 --reason 'the ID is expired'",
    "export failover": "callgate export failover -o /etc/kamailio/failover.json",
    "calls active": "callgate calls active --tenant acme --state ringing",
    "calls pickup": "callgate calls pickup --tenant acme --user u2 --dialed '*8'",
    "tokens create": "callgate tokens create --role tenant-admin --tenant acme --expires-in 90d",
    "tokens list": "callgate tokens list --json",
    "tokens revoke": "callgate tokens revoke 3f9c2a81d0e4",
    "audit": "callgate audit --tenant acme --since 2h",
    "numbers owner": "callgate numbers owner +14155550100",
    "numbers transfer": "callgate numbers transfer +14155550100 --from acme --to beta",
    "numbers conflicts": "callgate numbers conflicts --data-dir data",
    "numbers resolve": "callgate numbers resolve +14155550100 --owner acme --data-dir data",
    "store check": "callgate store check --data-dir data",
    "tenant remove": "callgate tenant remove --tenant acme --confirm acme --dry-run",
    "replica": "callgate replica --server 10.0.0.5:50051 --dir /var/lib/callgate/replica --max-staleness 30",
    "replicas": "callgate replicas --tenant acme",
    "grpc list": "callgate grpc list --server 127.0.0.1:50051",
    "grpc describe": "callgate grpc describe callgate.v1.Decisions.Inbound",
    "grpc health": "callgate grpc health callgate.v1.Store",
    "check": "callgate check examples/acme.json",
    "compile": "callgate compile examples/acme.json -o acme.snap",
    "demo": "callgate demo examples/acme.json",
}


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Each command's example at the end of its --help."""
    for path, leaf in commands(parser):
        example = EXAMPLES.get(" ".join(path))
        if example:
            leaf.epilog = (leaf.epilog + "\n\n" if leaf.epilog else "") + f"example: {example}"


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """The global options on the top-level parser, with their defaults."""
    for flag, default, options in GLOBAL_OPTIONS:
        parser.add_argument(flag, default=default, **options)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                            argparse.ArgumentParser]]:
    """Every command's own parser (the leaves of the tree), with its words: (("billing", "balance"), parser)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from commands(sub, (*path, name))


def spread_global_options(parser: argparse.ArgumentParser) -> None:
    """Give every command that talks to a server the global options too (given after it, they win; not
    given, what came before the command stands)."""
    for path, leaf in commands(parser):
        if path[0] in LOCAL_COMMANDS:
            continue
        for flag, _default, options in GLOBAL_OPTIONS:
            if flag in leaf._option_string_actions:
                raise ValueError(f"callgate {' '.join(path)} defines {flag}, a global option: use the global one")
            leaf.add_argument(flag, default=argparse.SUPPRESS, **options)


def tenant_option(parser: argparse.ArgumentParser, what: str = "the tenant", required: bool = True) -> None:
    """`--tenant T`, defaulting to $CALLGATE_TENANT (required only when neither is there)."""
    env = os.environ.get(TENANT_ENV) or None
    parser.add_argument("--tenant", default=env, required=required and env is None, metavar="TENANT",
                        help=f"{what} (default: ${TENANT_ENV}{f', now {env!r}' if env else ''})")


def old_tenant_argument(parser: argparse.ArgumentParser) -> None:
    """The plain tenant argument of the older form (`billing balance acme`), kept for one release."""
    parser.add_argument("old_tenant", nargs="?", metavar="TENANT",
                        help="deprecated: the older form of --tenant, accepted until the next release")


def tenant_of(args: argparse.Namespace) -> str:
    """The tenant of a command that takes --tenant or the older plain argument (which says it is deprecated)."""
    old = getattr(args, "old_tenant", None)
    if old is not None:
        command = " ".join(w for w in (args.command, getattr(args, "action", None)) if w)
        print(f"callgate: note: `{command} TENANT` is deprecated and goes in the next release: "
              f"use `{command} --tenant {old}`", file=sys.stderr)
        if args.tenant not in (None, old, os.environ.get(TENANT_ENV)):
            raise CliError(f"two tenants given: {old!r} and --tenant {args.tenant!r}")
        return str(old)
    if not args.tenant:
        raise CliError(f"--tenant is required (or set ${TENANT_ENV})")
    return str(args.tenant)


def as_json(message: Any) -> dict[str, Any]:
    """A protobuf message as plain JSON values: enums by name, 64-bit integers as numbers (not the strings of
    the protobuf JSON mapping: scripts compare them), bytes as hex, every field present."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _repeated(field):
            out[field.name] = [_value(field, v) for v in value]
        else:
            out[field.name] = _value(field, value)
    return out


def _repeated(field: Any) -> bool:
    # protobuf's newer runtimes have `is_repeated` and no `label`; older ones only `label`
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        return as_json(value)
    if field.enum_type is not None:
        found = field.enum_type.values_by_number.get(value)
        return found.name if found is not None else value
    if isinstance(value, bytes):
        return value.hex()
    return value


def print_json(args: argparse.Namespace, value: Any) -> bool:
    """With --json, print `value` (a protobuf message, or plain JSON values) and return True."""
    if not getattr(args, "json", False):
        return False
    print(json.dumps(as_json(value) if hasattr(value, "DESCRIPTOR") else value, ensure_ascii=False))
    return True
