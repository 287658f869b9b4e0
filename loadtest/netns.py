"""Hosts on one machine: Linux network namespaces joined by veth pairs to a bridge, made and removed with `ip`.

A `Network` is one run's set of namespaces, all named `cg<pid>_<start>_<seq>-<host>`: the owner's PID, its
start time (so that a later process with the same PID is not taken for the owner) and a per-process
sequence number (several networks in one process).  One namespace, `...-sw`, holds the bridge `br0`; each
host namespace holds `eth0` (the veth end whose peer `v-<host>` is a port of the bridge), `lo` up, and an
address of the network's /24 (10.77.0.0/24 unless told: every run has a bridge of its own in a namespace of
its own, so runs never see each other's addresses, and nothing is added to the root namespace: no
interface, address or route there changes).  Both veth ends are created directly inside their namespaces,
so no interface of the run ever appears in the root namespace either.

`block(a, b)` drops every IPv4 packet between two hosts, both ways, and nobody is told: an nftables rule in the
bridge's own namespace (family `bridge`, hook `forward`, table `cut_<a>_<b>`), so both hosts' kernels send as
usual and hear nothing back, as behind a firewall that drops, or a switch port gone dark.  Nothing changes
inside either host, and each stays reachable by every other host (a callgate host cut off from its database
only).  ARP still passes (the rule matches IPv4), so what the hosts' TCP sees is pure silence: retransmissions,
then whatever timeouts the programs set.  `unblock(a, b)` removes the table.  It needs `nft` (Debian's
nftables; .ci/run installs it); the table goes with the switch's namespace at the end in any case.

`close()` (also on errors and Ctrl-C, as a context manager) SIGKILLs whatever still runs inside the run's
namespaces (`ip netns pids`: a process there can only be ours), then deletes the namespaces, which takes
their veths and the bridge with them.  `sweep()` does the same for the namespaces of runs whose owner is
gone.  Only names of that exact form are ever touched.

    python -m loadtest.netns list                    # every namespace of this scheme, with its owner's state
    python -m loadtest.netns sweep                   # remove those of dead runs
    python -m loadtest.netns exec NS MODULE ARGS...  # = ip netns exec NS python -m MODULE ARGS... (same PID)

The last form lets `loadtest.process.ServeProcess` (which runs `python -m <program> ...`) start a server
inside a namespace: `program=("loadtest.netns", "exec", NS, "callgate", "serve")`.  `ip netns exec`
executes the command in place, so the PID ServeProcess holds is the server's own.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from loadtest.process import start_time

IP = "/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else (shutil.which("ip") or "ip")
NFT = "/usr/sbin/nft" if Path("/usr/sbin/nft").exists() else (shutil.which("nft") or "nft")
SUBNET = "10.77.0.0/24"
NAME_RE = re.compile(r"^cg(?P<pid>\d+)_(?P<start>\d+)_(?P<seq>\d+)-(?P<host>[a-z][a-z0-9]{0,9})$")
HOST_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # "v-" + host fits IFNAMSIZ (15)
SWITCH = "sw"
_SEQ = itertools.count()


def ip(*args: str, check: bool = True, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; a failure raises RuntimeError with ip's own message."""
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def namespaces() -> list[str]:
    """Every named network namespace (`ip netns list`)."""
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    """PIDs of the processes inside namespace `ns`."""
    out = ip("netns", "pids", ns, check=False).stdout
    return [int(w) for w in out.split() if w.isdigit()]


def owner_alive(name: str) -> bool:
    """True if the process that made namespace `name` (of this module's scheme) still runs."""
    m = NAME_RE.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a namespace of loadtest.netns")
    return start_time(int(m["pid"])) == int(m["start"])


def kill_inside(ns: str, grace_s: float = 0.0) -> list[int]:
    """SIGKILL every process inside namespace `ns` (after `grace_s` for them to end on their own)."""
    deadline = time.monotonic() + grace_s
    while pids_in(ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed: list[int] = []
    for _ in range(50):  # a process may fork while we kill: until none is left (5 s at most)
        pids = [p for p in pids_in(ns) if p != os.getpid()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.1)
    return killed


def delete(ns: str) -> None:
    """Kill what runs inside `ns`, then delete it (its interfaces go with it)."""
    kill_inside(ns)
    ip("netns", "del", ns, check=False)


def sweep(log: Callable[[str], None] = print) -> list[str]:
    """Delete the namespaces of this scheme whose owner is gone (and whatever still runs in them)."""
    removed = []
    for name in namespaces():
        if NAME_RE.match(name) and not owner_alive(name):
            killed = kill_inside(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
            log(f"removed leftover namespace {name}" + (f" (killed {len(killed)} process(es))" if killed else ""))
    return removed


@dataclass
class Host:
    name: str
    ns: str
    address: str
    up: bool = True


class Network:
    """One run's hosts: a namespace each, joined by a bridge in a namespace of the run's own."""

    def __init__(self, hosts: Sequence[str] = (), subnet: str = SUBNET) -> None:
        me = os.getpid()
        self.prefix = f"cg{me}_{start_time(me)}_{next(_SEQ)}"
        self.net = ipaddress.ip_network(subnet)
        self._addresses = itertools.islice(self.net.hosts(), 1, None)  # .1 is left for a gateway
        self.hosts: dict[str, Host] = {}
        self.made: list[str] = []  # namespaces created, in order
        self.blocked: set[str] = set()  # nft tables of block(), in the switch's namespace
        self.closed = False
        try:
            for stale in (n for n in namespaces() if n.startswith(self.prefix + "-")):
                delete(stale)  # a dead process with our PID and start time cannot be: but never reuse a name
            self.switch = self._namespace(SWITCH)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for name in hosts:
                self.add_host(name)
        except BaseException:
            self.close()
            raise

    def _namespace(self, host: str) -> str:
        ns = f"{self.prefix}-{host}"
        ip("netns", "add", ns)
        self.made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def add_host(self, name: str) -> Host:
        """A new host: its namespace, `eth0` wired to the bridge, an address of the subnet."""
        if not HOST_RE.match(name) or name == SWITCH or name in self.hosts:
            raise ValueError(f"host name {name!r}: lowercase letters and digits, 1-10, unique, not {SWITCH!r}")
        ns = self._namespace(name)
        port = f"v-{name}"
        ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")
        address = str(next(self._addresses))
        ip("-n", ns, "addr", "add", f"{address}/{self.net.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        host = Host(name, ns, address)
        self.hosts[name] = host
        return host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def argv(self, host: str, command: Sequence[str]) -> list[str]:
        """`command` run inside `host` (ip netns exec executes it in place: same PID)."""
        return [IP, "netns", "exec", self.hosts[host].ns, *command]

    def python_program(self, host: str, module: str, *args: str) -> tuple[str, ...]:
        """A `program` for loadtest.process.ServeProcess: `python -m module args...` inside `host`."""
        return ("loadtest.netns", "exec", self.hosts[host].ns, module, *args)

    def cut(self, host: str) -> None:
        """Take the host's link down (inside its namespace): packets to and from it are dropped, nobody is told."""
        ip("-n", self.hosts[host].ns, "link", "set", "eth0", "down")
        self.hosts[host].up = False

    def restore(self, host: str) -> None:
        """Bring the host's link back up, with its address and route."""
        h = self.hosts[host]
        ip("-n", h.ns, "link", "set", "eth0", "up")
        if f"{h.address}/" not in ip("-n", h.ns, "-4", "addr", "show", "dev", "eth0").stdout:
            ip("-n", h.ns, "addr", "add", f"{h.address}/{self.net.prefixlen}", "dev", "eth0")
        h.up = True

    def block(self, a: str, b: str, one_way: bool = False) -> None:
        """Drop every IPv4 packet between hosts `a` and `b`, both ways, on the bridge (see the module's doc); with
        `one_way`, only those from `b` to `a` (`a` hears nothing from `b`, `b` still hears `a`).  Blocking again
        adds to what is blocked; `unblock` lifts it all."""
        ha, hb = self.hosts[a], self.hosts[b]
        table = self._block_table(a, b)
        a_to_b = "" if one_way else f"    ip saddr {ha.address} ip daddr {hb.address} drop\n"
        rules = (f"table bridge {table} {{\n"
                 "  chain forward {\n"
                 "    type filter hook forward priority 0; policy accept;\n"
                 f"{a_to_b}"
                 f"    ip saddr {hb.address} ip daddr {ha.address} drop\n"
                 "  }\n}\n")
        self._nft(["-f", "-"], rules)
        self.blocked.add(table)

    def unblock(self, a: str, b: str) -> None:
        """Let packets between `a` and `b` pass again (the connections still open carry on where TCP left off)."""
        table = self._block_table(a, b)
        if table in self.blocked:
            self._nft(["delete", "table", "bridge", table])
            self.blocked.discard(table)

    def _block_table(self, a: str, b: str) -> str:
        if a not in self.hosts or b not in self.hosts or a == b:
            raise ValueError(f"block/unblock: two different hosts of the run, not {a!r} and {b!r}")
        return "cut_" + "_".join(sorted((a, b)))

    def _nft(self, args: Sequence[str], stdin: str | None = None) -> None:
        if not Path(NFT).exists() and shutil.which(NFT) is None:
            raise RuntimeError("nft is not installed: apt-get install -y --no-install-recommends nftables "
                               "(.ci/run does)")
        proc = subprocess.run([IP, "netns", "exec", self.switch, NFT, *args], input=stdin, capture_output=True,
                              text=True, timeout=10, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)} in {self.switch}: exit {proc.returncode}: {proc.stderr.strip()}")

    def processes(self) -> dict[str, list[int]]:
        """PIDs running inside each of the run's namespaces."""
        return {ns: pids_in(ns) for ns in self.made}

    def close(self) -> list[str]:
        """Kill what still runs in the run's namespaces, delete them (host namespaces first, then the switch's);
        returns the namespaces that were still there. Safe to call twice."""
        if self.closed:
            return []
        self.closed = True
        existing = set(namespaces())
        gone = []
        for ns in reversed(self.made):
            if ns in existing:
                delete(ns)
                gone.append(ns)
        return gone

    def leftovers(self) -> list[str]:
        """Namespaces with the run's prefix that still exist (none after close())."""
        return [n for n in namespaces() if n.startswith(self.prefix + "-")]

    def __enter__(self) -> Network:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["exec"]:  # exec NS MODULE ARGS...: no argparse, so that ARGS may be anything
        if len(args) < 3 or not NAME_RE.match(args[1]):
            print("usage: python -m loadtest.netns exec NS MODULE [ARGS...] (NS of this scheme)", file=sys.stderr)
            return 2
        os.execv(IP, [IP, "netns", "exec", args[1], sys.executable, "-m", args[2], *args[3:]])
    p = argparse.ArgumentParser(prog="python -m loadtest.netns", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("list", "sweep"))
    a = p.parse_args(args)
    if a.action == "list":
        for name in namespaces():
            if NAME_RE.match(name):
                print(f"{name}\t{'owner alive' if owner_alive(name) else 'leftover'}\t{len(pids_in(name))} processes")
        return 0
    sweep()
    return 0


if __name__ == "__main__":
    sys.exit(main())
