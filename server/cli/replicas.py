"""`callgate replica` (a proxy host's copy of the compiled snapshots, kept in step over gRPC) and `callgate
replicas` (which replica holds which version, as the server heard it)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import signal
import socket
from pathlib import Path
from typing import Any

from engine import cli as offline
from engine.cli import CliError
from server.cli.grammar import print_json
from server.cli.rpc import call, stubs

POLICIES = ("stale-ok", "fail-closed", "backup")


def _policy(text: str) -> tuple[str, str]:
    tenant, _, policy = text.partition("=")
    if not tenant or policy not in POLICIES:
        raise argparse.ArgumentTypeError(f"expected TENANT=POLICY with POLICY one of {', '.join(POLICIES)}, "
                                         f"not {text!r}")
    return tenant, policy


def _staleness(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 86_400 * 30:
        raise argparse.ArgumentTypeError(f"a number of seconds, more than 0 and at most 30 days, not {text!r}")
    return value


def cmd_replica(args: argparse.Namespace) -> int:
    from engine import files, replica
    from server.app.logs import setup_logging
    from server.cli.rpc import channel_args
    from server.replica.follow import Follower

    directory: Path = args.dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # before anything is written: a second replica process on the directory would overwrite the policy
        # and fight the first over every file
        lock = files.hold(directory / replica.LOCK)
        leftovers = files.remove_leftovers(directory)   # what a writer killed mid-write (kill -9, OOM) left
        replica.write_policy(directory, args.max_staleness, args.stale_policy, dict(args.tenant_policy or ()))
    except files.Held as exc:
        raise CliError(f"--dir {directory}: another callgate replica (pid {exc.owner or '?'}) keeps this directory: "
                       "stop it first, or give this one a directory of its own") from None
    except OSError as exc:
        raise CliError(f"--dir {directory}: {exc.strerror or exc} (a directory this user may write)") from None
    except ValueError as exc:
        raise CliError(f"--dir {directory}: {exc}") from None
    setup_logging(args.log_format)
    if leftovers:
        logging.getLogger("callgate.replica").warning(
            "removed %d temporary file(s) a replica killed mid-write left in %s: %s", len(leftovers), directory,
            ", ".join(leftovers)[:300], extra={"event": "replica_leftovers", "removed": len(leftovers)})
    open_channel = channel_args(args, aio=True)
    follower = Follower(open_channel, directory, args.name, args.only or [], args.max_snapshot_mb << 20)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await follower.run(stop)

    try:
        asyncio.run(main())
    finally:
        lock.close()
    return 0


def cmd_replicas(args: argparse.Namespace) -> int:
    from callgate.v1 import admin_pb2

    admin, _ = stubs(args)
    reply = call(args, admin.ListReplicas, admin_pb2.ListReplicasRequest(
        tenant=args.tenant or "", replica=args.replica or ""))
    if print_json(args, reply):
        return 0
    if not reply.replicas:
        print("no replica has reported yet (`callgate replica --dir DIR` on each proxy host)")
        return 0
    for line in replica_table(reply.replicas):
        print(line)
    return 0


def replica_table(rows: Any) -> list[str]:
    """`callgate replicas`' lines: each row's last install or refusal (a replica in step reports nothing more until
    the next version: its liveness is the callgate_replica_streams gauge and its own heartbeat, not this), and the
    token that reported it.  A replica names itself (`--name`), and a name is not bound to a token: a row whose
    token is not the one that host was given is another proxy reporting under its name (or a rotated token)."""
    lines = [f"{'replica':<24}{'tenant':<20}{'holds':>7}{'in force':>9}  {'last report':<20}  {'token':<14}  state"]
    for r in rows:
        heard = dt.datetime.fromtimestamp(r.seen_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if r.seen_at else "-"
        lines.append(f"{r.replica:<24}{r.tenant:<20}{r.version:>7}{r.in_force:>9}  {heard:<20}  "
                     f"{(r.token_id or '-')[:14]:<14}  {replica_state(r)}")
    return lines


def replica_state(r: Any) -> str:
    """What a row of `callgate replicas` says of one replica's copy of one tenant (an admin_pb2.ReplicaInfo)."""
    if r.in_force == 0:
        return "tenant gone"
    if r.refused_version and r.refused_version == r.version:   # the version it holds, rebuilt: it keeps its own
        return (f"REFUSED version {r.refused_version} as rebuilt (checksum {r.refused_checksum[:12]}; it holds "
                f"{r.checksum[:12]}): {r.refused_reason}")
    if r.refused_version:
        return f"REFUSED version {r.refused_version}: {r.refused_reason}"
    return "in step" if r.version == r.in_force else "behind"


def add_replica_commands(sub: Any) -> None:
    rep = sub.add_parser(
        "replica", help="keep this host's copy of the compiled snapshots in step with the server (for proxies)",
        description="Follow the server's snapshots (Decisions.WatchSnapshots, a proxy token) and keep them in "
                    "--dir, one file per tenant replaced atomically, for the proxy workers of this host to decide "
                    "from (engine.replica.LocalDecisions maps the same files read-only in every process). Answers "
                    "each version installed or refused (`callgate replicas` shows them); reconnects by itself and "
                    "resumes from what --dir holds. Runs until SIGTERM or Ctrl-C.")
    rep.add_argument("--dir", type=Path, required=True, help="where the snapshot files, the heartbeat and the "
                                                             "staleness policy are kept")
    rep.add_argument("--name", default=socket.gethostname(),
                     help="this replica's name in `callgate replicas` (default: the host name)")
    rep.add_argument("--only", action="append", metavar="TENANT",
                     help="follow this tenant only (repeatable; default: every tenant)")
    rep.add_argument("--max-staleness", type=_staleness, default=30.0, metavar="SECONDS",
                     help="answers from a copy that has not heard from the server for longer follow the stale "
                          "policy (default 30)")
    rep.add_argument("--stale-policy", choices=POLICIES, default="stale-ok",
                     help="past --max-staleness: decide anyway (stale-ok, the default), refuse the call "
                          "(fail-closed) or forward it to the tenant's backup number (backup)")
    rep.add_argument("--tenant-policy", type=_policy, action="append", metavar="TENANT=POLICY",
                     help="another stale policy for one tenant (repeatable)")
    rep.add_argument("--max-snapshot-mb", type=offline.int_in(1, 65_536, "a number of MiB"), default=1024,
                     help="refuse snapshots larger than this (default 1024)")
    rep.add_argument("--log-format", choices=("json", "text"), default="json", help="log lines (default json)")
    rep.set_defaults(run=cmd_replica)

    reps = sub.add_parser("replicas", help="which proxy replica holds which version of each tenant",
                          description="What every replica reported (installed, or refused and why) against "
                                      "the version in force, from the store: every worker and host answers the "
                                      "same.")
    reps.add_argument("--tenant", help="one tenant only")
    reps.add_argument("--replica", help="one replica only")
    reps.set_defaults(run=cmd_replicas)
