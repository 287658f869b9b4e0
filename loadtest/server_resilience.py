"""Sections 5-7 of the server benchmark: a big push under load, its propagation to every worker, a worker's kill."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import sqlite3
import statistics
import threading
import time
from collections import Counter
from typing import Any

import grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc
from server.client import open_channel, upload_messages

from .fleet import CHANNEL_OPTIONS  # a connection of its own
from .loadgen import METHODS, inbound_payloads
from .process import EXAMPLE, ServeProcess, connections_by_pid, descendants, kill_leftovers
from .server_sections import BIG_OPTIONS, ROWS, TENANT, Plan, Report, lat, open_loop, say
from .world import big_tenant


def fresh_stats(address: str, tenant: str, timeout_s: float = 5.0) -> tuple[int, int, int]:
    """Admin.Stats over a connection of its own: (answering pid, loaded_version, version in the store)."""
    with open_channel(address, options=CHANNEL_OPTIONS) as channel:
        reply = admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(tenant=tenant), timeout=timeout_s)
    t = reply.tenants[0]
    return reply.pid, t.loaded_version, t.version


def seen_workers(address: str, want: int, tries: int) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(fresh_stats(address, TENANT)[0])
        if len(seen) >= want:
            break
    return seen


def push(address: str, document: bytes, timeout_s: float) -> admin_pb2.PushSettingsReply:
    with open_channel(address, options=BIG_OPTIONS) as channel:
        reply: admin_pb2.PushSettingsReply = admin_pb2_grpc.AdminStub(channel).PushSettingsUpload(
            upload_messages(document, comment="server_bench"), timeout=timeout_s)
        return reply


def section_stalls(w1: ServeProcess, plan: Plan, rep: Report, offset_ns: int) -> None:
    say(f"5 stalls: building tenant 'big' with a {plan.blacklist:,}-entry blacklist")
    t = time.perf_counter()
    doc, _ = big_tenant(plan.seed, plan.blacklist, plan.big_numbers, tenant="big")
    document = json.dumps(doc).encode()
    del doc
    out: dict[str, Any] = {"blacklist": plan.blacklist, "document_bytes": len(document),
                           "document_build_s": time.perf_counter() - t, "rate": plan.stall_rate}
    say(f"5 stalls: document of {len(document) / 1e6:.1f} MB built in {out['document_build_s']:.1f} s")
    say(f"5 stalls: open loop {plan.stall_rate:,.0f}/s for {plan.stall_s:g} s without a push")
    base, base_window = open_loop(w1.address, plan.stall_rate, plan.stall_s, plan, w1.pid)
    offset_ns = base_window.startup_ns
    out["without_push"] = base
    say(f"5 stalls: without push p99 {lat(base)['p99']:.3f} ms, max {lat(base)['max']:.2f} ms")

    pushed: dict[str, Any] = {}

    def pusher(due_ns: int) -> None:
        time.sleep(max(due_ns - time.monotonic_ns(), 0) / 1e9)
        pushed["start_ns"] = time.monotonic_ns()
        try:
            reply = push(w1.address, document, plan.push_timeout_s)
            pushed.update(version=reply.version, compile_s=reply.compile_seconds)
        except grpc.RpcError as exc:
            pushed["error"] = f"{exc.code().name}: {exc.details()}"
        pushed["end_ns"] = time.monotonic_ns()

    say(f"5 stalls: open loop {plan.stall_rate:,.0f}/s for {plan.stall_s:g} s with the push "
        f"{plan.push_at_s:g} s into the measured window")
    due = time.monotonic_ns() + offset_ns + int(plan.push_at_s * 1e9)
    thread = threading.Thread(target=pusher, args=(due,), name="push", daemon=True)
    thread.start()
    try:
        with_push, window = open_loop(w1.address, plan.stall_rate, plan.stall_s, plan, w1.pid)
    finally:
        thread.join(plan.push_timeout_s + 10)
    out["with_push"] = with_push
    if "start_ns" in pushed and "end_ns" in pushed:
        out["push_s"] = (pushed["end_ns"] - pushed["start_ns"]) / 1e9
        out["push_started_at_s"] = (pushed["start_ns"] - window.first_ns) / 1e9
        out["push_ended_at_s"] = (pushed["end_ns"] - window.first_ns) / 1e9
        out["window_s"] = (window.last_ns - window.first_ns) / 1e9
        out["push_inside_window"] = window.first_ns <= pushed["start_ns"] and pushed["end_ns"] <= window.last_ns
    out["push"] = {k: v for k, v in pushed.items() if not k.endswith("_ns")}
    phases = [e for e in w1.events("push") if e.get("tenant") == "big"]
    if phases:
        out["server_phases"] = {k: phases[-1].get(k) for k in ("seconds", "build_s", "store_s", "install_s")}
        say(f"5 stalls: the server's push phases (s): {out['server_phases']}")
    if window.timeline is not None and "start_ns" in pushed and "end_ns" in pushed:
        # where the slow calls were: 100 ms bins from 1 s before the push to 2 s after it
        rows = [r for r in window.timeline.rows(pushed["start_ns"]) if -1.0 <= r[0] <= out["push_s"] + 2.0]
        out["timeline_around_push"] = [{"at_s": round(t, 1), "calls": n, "mean_ms": round(m, 3),
                                        "max_ms": round(x, 3)} for t, n, m, x in rows]
        slow = [f"{t:+.1f}s {m:.1f}/{x:.1f}" for t, n, m, x in rows if x > 3 * lat(base)["p99"]]
        say("5 stalls: 100 ms bins (from the push's start) with a call slower than 3x the no-push p99, "
            f"mean/max ms: {', '.join(slow) if slow else 'none'}")
    if "error" not in pushed and "version" in pushed:
        try:
            with open_channel(w1.address) as channel:
                st = admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(tenant="big"), timeout=10)
            out["big_loaded"] = {"loaded_version": st.tenants[0].loaded_version,
                                 "blacklist": st.tenants[0].blacklist}
        except grpc.RpcError as exc:
            out["big_loaded"] = {"error": exc.code().name}
    p_without, p_with = lat(base)["p99"], lat(with_push)["p99"]
    out["ratio_p99"] = p_with / p_without if p_without else None
    say(f"5 stalls: with push p99 {p_with:.3f} ms, max {lat(with_push)['max']:.2f} ms; push "
        + (f"took {out.get('push_s', 0):.2f} s (from {out.get('push_started_at_s', 0):.1f} s to "
           f"{out.get('push_ended_at_s', 0):.1f} s of a {out.get('window_s', 0):.1f} s window)"
           if "error" not in pushed else f"failed: {pushed['error']}"))
    rep.add(5, f"Inbound p99 ms at {plan.stall_rate:,.0f}/s, no push", p_without)
    rep.add(5, f"Inbound p99 ms at {plan.stall_rate:,.0f}/s, {plan.blacklist:,}-entry push", p_with)
    rep.add(5, "p99 with push / without", out["ratio_p99"], "{:.2f}", "<= 2", lambda v: v <= 2.0)
    rep.add(5, "  max latency ms without / with push", text=f"{lat(base)['max']:.2f} / {lat(with_push)['max']:.2f}")
    rep.add(5, "  push duration s (PushSettings call)", out.get("push_s"), "{:.2f}")
    rep.add(5, "  compile s (in the server's compile process)", pushed.get("compile_s"), "{:.2f}")
    if "error" in pushed:
        rep.note(5, f"the push failed: {pushed['error']}")
    elif not out.get("push_inside_window", False):
        rep.note(5, "the push did not fall wholly inside the measured window: lengthen the load or push earlier")
    if out.get("big_loaded"):
        rep.note(5, f"after the push, Stats(big): {out['big_loaded']}")
    for key in ("without_push", "with_push"):
        if out[key]["errors"]:
            rep.note(5, f"{key}: errors {out[key]['errors']}")
    rep.note(5, f"document {len(document) / 1e6:.1f} MB; p99.9 without / with push: "
                f"{lat(base)['p99.9']:.2f} / {lat(with_push)['p99.9']:.2f} ms")
    calls = int(plan.stall_rate * plan.stall_s)
    if out["ratio_p99"] is not None and out["ratio_p99"] > 2:
        rep.note(5, f"reading: p99 of {calls:,} calls is the {calls // 100:,}th-slowest; at {plan.stall_rate:,.0f} "
                    "calls/s "
                    f"a stall of T ms in the worker delays about T x {plan.stall_rate / 1000:g} calls, by up to T ms "
                    f"each, so a with-push p99 of {p_with:.0f} ms means the worker stopped answering for at least "
                    "about that long (once or more) during the push")
    rep.sections["stalls"] = out


def section_propagation(w2: ServeProcess, plan: Plan, rep: Report) -> None:
    address = w2.address
    workers = set(w2.worker_pids())
    seen = seen_workers(address, len(workers), 60)
    say(f"6 propagation: workers {sorted(workers)}; answering Stats over fresh connections: {sorted(seen)}")
    doc = json.loads(EXAMPLE.read_text())
    results: list[dict[str, Any]] = []
    for i in range(plan.pushes):
        time.sleep(0.037 * i)  # vary the phase against the workers' 0.2 s poll
        d = copy.deepcopy(doc)
        d["blacklist"].append(f"+1415555{3000 + i:04d}")
        t_call = time.monotonic()
        version = push(address, json.dumps(d).encode(), 60).version
        t_reply = time.monotonic()
        first_new: dict[int, float] = {}
        last_old: dict[int, float] = {}
        probes = 0
        deadline = t_reply + 10.0
        while time.monotonic() < deadline and probes < 5000:
            pid, loaded, _ = fresh_stats(address, TENANT)
            now = time.monotonic()
            probes += 1
            if loaded >= version:
                first_new.setdefault(pid, now - t_reply)
            else:
                last_old[pid] = now - t_reply
            if workers <= set(first_new):
                break
        done = workers <= set(first_new)
        r: dict[str, Any] = {"version": version, "push_s": t_reply - t_call, "probes": probes, "all_workers": done,
                             "upper_bound_s": max(first_new.values()) if done else None,
                             "lower_bound_s": max(last_old.values(), default=0.0),
                             "first_new_s": {str(k): v for k, v in first_new.items()}}
        results.append(r)
        say(f"6 propagation: push {i + 1}/{plan.pushes} (version {version}, {r['push_s'] * 1000:.0f} ms): "
            + (f"in force in every worker within {r['upper_bound_s'] * 1000:.0f} ms (old version last seen at "
               f"{r['lower_bound_s'] * 1000:.0f} ms), {probes} probes" if done else "NOT in every worker in 10 s"))
    uppers = [r["upper_bound_s"] for r in results if r["upper_bound_s"] is not None]
    worst = max(uppers) if len(uppers) == len(results) and uppers else None
    out: dict[str, Any] = {"workers": sorted(workers), "pushes": results, "worst_s": worst,
                           "median_s": statistics.median(uppers) if uppers else None}
    rep.add(6, f"propagation s, worst of {plan.pushes} pushes (w2)", worst, "{:.3f}", "<= 1", lambda v: v <= 1.0)
    rep.add(6, "  propagation s, median", out["median_s"], "{:.3f}")
    rep.add(6, "  PushSettings call s, median", statistics.median(r["push_s"] for r in results), "{:.3f}")
    rep.note(6, "each figure is when the lagging worker was first seen with the new version over a fresh "
                "connection (an upper bound); it was last seen with the old one at "
                + ", ".join(f"{r['lower_bound_s'] * 1000:.0f}" for r in results) + " ms (lower bounds); "
                "the workers poll the store every 0.2 s")
    rep.sections["propagation"] = out


def section_kill(w2: ServeProcess, plan: Plan, rep: Report) -> None:
    address = w2.address
    before = w2.worker_pids()
    port = w2.port or 0
    w2.remember_processes()
    n_started = len(w2.events("worker_started"))
    payloads = inbound_payloads(TENANT, ROWS)
    lock = threading.Lock()
    records: list[tuple[int, int, str]] = []  # (intended ns, end ns, status)
    inflight = [0]
    channels: list[grpc.Channel] = []
    try:
        # SO_REUSEPORT spreads connections at random: open them again (a few times at most) until every
        # worker holds some, so that the kill hits calls in flight while the other worker keeps answering
        for attempt in range(6):
            for ch in channels:
                ch.close()
            channels = [open_channel(address, options=CHANNEL_OPTIONS) for _ in range(plan.kill_channels)]
            for ch in channels:
                grpc.channel_ready_future(ch).result(timeout=10)
            calls = [ch.unary_unary(METHODS["inbound"]) for ch in channels]
            for c in calls:  # one call each: every connection is up before the clock starts
                c(payloads[0], timeout=5)
            spread = connections_by_pid(before, port)
            if min(spread.values(), default=0) > 0 or attempt == 5:
                break
        # the victim: the worker holding most of the load's connections
        victim = max(before, key=lambda p: spread.get(p, 0))
        victim_procs = descendants(victim)  # e.g. its compile process: must not outlive it
        say(f"7 kill: connections per worker {spread}; victim {victim}")
        say(f"7 kill: open loop {plan.kill_rate:,.0f}/s for {plan.kill_s:g} s over {len(channels)} connections; "
            f"kill -9 of worker {victim} (of {before}) at {plan.kill_at_s:g} s")

        def done(intended: int, fut: grpc.Future) -> None:
            end = time.monotonic_ns()
            code = fut.code()
            with lock:
                inflight[0] -= 1
                records.append((intended, end, code.name if code is not None else "UNKNOWN"))

        total = int(plan.kill_rate * plan.kill_s)
        t0 = time.monotonic_ns() + 50_000_000
        kill_ns = t0 + int(plan.kill_at_s * 1e9)
        killed_at: int | None = None
        conns: dict[int, int] = {}
        inflight_at_kill = 0
        for i in range(total):
            due = t0 + int(i * 1e9 / plan.kill_rate)
            if killed_at is None and due >= kill_ns:
                conns = connections_by_pid(before, port)
                os.kill(victim, signal.SIGKILL)  # a worker of the server we started, by its PID
                killed_at = time.monotonic_ns()
                with lock:
                    inflight_at_kill = inflight[0]
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            with lock:
                if inflight[0] >= 2000:
                    records.append((due, due, "CLIENT_DROPPED"))
                    continue
                inflight[0] += 1
            fut = calls[i % len(calls)].future(payloads[i % len(payloads)], timeout=5.0)
            fut.add_done_callback(lambda f, due=due: done(due, f))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if inflight[0] == 0:
                    break
            time.sleep(0.02)
    finally:
        for ch in channels:
            ch.close()
    assert killed_at is not None
    with lock:
        recs = list(records)
    after = [r for r in recs if r[1] >= killed_at]
    before_kill = [r for r in recs if r[1] < killed_at]

    def by_status(rs: list[tuple[int, int, str]]) -> dict[str, int]:
        return dict(sorted(Counter(r[2] for r in rs).items()))

    errors_after = [r for r in after if r[2] != "OK"]
    out: dict[str, Any] = {
        "victim": victim, "workers_before": before, "calls": len(recs),
        "ok_before_kill": sum(1 for r in before_kill if r[2] == "OK"),
        "ok_after_kill": sum(1 for r in after if r[2] == "OK"),
        "status_before_kill": by_status(before_kill), "status_after_kill": by_status(after),
        "last_error_after_kill_s": max((r[1] - killed_at) / 1e9 for r in errors_after) if errors_after else None,
        "load_after_kill_s": plan.kill_s - plan.kill_at_s,
        "connections_at_kill": {str(k): v for k, v in conns.items()}, "client_inflight_at_kill": inflight_at_kill,
    }
    say(f"7 kill: {out['ok_after_kill']:,} calls answered after the kill; status after: {out['status_after_kill']}")
    # the supervisor's replacement: started, listening, answering
    kill_seen = killed_at / 1e9
    started = w2.wait_for(lambda: w2.count("worker_started") > n_started, 30.0)
    new_pid: int | None = None
    if started:
        new = w2.events("worker_started")[n_started]
        new_pid = int(new["worker_pid"])
        out["replacement_pid"] = new_pid
        out["replacement_started_after_s"] = new["_seen"] - kill_seen

        def listening() -> bool:
            return any(r.get("event") == "listening" and r.get("pid") == new_pid for r in w2.logs)

        if w2.wait_for(listening, 30.0):
            seen = next(r["_seen"] for r in w2.events("listening") if r.get("pid") == new_pid)
            out["replacement_listening_after_s"] = seen - kill_seen
        answered = False
        for _ in range(80):  # fresh connections until one lands on the new worker
            with contextlib.suppress(grpc.RpcError):
                if fresh_stats(address, TENANT)[0] == new_pid:
                    answered = True
                    break
        out["replacement_answered"] = answered
    out["replacement_started"] = started
    out["worker_died_logged"] = any(r.get("worker_pid") == victim for r in w2.events("worker_died"))
    time.sleep(0.5)
    left = kill_leftovers(victim_procs, grace_s=1.0)  # the kill was seconds ago already
    out["left_behind_by_victim"] = left
    w2.remember_processes()
    with contextlib.closing(sqlite3.connect(w2.store_path, timeout=10)) as db:
        out["integrity_check"] = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        row = db.execute("SELECT version FROM current WHERE tenant=?", (TENANT,)).fetchone()
        out["acme_version_in_store"] = None if row is None else int(row[0])
    say(f"7 kill: replacement {'started' if started else 'NOT started'}"
        + (f" (pid {new_pid}, listening after {out.get('replacement_listening_after_s', float('nan')):.2f} s, "
           f"answered: {out.get('replacement_answered')})" if started else "")
        + f"; integrity_check: {out['integrity_check']}")
    rep.add(7, f"calls answered after the kill ({out['load_after_kill_s']:g} s of {plan.kill_rate:,.0f}/s)",
            out["ok_after_kill"], "{:,.0f}", "> 0", lambda v: v > 0)
    errs = {k: v for k, v in out["status_after_kill"].items() if k != "OK"}
    rep.add(7, "errors after the kill: " + (", ".join(f"{k} {v}" for k, v in errs.items()) or "none"),
            sum(errs.values()), "{:,.0f}", "UNAVAILABLE only",
            lambda _: all(k == "UNAVAILABLE" for k in errs))
    rep.add(7, "  errors before the kill", sum(v for k, v in out["status_before_kill"].items() if k != "OK"),
            "{:,.0f}", "0", lambda v: v == 0)
    rep.add(7, "replacement worker started (1 = yes)", 1.0 if started else 0.0, "{:.0f}", "1", lambda v: v == 1)
    rep.add(7, "  replacement listening after s", out.get("replacement_listening_after_s"), "{:.2f}")
    rep.add(7, "replacement answered (1 = yes)", 1.0 if out.get("replacement_answered") else 0.0, "{:.0f}", "1",
            lambda v: v == 1)
    rep.add(7, "store PRAGMA integrity_check ok (1 = yes)", 1.0 if out["integrity_check"] == "ok" else 0.0,
            "{:.0f}", "1", lambda v: v == 1)
    rep.note(7, f"at the kill, the victim held {conns.get(victim, 0)} of the bench's {len(channels)} connections "
                f"(per worker: {conns}); {inflight_at_kill} call(s) were in flight in the client")
    if out["last_error_after_kill_s"] is not None:
        rep.note(7, f"errors after the kill ended {out['last_error_after_kill_s']:.3f} s after it")
    rep.add(7, "  processes of the killed worker still running after it (not a target)", len(left),
            "{:.0f}")
    if left:
        rep.note(7, f"{len(left)} process(es) of the killed worker outlived it (reparented to init, still running "
                    f"seconds later) and were killed by the bench: {left}. Its compile process "
                    "(server.worker.compiler.Compiler, a spawn ProcessPoolExecutor) does not exit when its worker dies")
    rep.sections["kill"] = out

