"""Real SIP traffic through Kamailio with callgate in front: processes and sipp scenarios, for tests and load.

`Kamailio` runs Debian's kamailio with integrations/kamailio/kamailio.cfg (its
listen address, KEMI script path, INVITE timer and control socket
substituted) and the callgate settings in its environment; `Uas` runs a sipp
UAS that plays a PBX (by default it answers every INVITE: 180, 200, copying
Record-Route so that ACK and BYE pass the proxy; `kind` picks another PBX: one
that answers 200 without a 180, one that is busy, one that rings and never
answers) and logs what it received; `call()` runs a sipp UAC (from a chosen
loopback address: trusted PBXes and carriers are told apart by it) and says
whether every call ended with the status expected; `cancel()` rings and then
cancels; `Replica` runs `callgate replica` into a directory (the local
decisions' files).  Every process is ours, started on free loopback ports
and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .process import free_port, process_tree, stop_process

ROOT = Path(__file__).resolve().parent.parent
KAMAILIO_DIR = ROOT / "integrations" / "kamailio"
EVENTS_MODULE = ROOT / "build" / "kamailio" / "callgate_events.so"   # `make kamailio-module`
# the module's sources, in the order its build hashes them for its stamp (callgate_events/build `sources`)
EVENTS_SOURCES = ("callgate_events.c", "cg_event.c", "cg_event.h", "Makefile")
PACKAGES = "kamailio kamailio-python3-modules sip-tester"
TRUSTED = "127.0.0.2"   # the trusted PBX's address in the tests (a carrier calls from 127.0.0.1)

SDP = """v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000"""

HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
"""

INVITE = """  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[CALLER]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:[CALLER]@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      """ + SDP + """
    ]]>
  </send>
  <recv response="100" optional="true"/>
"""


def _in_dialog(method: str, cseq: int) -> str:
    return f"""  <send{' retrans="500"' if method == 'BYE' else ''}>
    <![CDATA[
      {method} [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[CALLER]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      [routes]
      Contact: sip:[CALLER]@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""


# the ACK of a negative final reply: hop by hop, with the INVITE's branch (sipp writes it as
# z9hG4bK-<pid>-<call>-<message index>, the INVITE being message 0)
_ACK_OF_REFUSAL = """  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-0
      From: <sip:[CALLER]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""

# a 200 OK to the request just received (a BYE, a CANCEL)
_OK_TO_LAST = """  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
"""


def uac_scenario(expect: int, hold_ms: int = 200, cut: bool = False, rtd: bool = False) -> str:
    """A UAC call that must end with `expect`: 200 -> ACK, hold, BYE, 200 (with `cut`: the proxy hangs up, the
    caller answers its BYE within `hold_ms`); else ACK of the refusal.  With `rtd`, sipp's response time 1 is
    from the INVITE to the first reply past 100 (180, 183, or the final one): what the proxy adds to ringing."""
    body = INVITE
    if expect == 200 and cut:
        body += '  <recv response="180" optional="true"/>\n  <recv response="183" optional="true"/>\n'
        body += '  <recv response="200" rrs="true"/>\n' + _in_dialog("ACK", 1)
        body += f'  <recv request="BYE" timeout="{hold_ms}"/>\n' + _OK_TO_LAST
    elif expect == 200:
        body += '  <recv response="180" optional="true"/>\n  <recv response="183" optional="true"/>\n'
        body += '  <recv response="200" rrs="true"/>\n' + _in_dialog("ACK", 1)
        body += f'  <pause milliseconds="{hold_ms}"/>\n' + _in_dialog("BYE", 2) + '  <recv response="200"/>\n'
    else:
        body += '  <recv response="180" optional="true"/>\n  <recv response="183" optional="true"/>\n'
        body += f'  <recv response="{expect}"/>\n' + _ACK_OF_REFUSAL
    if rtd:  # sipp counts a response time once per call (no repeat_rtd): at whichever reply comes first
        cut_at = body.index("  <send>\n")  # the INVITE's replies come before the next request (ACK)
        head = body[:cut_at].replace('<send retrans="500">', '<send retrans="500" start_rtd="1">', 1)
        body = re.sub(r'<recv response="([1-6]\d\d)"', lambda m: m.group(0) if m.group(1) == "100" else
                      f'<recv rtd="1" response="{m.group(1)}"', head) + body[cut_at:]
    return HEAD + f'<scenario name="callgate: expect {expect}">\n' + body + "</scenario>\n"


def _reply(status: str, sdp: bool) -> str:
    text = f"""  <send>
    <![CDATA[
      SIP/2.0 {status}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      X-Callgate-User: u2
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
"""
    if sdp:
        text += "      Content-Type: application/sdp\n      Content-Length: [len]\n\n      " + SDP + "\n"
    else:
        text += "      Content-Length: 0\n"
    return text + "    ]]>\n  </send>\n"


_ANSWERED_THEN_BYE = '  <recv request="ACK" crlf="true"/>\n  <recv request="BYE"/>\n' + _OK_TO_LAST

UAS_SCENARIOS = {
    "answer": (HEAD + '<scenario name="callgate: a PBX that answers and keeps the proxy on the route">\n'
               '  <recv request="INVITE" crlf="true"/>\n' + _reply("180 Ringing", False)
               + '  <pause milliseconds="50"/>\n' + _reply("200 OK", True) + _ANSWERED_THEN_BYE + "</scenario>\n"),
    "direct": (HEAD + '<scenario name="callgate: a PBX that answers 200 without a 180">\n'
               '  <recv request="INVITE" crlf="true"/>\n' + _reply("200 OK", True) + _ANSWERED_THEN_BYE
               + "</scenario>\n"),
    "busy": (HEAD + '<scenario name="callgate: a PBX whose user is busy">\n'
             '  <recv request="INVITE" crlf="true"/>\n' + _reply("486 Busy Here", False)
             + '  <recv request="ACK" crlf="true"/>\n</scenario>\n'),
    # rings until the caller (or the proxy's INVITE timer) cancels: 200 to the CANCEL, 487 to the INVITE
    "silent": (HEAD + '<scenario name="callgate: a PBX that rings and never answers">\n'
               '  <recv request="INVITE" crlf="true"/>\n' + _reply("180 Ringing", False)
               + '  <recv request="CANCEL"/>\n' + _OK_TO_LAST + """  <send>
    <![CDATA[
      SIP/2.0 487 Request Terminated
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: 1 INVITE
      Content-Length: 0
    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""),
}


def check_events_module() -> None:
    """RuntimeError unless build/kamailio holds the callgate_events module built for the Kamailio installed, from
    the module's sources as they are (its stamp: the version and a hash of the sources, written by its build)."""
    source = KAMAILIO_DIR / "callgate_events"
    try:
        installed = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "kamailio"], capture_output=True,
                                   text=True, timeout=30).stdout.strip()
    except OSError:
        installed = ""
    digest = hashlib.sha256(b"".join((source / name).read_bytes() for name in EVENTS_SOURCES))
    wanted = f"{installed} {digest.hexdigest()[:16]}"
    stamp = EVENTS_MODULE.with_suffix(".version")
    built = stamp.read_text().strip() if stamp.is_file() and EVENTS_MODULE.is_file() else ""
    if not installed or built != wanted:
        raise RuntimeError(f"{EVENTS_MODULE} is {'missing' if not built else 'stale'} (built: {built or '-'}; "
                           f"wanted: Kamailio {installed or '(not installed)'}, these sources): "
                           "`make kamailio-module` builds it")


def free_sip_port() -> int:
    """A port free for UDP (SIP) as well as TCP: `free_port` asks TCP only, and two proxies (or a proxy and a
    sipp) on one UDP port take each other's traffic."""
    import socket

    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP port on 127.0.0.1")


def missing_tools() -> list[str]:
    return [t for t in ("kamailio", "sipp") if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]


def python_path() -> str:
    """Folders Kamailio's embedded Python needs: this repository and the site-packages with grpcio."""
    import grpc

    return f"{ROOT}:{Path(grpc.__file__).resolve().parent.parent}"


class Uas:
    """A sipp UAS on a free port playing a PBX of `kind` (UAS_SCENARIOS); `received()` lists the request lines."""

    def __init__(self, folder: Path, kind: str = "answer") -> None:
        self.port = free_sip_port()
        self.scenario = folder / f"uas-{kind}.xml"
        self.scenario.write_text(UAS_SCENARIOS[kind])
        self.log = folder / f"uas-{self.port}.log"
        self.proc = subprocess.Popen(["sipp", "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port),
                                      "-nostdin", "-trace_msg", "-message_file", str(self.log)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def received(self) -> list[str]:
        return re.findall(r"^(?:INVITE|BYE|ACK) sip:\S+", self.messages(), flags=re.MULTILINE)

    def messages(self) -> str:
        """Everything the UAS logged (requests with their headers)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 5.0)


class Kamailio:
    """kamailio -DD -E with the shipped configuration; callgate settings through its environment."""

    def __init__(self, folder: Path, callgate: str, route_port: int, trusted: str = f"{TRUSTED}=acme",
                 failure: str = "closed", failover: Path | None = None, deadline_ms: int = 200,
                 children: int = 4, bypass: bool | str = False, tls_ca: Path | None = None, token: str = "",
                 fr_inv_ms: int = 30_000, replica: Path | None = None, replica_copy: bool = False,
                 timings: Path | None = None, events_module: bool = True, env: dict[str, str] | None = None) -> None:
        self.port = free_sip_port()
        self.folder = folder
        cfg = (KAMAILIO_DIR / "kamailio.cfg").read_text()
        cfg = cfg.replace("udp:127.0.0.1:5060", f"udp:127.0.0.1:{self.port}")
        cfg = cfg.replace("/etc/kamailio/callgate_kemi.py", str(KAMAILIO_DIR / "callgate_kemi.py"))
        # the callgate_events module (`make kamailio-module`) makes a call's reply events in C; without it
        # (events_module=False) the script's Python reply routes do
        if events_module:
            check_events_module()
        cfg = cfg.replace("/usr/lib/x86_64-linux-gnu/kamailio/modules/callgate_events.so", str(EVENTS_MODULE))
        cfg = cfg.replace("!CG_FR_INV!30000!", f"!CG_FR_INV!{fr_inv_ms}!")
        self.ctl = folder / f"kamailio-{self.port}.ctl"
        cfg = cfg.replace("unix:/var/run/kamailio/kamailio_ctl", f"unix:{self.ctl}")
        cfg = cfg.replace("children=4", f"children={children}")
        self.cfg = folder / f"kamailio-{self.port}.cfg"
        self.cfg.write_text(cfg)
        self.spool = folder / f"spool-{self.port}" / "events.sqlite"
        extra = env or {}
        env = {**os.environ, "CALLGATE_TARGET": callgate, "CALLGATE_TRUSTED": trusted,
               "CALLGATE_ROUTE_URI": f"sip:127.0.0.1:{route_port}", "CALLGATE_FAILURE": failure,
               "CALLGATE_DEADLINE_MS": str(deadline_ms), "CALLGATE_PYTHONPATH": python_path(),
               "CALLGATE_SPOOL": str(self.spool)}
        if failover is not None:
            env["CALLGATE_FAILOVER"] = str(failover)
        if replica is not None:  # inbound calls decided in the workers from `callgate replica`'s directory
            env["CALLGATE_REPLICA_DIR"] = str(replica)
        if replica_copy:  # each worker reads the files into its own memory (the memory benchmark's comparison)
            env["CALLGATE_REPLICA_COPY"] = "1"
        if timings is not None:  # each worker appends its inbound decisions' durations to TIMINGS.<pid>
            env["CALLGATE_TIMINGS"] = str(timings)
        if bypass:  # relay without asking callgate: the baseline ("events": and record the calls' events)
            env["CALLGATE_BYPASS"] = "events" if bypass == "events" else "1"
        if tls_ca is not None:
            env["CALLGATE_TLS_CA"] = str(tls_ca)
        if token:
            env["CALLGATE_TOKEN"] = token
        env.update(extra)   # (any other setting of the environment, e.g. CALLGATE_KEPT_MAX)
        if env.get("CALLGATE_SPOOL"):   # (a spool of the caller's: where `spooled` looks too)
            self.spool = Path(env["CALLGATE_SPOOL"])
        self.log = folder / f"kamailio-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["kamailio", "-DD", "-E", "-f", str(self.cfg), "-w", str(folder), "-Y", str(folder),
                 "-m", "64", "-M", "8", "-x", "tlsf"]   # TLSF: see kamailio.cfg
                + (["-A", "WITH_CALLGATE_EVENTS"] if events_module else []),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while "callgate" not in self.text() and "INFO" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kamailio did not start:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(1.0)  # the workers' child_init (gRPC channels) run after the main process logs
        if self.proc.poll() is not None:   # (a module that refused its settings logs, then Kamailio exits)
            raise RuntimeError(f"kamailio stopped as it started:\n{self.text()[-3000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 10.0)

    def processes(self) -> dict[int, str]:
        """pid -> what Kamailio says each of its processes is ("udp receiver child=0 ...", "timer", ...), from
        `kamcmd core.psx` on its control socket."""
        kamcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
        done = subprocess.run([kamcmd, "-s", f"unix:{self.ctl}", "core.psx"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=10)
        out: dict[int, str] = {}
        pid = 0
        for line in done.stdout.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "PID":
                pid = int(value)
            elif key == "DSC" and pid:
                out[pid] = value.strip()
        return out

    def udp_workers(self) -> list[int]:
        """The PIDs of its SIP workers (the UDP receivers: where the KEMI script decides calls)."""
        return sorted(pid for pid, what in self.processes().items() if what.startswith("udp receiver"))

    def tree(self) -> list[int]:
        """Every process of this instance: the main one and all it forked (from /proc)."""
        return process_tree(self.proc.pid)

    def spooled(self) -> dict[int, int]:
        """The spool's events by state (0 waiting, 1 sent, 2 refused); a SIP worker's journal with bytes the
        sender has not moved into the table yet counts as one more waiting."""
        import sqlite3

        states: dict[int, int] = {}
        offsets: dict[str, int] = {}
        if self.spool.exists():
            with sqlite3.connect(self.spool) as conn:
                states = dict(conn.execute("SELECT state, COUNT(*) FROM events GROUP BY state").fetchall())
                with contextlib.suppress(sqlite3.OperationalError):   # no journal moved yet
                    offsets = dict(conn.execute("SELECT name, offset FROM journals").fetchall())
        unread = 0
        for journal in self.spool.with_name(self.spool.name + ".journal").glob("*.cgj"):
            with contextlib.suppress(FileNotFoundError):   # the sender removes a journal it has read whole
                unread += journal.stat().st_size > offsets.get(journal.name, 0)
        if unread:
            states[0] = states.get(0, 0) + unread
        return states


def call(proxy: str, caller: str, called: str, expect: int, folder: Path, calls: int = 1, rate: float = 0,
         timeout_s: float = 30.0, extra: list[str] | None = None, source: str = "127.0.0.1",
         hold_ms: int = 200, cut: bool = False) -> tuple[bool, str]:
    """Run a sipp UAC from `source` against `proxy`; (every call ended with `expect`, what sipp reported)."""
    scenario = folder / f"uac-{expect}-{hold_ms}{'-cut' if cut else ''}.xml"
    scenario.write_text(uac_scenario(expect, hold_ms, cut))
    errors = Path(tempfile.mkstemp(prefix="sipp-err-", suffix=".log", dir=folder)[1])
    cmd = ["sipp", "-sf", str(scenario), "-s", called, proxy, "-i", source, "-p", str(free_sip_port()),
           "-m", str(calls), "-key", "CALLER", caller, "-nostdin", "-timeout", f"{int(timeout_s)}s",
           "-timeout_error", "-trace_err", "-error_file", str(errors), *(extra or [])]
    if rate:
        cmd += ["-r", str(rate)]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s + 30)
    report = errors.read_text(errors="replace")[-2000:] if errors.exists() else ""
    return done.returncode == 0, f"sipp exit {done.returncode}; {report}{done.stderr[-500:]}"


def cancel_scenario(ring_ms: int) -> str:
    """A UAC call that rings for `ring_ms` and is cancelled by the caller: CANCEL, 200, 487, ACK (the CANCEL and
    the ACK of the 487 carry the INVITE's branch, which sipp writes as z9hG4bK-<pid>-<call>-<message index>)."""
    return HEAD + '<scenario name="callgate: the caller gives up">\n' + INVITE + """  <recv response="180"/>
  <pause milliseconds="RING"/>
  <send>
    <![CDATA[
      CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-[pid]-[call_number]-0
      From: <sip:[CALLER]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
""".replace("RING", str(ring_ms)) + _ACK_OF_REFUSAL + "</scenario>\n"


def cancel(proxy: str, caller: str, called: str, folder: Path, ring_ms: int = 500, source: str = "127.0.0.1",
           timeout_s: float = 30.0) -> subprocess.Popen[str]:
    """Start a sipp UAC that rings `ring_ms` then cancels; the caller waits on (and checks) the process."""
    scenario = folder / f"uac-cancel-{ring_ms}.xml"
    scenario.write_text(cancel_scenario(ring_ms))
    return subprocess.Popen(["sipp", "-sf", str(scenario), "-s", called, proxy, "-i", source, "-p",
                             str(free_sip_port()), "-m", "1", "-key", "CALLER", caller, "-nostdin", "-timeout",
                             f"{int(timeout_s)}s", "-timeout_error"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


__all__ = ["PACKAGES", "TRUSTED", "Kamailio", "Uas", "call", "cancel", "cancel_scenario", "missing_tools",
           "uac_scenario"]
