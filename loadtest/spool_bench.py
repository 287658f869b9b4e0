"""The Kamailio script's event sender outside Kamailio: what a round costs its process, per call, with the
spool's journals read by the compiled reader (integrations/kamailio/callgate_journal.pyx) and by the Python one
(callgate_spool.read_journal), side by side.

    .venv/bin/python -m loadtest.spool_bench                   # ~1 minute
    .venv/bin/python -m loadtest.spool_bench --rounds 40 --calls 200 --json bench-results/spool.json

`--writers` processes append a call's RINGING, ANSWERED and ENDED each to journals of their own, as the SIP
workers do (callgate_spool.Journal: the layout Kamailio's callgate_events module writes), `--calls` calls a round
between them; then the sender (callgate_kemi.py's `ksr_callgate_sender`, the script loaded under a stand-in for
Kamailio's KSR module) takes the round: reads the journals, sends the events in CallEventsInOrder over loopback
gRPC to a stand-in callgate (a process of its own that answers every event), counts them read.  Rounds come
`--every-ms` apart (the sender's caches as cold as a round's sleep leaves them), the readers taking turns; a round
is the sender's thread CPU (time.thread_time: its Python, the reader, protobuf and grpcio's call in that thread),
per call.  Reported: the median round of each reader, and compiled / Python.

Every round is bounded (a call's events once, every one answered); the processes it starts are stopped by PID.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
from concurrent import futures
from pathlib import Path
from typing import Any

from .cluster_bench import pct

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "integrations" / "kamailio" / "callgate_kemi.py"


def serve() -> None:
    """The stand-in callgate: CallEventsInOrder answering every event; prints its port, serves until killed."""
    import grpc

    from callgate.v1 import decisions_pb2, decisions_pb2_grpc

    class Answering(decisions_pb2_grpc.DecisionsServicer):
        def CallEventsInOrder(self, batch: Any, context: Any) -> Any:
            reply = decisions_pb2.CallEventBatchReply()
            for event in batch.events:
                reply.results.add().reply.call_id = event.call_id
            return reply

    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    decisions_pb2_grpc.add_DecisionsServicer_to_server(Answering(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination(timeout=3600)


def the_sender(target: str, spool: Path) -> Any:
    """The script's sender, its module loaded under a stand-in KSR (its log calls go nowhere)."""
    os.environ.update(CALLGATE_TARGET=target, CALLGATE_SPOOL=str(spool))
    ksr = types.ModuleType("KSR")
    for level in ("err", "warn", "notice", "info"):
        setattr(ksr, level, lambda text: None)
    ksr.pv = types.SimpleNamespace(get=lambda name: None)  # type: ignore[attr-defined]
    sys.modules["KSR"] = ksr
    spec = importlib.util.spec_from_file_location("callgate_kemi_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SEND_EVERY_S = 0.0   # (a round at every call: this bench paces them)
    return module.kamailio()


def writer(spool_module: Any, journals: str, index: int, writers: int, calls: int, pipe: int) -> None:
    """A SIP worker's stand-in (a forked process): at each round number read from `pipe`, its share of the round's
    calls, each call's three events in the journal of its own; exits at the pipe's end."""
    from callgate.v1 import decisions_pb2

    kind = decisions_pb2.CallEventRequest
    journal = spool_module.Journal(journals)
    while (line := os.read(pipe, 32)):
        round_ = int(line)
        for c in range(index, calls, writers):
            call = f"bench-{round_}-{c}@10.0.0.1/1"
            for name in ("RINGING", "ANSWERED", "ENDED"):   # (one append an event, as a worker at each reply)
                journal.append([(f"{call}:{name}", call, kind(
                    tenant="acme", call_id=call, kind=getattr(kind, name), at=int(time.time()),
                    caller="+14155550100", called="+14155550199", user="u1", line="main").SerializeToString())])
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.spool_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30, help="rounds of each reader (default 30)")
    p.add_argument("--calls", type=int, default=100, help="calls a round, three events each (default 100: "
                   "200 calls/s at the sender's 500 ms)")
    p.add_argument("--writers", type=int, default=8, help="processes writing journals (default 8)")
    p.add_argument("--every-ms", type=int, default=500, help="the sleep before each round (default 500)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)   # (the stand-in callgate)
    args = p.parse_args(argv)
    if args.serve:
        serve()
        return 0
    if args.rounds < 1 or not 1 <= args.calls <= 300 or args.writers < 1 or not 0 <= args.every_ms <= 10_000:
        p.error("--rounds at least 1, --calls 1 to 300 (one CallEventsInOrder part), --writers at least 1, "
                "--every-ms 0 to 10,000")
    server = subprocess.Popen([sys.executable, "-m", "loadtest.spool_bench", "--serve"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    children: list[int] = []
    pipes: list[int] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="callgate-spool-bench-") as tmp:
            sender = the_sender(f"127.0.0.1:{port}", Path(tmp) / "events.sqlite")
            spool_module: Any = sys.modules[type(sender.spool).__module__]
            for index in range(args.writers):
                read_end, write_end = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(write_end)
                    writer(spool_module, sender.spool.journals, index, args.writers, args.calls, read_end)
                os.close(read_end)
                children.append(pid)
                pipes.append(write_end)
            compiled, how = spool_module.journal_reader()
            if how != "compiled":
                p.error(f"the compiled reader is not there: {how}")
            readers = {"compiled": compiled, "python": spool_module.read_journal}
            rounds: dict[str, list[float]] = {name: [] for name in readers}
            sent = 0
            warm, turn = 0, 0
            while min(len(v) for v in rounds.values()) < args.rounds:
                # (the first rounds warm up, not counted: at least two, and until nothing waits in the sender's
                # table, whose first round looks there first and drains it SENDER_BATCH events a tick)
                counted = warm >= 2 and not sender.backlog
                warm += 0 if counted else 1
                if warm > 50:
                    raise SystemExit("the sender's table never drained: is the stand-in callgate up?")
                name = ("compiled", "python")[turn % 2]
                turn += 1
                for pipe in pipes:
                    os.write(pipe, f"{turn:31d}".encode())
                time.sleep(max(args.every_ms / 1000, spool_module.WATERMARK_NS / 1e9 + 0.03))
                spool_module.journal_reader = lambda reader=readers[name], how=name: (reader, how)
                before, t0 = len(sender.spool.conn().execute("SELECT 1 FROM events").fetchall()), time.thread_time()
                sender.ksr_callgate_sender(None)
                took = time.thread_time() - t0
                sent += 3 * args.calls
                if not counted:
                    for _ in range(20):   # (the ticks of Kamailio's timer, every 100 ms while events wait)
                        if not sender.backlog:
                            break
                        sender.ksr_callgate_sender(None)
                    continue
                if sender.backlog or sender.failures or len(sender.spool.conn().execute(
                        "SELECT 1 FROM events").fetchall()) != before:
                    raise SystemExit(f"round {turn}: not every event went straight and was answered")
                rounds[name].append(took * 1e6 / args.calls)
    finally:
        for pipe in pipes:
            os.close(pipe)
        for pid in children:
            os.waitpid(pid, 0)
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    medians = {name: pct(v, 50) or 0.0 for name, v in rounds.items()}
    out = {name: {"p50_us_per_call": medians[name], "min": min(v), "max": max(v), "rounds": v}
           for name, v in rounds.items()}
    ratio = medians["compiled"] / medians["python"]
    print(f"spool_bench: {args.rounds} rounds of each reader, {args.calls} calls ({3 * args.calls} events) a round "
          f"from {args.writers} writers, {args.every_ms} ms apart; the sender's thread CPU per call")
    for name, values in rounds.items():
        print(f"  journals read {name:9s} median {medians[name]:6.1f} µs a call "
              f"(rounds {min(values):.1f}-{max(values):.1f})")
    print(f"  compiled / python      {ratio:6.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "json"},
                                         "readers": out, "ratio": ratio, "events": sent, "rounds_run": turn},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
