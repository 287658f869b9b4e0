"""What `callgate serve` checks and prepares before any worker starts: the listen address, the data
directory and its store (migrated, quick-checked, numbers owned once), the spool, the seed."""

from __future__ import annotations

import errno
import logging
import socket

from server.app.options import SPOOL_DIR, Options, split_address, store_location

log = logging.getLogger("callgate.server")


def bind_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another callgate, or another program, listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface of this machine has that address"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


def check_listen(listen: str) -> None:
    """Refuse an address something already listens on, before any worker starts.

    Bound without SO_REUSEPORT: workers share their port with it, and so
    would silently share it with another callgate started on the same port.
    """
    from engine.cli import CliError

    host, port = split_address(listen)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CliError(f"--listen {listen}: cannot resolve {host!r} ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as grpcio sets it: the connections of a server that just stopped (TIME_WAIT) do not
        # count; a listening socket does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
            probe.listen(1)
        except OSError as exc:
            raise CliError(f"--listen {listen}: {bind_problem(exc)}; stop what listens there or choose another "
                           "--listen") from None


def prepare_data_dir(opts: Options) -> None:
    """Everything `serve` checks on the data directory before any worker starts (one-line errors)."""
    from engine.cli import CliError
    from server.store.api import NumberTaken, OwnershipConflicts, StoreError
    from server.store.location import open_store
    from server.worker.spool import Spool

    try:
        opts.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--data-dir {opts.data_dir}: cannot create it ({exc.strerror})") from None
    try:
        store = open_store(store_location(opts))  # create or migrate the store once, before any worker
        try:
            finished, damaged = store.quick_check(opts.startup_check_s) if opts.startup_check_s else (True, "")
            if damaged:
                raise CliError(f"{store.path} is damaged: {damaged}; callgate will not serve it. Stop everything "
                               f"that uses it, run `callgate store check --data-dir {opts.data_dir}` for the full "
                               "check and restore the store from a backup")
            if not finished:
                log.warning("the start-up check of the store did not finish in time: run `callgate store check` "
                            "when the server can be stopped", extra={"event": "startup_check_unfinished",
                                                                     "budget_s": opts.startup_check_s})
            conflicts = store.ownership_conflicts()
        finally:
            store.close()
    except StoreError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"--data-dir {opts.data_dir}: {exc.strerror or exc}") from None
    if conflicts:  # a store from before ownership lists numbers under several tenants: an operator decides
        error = OwnershipConflicts({n: [t for t, _ in holders] for n, holders in conflicts.items()},
                                   str(opts.data_dir))
        log.error("numbers held twice", extra={"event": "ownership_conflicts",
                                               "numbers": {n: [t for t, _ in h] for n, h in conflicts.items()}})
        raise CliError(str(error))
    Spool(opts.data_dir / SPOOL_DIR).sweep()   # uploads of workers that are gone (a crash, a kill -9)
    if opts.seed:
        try:
            seed(opts)
        except (NumberTaken, StoreError) as exc:
            raise CliError(f"--seed {opts.seed}: {exc}") from None


def seed(opts: Options) -> None:
    """Push the --seed document if its tenant has no settings yet (first start of `make run`)."""
    from engine import build, to_micro
    from engine.document_json import loads_document
    from server.store.api import TenantFacts, VersionConflict
    from server.store.location import open_store

    assert opts.seed is not None
    built = build(opts.seed.read_bytes())
    store = open_store(store_location(opts))
    try:
        if store.current_versions():
            # a store that holds settings is not new: seeding it again could only hide a loss
            log.info("seed skipped: the store already holds settings (--seed applies to a new store only)",
                     extra={"event": "seed_skipped", "tenant": built.tenant})
            return
        document = built.document or opts.seed.read_bytes()
        version = store.commit_version(built.tenant, "push", document, built.blob, 0, f"seed from {opts.seed}",
                                       numbers=built.numbers, facts=TenantFacts(built.status, *built.backup))
        log.info("seeded", extra={"event": "seeded", "tenant": built.tenant, "version": version})
        if opts.seed_credit:
            currency = loads_document(document)["currency"]
            store.credit(built.tenant, to_micro(opts.seed_credit), "credit", "seed", currency)
            log.info("opening credit", extra={"event": "credit", "tenant": built.tenant, "amount": opts.seed_credit})
    except VersionConflict:
        log.info("seed skipped: tenant already has settings", extra={"event": "seed_skipped", "tenant": built.tenant})
    finally:
        store.close()


