"""`callgate store check`: the full offline check of a server's store, on its host (server/store_verify.py).

Exit codes: 0 nothing wrong, 1 problems found (each printed with what it
means), 2 the check could not run (one line: no store there, unreadable).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.cli import CliError
from server.cli.progress import Ticker


def cmd_store_check(args: argparse.Namespace) -> int:
    from server.app.options import STORE_FILE
    from server.store.api import StoreError
    from server.store.sqlite import SQLiteStore
    from server.store.verify import verify

    path = args.data_dir / STORE_FILE
    if not path.exists() or path.stat().st_size == 0:
        raise CliError(f"no callgate store at {path} ({'missing' if not path.exists() else 'empty'}): give the "
                       "server's --data-dir")
    try:
        store = SQLiteStore(path, migrate=False)
    except StoreError as exc:
        raise CliError(f"{path} cannot be opened as a callgate store: {exc}") from None
    try:
        with Ticker() as ticker:
            ticker.stage("checking", unit="steps")

            def progress(stage: str, n: int) -> None:
                if ticker.name != stage:
                    ticker.stage(stage, unit="steps")
                ticker.update(n)

            report = verify(store, args.data_dir / "documents", progress)
            ticker.stage(f"checked {path}")
    except StoreError as exc:
        raise CliError(f"{path}: {exc}") from None
    finally:
        store.close()
    for line in report.checked:
        print(f"ok       {line}")
    for line in report.problems:
        print(f"PROBLEM  {line}")
    print(f"{path}: {'no problems found' if report.ok else f'{len(report.problems)} problem(s)'}")
    return 0 if report.ok else 1


def add_store_commands(sub: Any) -> None:
    store = sub.add_parser("store", help="check a server's store on its host",
                           description="Commands on the store itself, run on the server's host with its "
                                       "--data-dir (no server needed; safe beside a running one).")
    ssub = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = ssub.add_parser(
        "check", help="the full check: integrity, money, snapshots, numbers, document files",
        description="Check the whole store read-only: SQLite's integrity check of every page and index, foreign "
                    "keys, each balance against its ledger and each hold against the open calls, every snapshot "
                    "blob against its checksum, numbers held twice, document files against their SHA-256. "
                    "Exit 0: nothing wrong; 1: problems (listed); 2: the check could not run.",
        epilog="example: callgate store check --data-dir /var/lib/callgate")
    check.add_argument("--data-dir", type=Path, required=True, help="the server's --data-dir")
    check.set_defaults(run=cmd_store_check)
