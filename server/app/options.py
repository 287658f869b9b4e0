"""`callgate serve`'s options: `Options` holds every default once; `add_arguments` shows them, `options_from`
checks what was given (a ValueError in words an operator acts on)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from engine import to_micro
from server.rules.calls import EventOptions
from server.worker.jobs import MAX_TOPUP_ATTEMPTS, JobOptions

STORE_FILE = "callgate.sqlite"
SPOOL_DIR = "spool"


@dataclass(frozen=True)
class Options:
    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("data")
    store: str = ""                   # a postgresql:// URL; "": SQLite in data_dir
    workers: int = 1
    metrics: str = "127.0.0.1:9464"
    metrics_tenants: int = 20
    seed: Path | None = None
    seed_credit: str | None = None
    poll: float = 0.2
    grace: float = 5.0
    max_message_mb: int = 64
    max_upload_mb: int = 10
    upload_mb_per_s: float = 25.0
    jobs: JobOptions = field(default_factory=JobOptions)
    events: EventOptions = field(default_factory=EventOptions)
    log_format: str = "json"
    reuse_port: bool = False
    auth: str = "auto"
    admin_per_minute: int = 600
    max_list_entries: int = 10_000_000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    startup_check_s: float = 30.0


def store_location(opts: Options) -> str:
    """What the workers open: --store, or the SQLite file in --data-dir."""
    return opts.store or str(opts.data_dir / STORE_FILE)


def loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def auth_enabled(opts: Options) -> bool:
    """`auto`: tokens are required unless the server listens on loopback only."""
    return opts.auth == "tokens" or (opts.auth == "auto" and not loopback(opts.listen))


def split_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `callgate serve` options; every default is the one `Options`, `JobOptions` and `EventOptions` hold."""
    D, J, E = Options(), JobOptions(), EventOptions()
    parser.add_argument("--listen", default=D.listen, metavar="HOST:PORT",
                        help=f"address to serve gRPC on (default {D.listen}; port 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, default=D.data_dir,
                        help=f"directory of the SQLite store (created if missing; default ./{D.data_dir})")
    parser.add_argument("--store", default=D.store, metavar="URL",
                        help="postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE: the store several hosts share (the "
                             "workers of every host answer from it); default: SQLite in --data-dir, one host. The "
                             "data directory still holds the upload spool and document images")
    parser.add_argument("--workers", type=int, default=D.workers,
                        help=f"worker processes sharing the port with SO_REUSEPORT (default {D.workers})")
    parser.add_argument("--metrics", default=D.metrics, metavar="HOST:PORT",
                        help=f"Prometheus /metrics address (default {D.metrics}; '' disables)")
    parser.add_argument("--metrics-tenants", type=int, default=D.metrics_tenants, metavar="N",
                        help="per-tenant series (snapshot bytes, version in force) for the N tenants with the "
                             f"largest snapshots, so that thousands of tenants stay a bounded set (default "
                             f"{D.metrics_tenants}; 0: none)")
    parser.add_argument("--seed", type=Path, help="settings document to push at start if its tenant has none")
    parser.add_argument("--seed-credit", metavar="AMOUNT",
                        help="with --seed: opening balance credited to a freshly seeded tenant (e.g. 10.00)")
    parser.add_argument("--startup-check-s", type=float, default=D.startup_check_s, metavar="SECONDS",
                        help="SQLite's quick check of the store before serving, stopped after this long (a damaged "
                             f"store is refused; default {D.startup_check_s:g}; 0 skips it)")
    parser.add_argument("--poll", type=float, default=D.poll,
                        help=f"seconds between checks of the store for new versions (default {D.poll:g})")
    parser.add_argument("--grace", type=float, default=D.grace,
                        help=f"seconds calls in flight get to finish on SIGTERM (default {D.grace:g})")
    parser.add_argument("--max-message-mb", type=int, default=D.max_message_mb,
                        help=f"largest gRPC message, and so settings document, accepted (default {D.max_message_mb})")
    parser.add_argument("--upload-mb-per-s", type=float, default=D.upload_mb_per_s, metavar="MB",
                        help="read settings uploads (PushSettingsUpload) at most this fast, so that a big push "
                             f"does not take the CPU from decisions (default {D.upload_mb_per_s:g}; 0: no limit)")
    parser.add_argument("--max-list-entries", type=int, default=D.max_list_entries, metavar="N",
                        help="entries a tenant's blacklist or off-hours blacklist may hold "
                             f"(default {D.max_list_entries:,})")
    parser.add_argument("--max-upload-mb", type=int, default=D.max_upload_mb,
                        help=f"largest document image accepted, per file (default {D.max_upload_mb})")
    parser.add_argument("--topup-retry-s", type=float, default=J.topup_retry_s, metavar="SECONDS",
                        help="first retry of a declined auto top-up; doubles each time up to an hour, "
                             f"{MAX_TOPUP_ATTEMPTS} attempts (default {J.topup_retry_s:g})")
    parser.add_argument("--topup-stale-s", type=int, default=J.topup_stale_s, metavar="SECONDS",
                        help="a top-up claimed this long ago by a worker that died is taken over; the gateway's "
                             f"idempotency key makes sure it is not charged twice (default {J.topup_stale_s})")
    parser.add_argument("--sandbox-latency-ms", type=int, default=round(J.gateway_latency_s * 1000), metavar="MS",
                        help="the sandbox payment gateway answers after this long, as a real one does "
                             f"(default {J.gateway_latency_s * 1000:g})")
    parser.add_argument("--ring-timeout-s", type=int, default=E.ring_timeout_s, metavar="SECONDS",
                        help="expire a call ringing this long without an answer or an end "
                             f"(default {E.ring_timeout_s})")
    parser.add_argument("--call-max-s", type=int, default=E.call_max_s, metavar="SECONDS",
                        help="talk a call is billed for at most, and an answered call this long without an end "
                             f"is expired and charged that much (default {E.call_max_s})")
    parser.add_argument("--max-clock-skew-s", type=int, default=E.max_clock_skew_s, metavar="SECONDS",
                        help="a call event stamped more than this ahead of the server's clock is refused "
                             f"(INVALID_ARGUMENT: the proxy's clock is wrong; default {E.max_clock_skew_s})")
    parser.add_argument("--max-event-age-s", type=int, metavar="SECONDS",
                        help="a call event older than this is refused; younger late events are recorded, as a "
                             "proxy replays what it could not deliver (default: --call-max-s)")
    parser.add_argument("--reserve-max-s", type=int, default=E.reserve_max_s, metavar="SECONDS",
                        help="the most talk one outbound call or forwarded leg holds credit for from its RINGING "
                             "(its RINGING reply's max_duration_s); lower shares a small balance among more "
                             f"parallel calls (default {E.reserve_max_s}; at most --call-max-s)")
    parser.add_argument("--auth", choices=("auto", "tokens", "off"), default=D.auth,
                        help="bearer tokens (callgate tokens create) required on every call but health and "
                             "reflection: 'tokens' always, 'auto' (default) unless listening on loopback only")
    parser.add_argument("--admin-calls-per-minute", type=int, default=D.admin_per_minute, metavar="N",
                        help="with --auth: Admin calls a token may make per minute, per worker "
                             f"(default {D.admin_per_minute}; 0: no limit); beyond, RESOURCE_EXHAUSTED with when "
                             "to try again")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate (chain)")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="... and this private key")
    parser.add_argument("--client-ca", type=Path, metavar="PEM",
                        help="mutual TLS: require a client certificate signed by this CA")
    parser.add_argument("--log-format", choices=("json", "text"), default=D.log_format,
                        help="log lines as JSON objects (default) or plain text")


def options_from(args: argparse.Namespace) -> Options:
    if args.workers < 1 or args.workers > 64:
        raise ValueError("--workers must be 1..64")
    if args.poll <= 0 or args.poll > 5:
        raise ValueError("--poll must be in (0, 5] seconds: pushes must be in force everywhere within a second")
    if not 0 <= args.startup_check_s <= 86_400:
        raise ValueError("--startup-check-s must be 0..86400")
    if not 0 < args.max_upload_mb <= 1024:
        raise ValueError("--max-upload-mb must be 1..1024")
    if not 0 < args.topup_retry_s <= 86_400:
        raise ValueError("--topup-retry-s must be in (0, 86400]")
    if args.ring_timeout_s < 1 or args.call_max_s < 1 or args.topup_stale_s < 1:
        raise ValueError("--ring-timeout-s, --call-max-s and --topup-stale-s must be at least 1 second")
    max_age = args.call_max_s if args.max_event_age_s is None else args.max_event_age_s
    if not 0 <= args.max_clock_skew_s <= 86_400 or max_age < 1 or not 1 <= args.reserve_max_s:
        raise ValueError("--max-clock-skew-s must be 0..86400 s, --max-event-age-s and --reserve-max-s at least 1 s")
    if args.max_list_entries < 1:
        raise ValueError("--max-list-entries must be at least 1")
    if args.admin_calls_per_minute < 0:
        raise ValueError("--admin-calls-per-minute must be >= 0 (0: no limit)")
    if not 0 <= args.sandbox_latency_ms <= 60_000:
        raise ValueError("--sandbox-latency-ms must be 0..60000")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.client_ca is not None and args.tls_cert is None:
        raise ValueError("--client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--client-ca", args.client_ca)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
        if path is not None and b"-----BEGIN" not in path.read_bytes()[:100_000]:
            raise ValueError(f"{flag} {path} is not PEM")
    if args.upload_mb_per_s < 0:
        raise ValueError("--upload-mb-per-s must be >= 0 (0: no limit)")
    split_address(args.listen)
    if args.store and not args.store.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"--store {args.store!r}: give a postgresql://USER@HOST:PORT/DATABASE address (the "
                         "embedded SQLite store is the default: leave --store out)")
    if args.metrics:
        split_address(args.metrics)
    if not 0 <= args.metrics_tenants <= 1000:
        raise ValueError("--metrics-tenants must be 0..1000 (each tenant is a series per name in Prometheus)")
    if args.seed is not None and not args.seed.is_file():
        raise ValueError(f"--seed {args.seed}: no such file")
    if args.seed_credit is not None:
        try:
            if to_micro(args.seed_credit) < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"--seed-credit {args.seed_credit!r} is not an amount such as 10.00") from None
    return Options(listen=args.listen, data_dir=args.data_dir, store=args.store, workers=args.workers,
                   metrics=args.metrics,
                   metrics_tenants=args.metrics_tenants,
                   seed=args.seed, seed_credit=args.seed_credit, poll=args.poll, grace=args.grace,
                   max_message_mb=args.max_message_mb, max_upload_mb=args.max_upload_mb,
                   upload_mb_per_s=args.upload_mb_per_s, auth=args.auth, admin_per_minute=args.admin_calls_per_minute,
                   tls_cert=args.tls_cert, max_list_entries=args.max_list_entries,
                   tls_key=args.tls_key, client_ca=args.client_ca, startup_check_s=args.startup_check_s,
                   jobs=JobOptions(topup_retry_s=args.topup_retry_s, topup_stale_s=args.topup_stale_s,
                                   gateway_latency_s=args.sandbox_latency_ms / 1000,
                                   ring_timeout_s=args.ring_timeout_s,
                                   call_max_s=args.call_max_s,
                                   expire_every_s=min(5.0, args.ring_timeout_s / 2)),
                   events=EventOptions(max_clock_skew_s=args.max_clock_skew_s, max_event_age_s=max_age,
                                       ring_timeout_s=args.ring_timeout_s, call_max_s=args.call_max_s,
                                       reserve_max_s=min(args.reserve_max_s, args.call_max_s)),
                   log_format=args.log_format)
