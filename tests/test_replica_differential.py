"""Local answers equal the server's: a random world pushed to a server, a replica following it through more than
20 pushes and patches, and 10,000 random inbound decisions answered from the replica's files and over RPC at the
same instant: no disagreement, the same versions."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from engine import replica
from loadtest.process import free_port
from loadtest.world import WorldSpec, build_world
from server.rpc.messages import decision_message

from .serving import ReplicaProcess as Replica
from .serving import Server, wait_for
from .test_replica import in_force, in_step

STEPS = 24
DECISIONS = 10_000
SPEC = WorldSpec(seed=11, tenants=3, numbers_per_tenant=24, blacklist=3_000, offhours_blacklist=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("data"), seed=None, listen=f"127.0.0.1:{free_port()}", workers=2)
    yield srv
    assert srv.stop() == 0


def _changed(rnd: random.Random, doc: dict[str, Any], spare: list[str]) -> dict[str, Any]:
    """The document with one random change of the kind admins make: lists, hours, actions, status, blocking."""
    doc = copy.deepcopy(doc)
    kind = rnd.choice(("blacklist", "offhours", "action", "status", "anonymous", "schedule"))
    if kind == "blacklist":
        doc["blacklist"] = rnd.sample(doc["blacklist"], len(doc["blacklist"]) * 9 // 10) + rnd.sample(spare, 50)
    elif kind == "offhours":
        doc["offhours_blacklist"] = rnd.sample(spare, 40) + doc["offhours_blacklist"][:100]
    elif kind == "action":
        entry = rnd.choice(doc["numbers"])
        entry["offhours_action"] = rnd.choice([{"action": "reject"}, {"action": "voicemail"}])
    elif kind == "status":
        doc["status"] = "active" if doc["status"] != "active" else rnd.choice(("suspended", "active"))
    elif kind == "anonymous":
        doc["block_anonymous"] = not doc.get("block_anonymous", False)
    else:   # a number open around the clock from now on
        rnd.choice(doc["numbers"]).pop("schedule", None)
    return doc


def _questions(rnd: random.Random, tenant: Any, doc: dict[str, Any], n: int) -> list[tuple[str, str, int]]:
    pool = [*doc["blacklist"][:200], *doc["offhours_blacklist"][:100], *tenant.callers[:200]]
    odd = ["anonymous", "", "+", "12ab", "+999", "0" * 30]
    own = [e["number"] for e in doc["numbers"]]
    out = []
    for _ in range(n):
        caller = rnd.choice(pool) if rnd.random() < 0.9 else rnd.choice(odd)
        if caller.startswith("+1") and rnd.random() < 0.3:
            caller = caller[2:]                          # a national form, as a careless proxy sends it
        called = rnd.choice(own) if rnd.random() < 0.95 else "+14155559999"
        at = 1_767_225_600 + rnd.randrange(365 * 86_400)   # any instant of 2026
        out.append((caller, called, at))
    return out


def _compare(local: replica.LocalDecisions, decisions: Any, tenant: str,
             questions: list[tuple[str, str, int]]) -> int:
    """The questions answered both ways; returns the number of disagreements (each one printed)."""
    held = local.snapshot(tenant)
    assert held is not None
    snap, version, _ = held
    calls: list[tuple[tuple[str, str, int], Any, Future[Any]]] = []
    for caller, called, at in questions:
        answer = local.inbound(tenant, caller, called, at)
        assert answer is not None and answer.action == "decide" and answer.decision is not None
        assert answer.version == version
        future = decisions.Inbound.future(decisions_pb2.InboundRequest(
            tenant=tenant, caller=caller, called=called, at=at), timeout=60)
        calls.append(((caller, called, at), answer.decision, future))
    wrong = 0
    for question, decision, future in calls:
        try:
            remote: Any = future.result()
        except grpc.RpcError as exc:
            remote = exc.code()
        expected: Any = (grpc.StatusCode.INVALID_ARGUMENT if decision.verdict == "ERROR"
                         else decision_message(decision, "inbound", snap))
        if remote != expected:
            wrong += 1
            print(f"disagreement on {tenant} {question}: local {expected} remote {remote}")
        elif not isinstance(remote, grpc.StatusCode) and remote.version != version:
            wrong += 1
            print(f"version differs on {tenant} {question}: local {version} remote {remote.version}")
    return wrong


def test_local_decisions_equal_the_servers_through_pushes_and_patches(server: Server, tmp_path: Path) -> None:
    world = build_world(SPEC)
    rnd = random.Random(2026)
    spare = [c for t in world.tenants for c in t.callers[200:]]
    docs = {t.id: copy.deepcopy(t.document) for t in world.tenants}
    with server.channel() as channel:
        decisions, admin = decisions_pb2_grpc.DecisionsStub(channel), admin_pb2_grpc.AdminStub(channel)
        for doc in docs.values():
            admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()), timeout=60)
        rep = Replica(server.address, tmp_path / "replica")
        local = replica.LocalDecisions(rep.directory, recheck_s=0.0)
        asked = wrong = 0
        try:
            for step in range(STEPS):
                tenant = rnd.choice(world.tenants)
                if step % 3 == 2:   # a patch: numbers on or off the blacklist, no new document
                    listed = docs[tenant.id]["blacklist"]
                    gone, added = rnd.sample(listed, 20), rnd.sample(spare, 20)
                    admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(tenant=tenant.id, add=added, remove=gone),
                                         timeout=60)
                    docs[tenant.id]["blacklist"] = [n for n in listed if n not in set(gone)] + added
                else:
                    docs[tenant.id] = _changed(rnd, docs[tenant.id], spare)
                    admin.PushSettings(admin_pb2.PushSettingsRequest(
                        document=json.dumps(docs[tenant.id]).encode()), timeout=60)
                wait_for(lambda: in_step(rep.directory, admin), timeout=20)
                n = DECISIONS // STEPS + (DECISIONS % STEPS if step == STEPS - 1 else 0)
                t = rnd.choice(world.tenants)
                wrong += _compare(local, decisions, t.id, _questions(rnd, t, docs[t.id], n))
                asked += n
            versions = in_force(admin)
            assert {t: v for t, (v, _) in replica.held(rep.directory).items()} == versions
            assert sum(versions.values()) >= len(world.tenants) + STEPS   # every step made a version
        finally:
            local.close()
            assert rep.stop() == 0
    assert asked == DECISIONS and wrong == 0
