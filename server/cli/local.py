"""How the `callgate` command reaches the store on the server's host (tokens, number ownership, checks)."""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli import CliError


def open_store(args: argparse.Namespace, create: bool = False) -> Any:
    """The server's store, on its host.  A new one is created only for a first token; an existing one of an
    older schema is refused, not migrated: its server may still be running (the new server migrates)."""
    from server.app.options import STORE_FILE
    from server.store.api import StoreDamaged, StoreError
    from server.store.sqlite import SQLiteStore

    path = args.data_dir / STORE_FILE
    exists = path.exists()
    if not exists and not create:
        raise CliError(f"no callgate store at {path}: give the server's --data-dir")
    try:
        return SQLiteStore(path, migrate=not exists)
    except StoreDamaged as exc:
        raise CliError(f"{path} is not a callgate store that can be read (check the --data-dir): {exc}") from None
    except StoreError as exc:
        raise CliError(str(exc)) from None
