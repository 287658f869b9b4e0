"""The tenants a load run makes on a server of yours (`--target`), and how it leaves no trace of them.

- Names: the world's tenants get a prefix unique to the run, `lt-<8 hex>-` (`lt-1a2b3c4d-t0`, ...), printed at
  the start (`--prefix` chooses it).
- Refusal: before anything is pushed, each name is looked up (Admin.GetSettings); one that exists already stops
  the run with one line and exit code 2, unless `--reuse-tenants` (then the run pushes over it and leaves it
  there at the end: it was not the run's).  So is a token that may not remove tenants (RemoveTenant is the
  owner's), unless `--keep`: a run must not make tenants it cannot take away.
- Removal: at the end, whatever happens (an error, Ctrl-C, SIGTERM: a `finally`), every tenant the run made is
  removed (Admin.RemoveTenant, forced: its balance is the run's own opening credit and a call cut short may be
  left ringing), unless `--keep`, which prints the tenants kept and the command that removes them.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Sequence

import grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc
from engine.settings import tenant_id_problem
from server.client import open_channel


class Refused(Exception):
    """The run will not start on this server (one line: what to do)."""


def run_prefix() -> str:
    """A prefix unique to this run: `lt-<8 hex>-` (2^32 of them: two runs never meet)."""
    return f"lt-{secrets.token_hex(4)}-"


def check_prefix(prefix: str) -> None:
    """ValueError unless `prefix` + "t0" is a tenant id (letters, digits, `_ . -`, starting with one of the first
    two, at most 64)."""
    problem = tenant_id_problem(prefix + "t0")
    if problem:
        raise ValueError(f"--prefix {prefix!r} does not make tenant ids: {problem}")


def remove_command(tenant: str, address: str) -> str:
    return f"callgate tenant remove --tenant {tenant} --confirm {tenant} --force --server {address}"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def claim(address: str, tenants: Sequence[str], *, reuse: bool, keep: bool, tls_ca: bytes | None = None,
          token: str = "", timeout_s: float = 30.0) -> list[str]:
    """Check the run may make `tenants` on the server; returns those it will make (and so remove at the end).

    Raises Refused when one exists (unless `reuse`: it is then used and left alone), or when the token may not
    remove tenants (unless `keep`)."""
    with open_channel(address, tls_ca, token) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        existing = []
        for tenant in tenants:
            try:
                admin.GetSettings(admin_pb2.GetSettingsRequest(tenant=tenant), timeout=timeout_s)
                existing.append(tenant)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        if existing and not reuse:
            raise Refused(f"tenant {existing[0]!r} already exists on {address}"
                          + (f" (and {len(existing) - 1} more of this run's)" if len(existing) > 1 else "")
                          + ": nothing was pushed; give another --prefix, or --reuse-tenants to run on the tenants "
                            "that are there (pushed over, never removed)")
        made = [t for t in tenants if t not in existing]
        if made and not keep:
            try:  # a dry run of the removal the run will need at its end: is this token allowed to?
                admin.RemoveTenant(admin_pb2.RemoveTenantRequest(tenant=made[0], confirm=made[0], force=True,
                                                                 dry_run=True), timeout=timeout_s)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    raise Refused(f"this token may not remove tenants on {address} (RemoveTenant is the owner's), "
                                  "so the run could not take its tenants away: give an owner token, or --keep to "
                                  "leave them there") from None
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise Refused(f"the server at {address} cannot remove tenants (a callgate older than "
                                  "Admin.RemoveTenant): give --keep to leave the run's tenants there") from None
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
    return made


def remove(address: str, tenants: Sequence[str], *, tls_ca: bytes | None = None, token: str = "",
           timeout_s: float = 30.0) -> list[str]:
    """Remove the run's tenants (one that is not there is fine); returns those left behind, each said with the
    command that removes it.  A Ctrl-C meanwhile stops the removal, says what is left, and goes on up."""
    left: list[str] = []
    removed = 0
    pending = list(tenants)
    try:
        with open_channel(address, tls_ca, token) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            while pending:
                tenant = pending[0]
                try:
                    admin.RemoveTenant(admin_pb2.RemoveTenantRequest(tenant=tenant, confirm=tenant, force=True),
                                       timeout=timeout_s)
                    removed += 1
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:  # never made (stopped before its push): fine
                        say(f"could not remove tenant {tenant!r}: {exc.code().name}: {exc.details()}")
                        left.append(tenant)
                pending.pop(0)
    except BaseException:
        left += pending
        raise
    finally:
        if removed:
            say(f"removed the {removed} tenant(s) this run made on {address}")
        for tenant in left:
            say(f"left behind: tenant {tenant!r}; remove it with: {remove_command(tenant, address)}")
    return left


def kept(address: str, tenants: Sequence[str]) -> None:
    """--keep: say which tenants stay and how to remove them."""
    if not tenants:
        return
    say(f"kept (--keep) on {address}: {', '.join(tenants)}; remove them with:")
    for tenant in tenants:
        say(f"  {remove_command(tenant, address)}")
