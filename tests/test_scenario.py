"""The load test's world and plan (loadtest.world, loadtest.plan): valid documents, right expectations.

The expectations come from the pure-Python reference; the proof that they
are right is that the compiled core, which the server runs, gives the same
answers, and that the server's own encoding of those answers
(`server.rpc.messages.decision_message`) passes `check_reply`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.v1 import decisions_pb2
from engine import codes
from engine.decision import Decision
from engine.engine import Engine
from engine.reference import is_off_hours
from engine.settings import SettingsError, parse_settings
from loadtest.plan import (
    CATEGORIES,
    INBOUND_METHOD,
    MAX_TEXT,
    OUTBOUND_METHOD,
    Expected,
    MixSpec,
    Planned,
    breakdown,
    check_reply,
    describe,
    expected_from,
    plan,
    request_message,
    rpc_method,
    summary,
)
from loadtest.world import World, WorldSpec, build_world
from server.rpc.messages import decision_message

SMALL = WorldSpec(seed=7, tenants=3, numbers_per_tenant=30, blacklist=300, offhours_blacklist=60,
                  users_per_tenant=8, groups_per_tenant=3)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldSpec())


@pytest.fixture(scope="module")
def engine(world: World) -> Engine:
    eng = Engine()
    for tenant in world.tenants:
        eng.push(tenant.settings, 1)
    return eng


@pytest.fixture(scope="module")
def plans(world: World) -> list[Planned]:
    return plan(world, MixSpec(), 20_000, seed=3)


def core_disagreements(world: World, engine: Engine, plans: list[Planned]) -> list[str]:
    """Every planned request the compiled core (and the server's reply built from it) answers otherwise."""
    wrong = []
    for p in plans:
        snap = engine.snapshot(p.tenant)
        if p.kind == "inbound":
            d = snap.inbound(p.a, p.b, p.at)
        else:
            d = engine.outbound(p.tenant, p.a, p.b, p.at, world.balance)
        got = expected_from(d.to_decision(p.kind))
        reply = decision_message(d, p.kind, snap).SerializeToString()
        problem = check_reply(p, reply)
        if got != p.expected or problem is not None:
            wrong.append(f"{describe(p)}: core {got} ({problem})")
    return wrong


# -- the world ----------------------------------------------------------------


def test_default_world_builds_fast_and_every_document_is_valid() -> None:
    start = time.perf_counter()
    world = build_world(WorldSpec())
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"4 tenants x 10,000-entry blacklists took {elapsed:.2f} s"
    assert [t.id for t in world.tenants] == ["t0", "t1", "t2", "t3"]
    for tenant in world.tenants:
        # as the driver pushes it: serialized, then parsed whole
        parsed = parse_settings(json.dumps(tenant.document))
        assert parsed == tenant.settings
        assert len(tenant.document["blacklist"]) == 10_000
        assert len(tenant.document["offhours_blacklist"]) == 1_000


def test_world_shape(world: World) -> None:
    for tenant in world.tenants:
        s = tenant.settings
        by_number = {n.number: n for n in s.numbers}
        assert len(s.numbers) == 50 and len(tenant.numbers) == 50
        assert len({n.country for n in s.numbers}) >= 4
        zones = {n.schedule.timezone for n in s.numbers if n.schedule}
        assert len(zones) >= 5
        assert 0 < sum(n.schedule is None for n in s.numbers) < 10  # a few always open
        scheduled = [n.schedule for n in s.numbers if n.schedule]
        assert sum(1 for sch in scheduled if sch.holidays) > 0.7 * len(scheduled)
        assert {n.offhours_action.action for n in s.numbers} == {"reject", "voicemail", "forward"}
        assert tenant.pending == [n.number for n in s.numbers if n.requires_documents]
        assert len(tenant.pending) == 5
        # spec §2 rule 2: the default caller ID is usable and never the main number
        assert s.default_caller_id != s.main_number
        default = by_number[s.default_caller_id or ""]
        assert not default.requires_documents and not default.inbound_only
        # every listed user can call out (own caller ID or the default), with no pending caller ID
        users = {u.id: u for u in s.users}
        assert tenant.users and set(tenant.users) <= set(users)
        for uid in tenant.users:
            number = by_number[users[uid].caller_id or s.default_caller_id or ""]
            assert not number.requires_documents and not number.inbound_only
        assert len(s.lines) == 3 and all(len(line.rates) >= 4 for line in s.lines)
        assert s.backup is not None and s.pickup_code
        # no rental renews during a run (a renewal charge would move the balance outbound answers depend on)
        rentals = [n.rental for n in s.numbers if n.rental]
        assert rentals and all(r.renews_on.year == 2099 for r in rentals)
        # lists are disjoint from each other and from the clean callers
        black, off = set(tenant.blacklisted), set(tenant.offhours_listed)
        assert not black & off and not (black | off) & set(tenant.callers)
    # settings that vary by tenant are all seen
    assert {t.settings.block_anonymous for t in world.tenants} == {True, False}
    assert len({t.settings.chat_mode for t in world.tenants}) == 3
    # no number belongs to two tenants
    owned = [n for t in world.tenants for n in t.numbers]
    assert len(owned) == len(set(owned))


def test_world_is_deterministic() -> None:
    a, b, c = build_world(SMALL), build_world(SMALL), build_world(WorldSpec(**{**SMALL.__dict__, "seed": 8}))
    assert [t.document for t in a.tenants] == [t.document for t in b.tenants]
    assert [t.document for t in a.tenants] != [t.document for t in c.tenants]
    mix = MixSpec()
    assert plan(a, mix, 500, seed=1) == plan(b, mix, 500, seed=1)
    assert plan(a, mix, 500, seed=1) != plan(a, mix, 500, seed=2)
    assert plan(a, mix, 500, seed=1) != plan(c, mix, 500, seed=1)


def test_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="numbers_per_tenant"):
        build_world(WorldSpec(numbers_per_tenant=2))
    with pytest.raises(ValueError, match="opening_balance"):
        build_world(WorldSpec(opening_balance="1.005"))
    with pytest.raises(ValueError, match="add up"):
        plan(build_world(SMALL), MixSpec(blacklisted=0.6, anonymous=0.6), 10, seed=1)


def test_reference_is_cached_version_1_nothing_approved(world: World) -> None:
    ref = world.reference("t1")
    assert ref is world.reference("t1") and ref.version == 1 and not ref.approved
    with pytest.raises(KeyError):
        world.reference("nobody")


# -- the plan -----------------------------------------------------------------


def test_plan_is_fast(world: World) -> None:
    start = time.perf_counter()
    plan(world, MixSpec(), 20_000, seed=11)
    elapsed = time.perf_counter() - start
    assert elapsed < 4, f"20,000 requests planned in {elapsed:.2f} s"


def test_compiled_core_agrees_with_every_expectation(world: World, engine: Engine, plans: list[Planned]) -> None:
    wrong = core_disagreements(world, engine, plans)
    assert not wrong, "\n".join(wrong[:10])


def test_categories_produce_what_they_say(world: World, plans: list[Planned]) -> None:
    outcomes: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
    for p in plans:
        outcomes[p.category][codes.REASON_NAMES[p.expected.reason]] += 1
        assert p.at > 0 and p.kind == ("outbound" if p.category == "outbound" else "inbound")
    counts = {c: sum(v.values()) for c, v in outcomes.items()}
    assert all(counts[c] > 0 for c in CATEGORIES), counts
    assert set(outcomes["blacklisted"]) == {"BLACKLISTED"}
    assert set(outcomes["documents_pending"]) == {"DOCUMENTS_PENDING"}
    assert set(outcomes["unknown_called"]) == {"UNKNOWN_NUMBER"}
    # off hours happen naturally, and the off-hours list blocks only then
    assert outcomes["clean"]["OFF_HOURS"] > 0 and outcomes["clean"]["OK"] > 0
    assert set(outcomes["clean"]) == {"OK", "OFF_HOURS"}
    assert set(outcomes["offhours_listed"]) == {"OFF_HOURS_BLOCKED", "OK"}
    # withheld callers: refused where the tenant blocks them, answered as any call elsewhere
    assert outcomes["anonymous"]["ANONYMOUS"] > 0 and outcomes["anonymous"]["OK"] > 0
    assert set(outcomes["anonymous"]) <= {"ANONYMOUS", "OK", "OFF_HOURS"}
    # outbound: mostly allowed, some unrated destinations, the premium prefix the balance cannot pay
    out = outcomes["outbound"]
    assert out["OK"] > 0.7 * counts["outbound"] and out["NO_RATE"] > 0 and out["INSUFFICIENT_FUNDS"] > 0
    assert set(out) == {"OK", "NO_RATE", "INSUFFICIENT_FUNDS"}
    # the shares are about what the mix asks for
    inbound = sum(n for c, n in counts.items() if c != "outbound")
    assert 0.75 < inbound / len(plans) < 0.85
    assert 0.08 < counts["blacklisted"] / inbound < 0.12
    # the three off-hours actions all occur, and ROUTE replies name a group (a few route to none)
    verdicts = Counter(codes.VERDICTS[p.expected.verdict] for p in plans if p.category == "clean")
    assert verdicts["FORWARD"] and verdicts["VOICEMAIL"] and verdicts["REJECT"] and verdicts["ROUTE"]
    routed = [p.expected for p in plans if p.expected.verdict == decisions_pb2.ROUTE]
    assert sum(1 for e in routed if e.group) > 0.8 * len(routed)
    assert all(e.members for e in routed if e.group)
    # outbound durations: some limited by the balance, some by the cap on one call
    durations = {p.expected.max_duration_s for p in plans if p.expected.verdict == decisions_pb2.ALLOW}
    assert codes.MAX_CALL_SECONDS in durations and min(durations) < 3_600


def test_written_forms_and_edge_instants_occur(world: World, plans: list[Planned]) -> None:
    inbound = [p for p in plans if p.kind == "inbound" and p.category not in ("anonymous", "unknown_called")]
    written = [p for p in inbound if not p.a.startswith("+")]
    assert 0.05 * len(inbound) < len(written) < 0.15 * len(inbound)
    assert all(p.a.startswith(("0", "1")) for p in written)
    # every text fits the batch driver's fixed-width cells
    assert max(len(text.encode()) for p in plans for text in (p.a, p.b)) <= MAX_TEXT == 16
    # blacklisted callers written otherwise are still read as blacklisted (checked above); edges: some
    # instants sit within a minute of a change between working and off hours
    flips = 0
    for p in inbound:
        schedule = next(n.schedule for n in world.tenant(p.tenant).settings.numbers if n.number == p.b)
        if schedule is not None and is_off_hours(schedule, p.at) != is_off_hours(schedule, p.at + 61):
            flips += 1
    assert flips > 0.01 * len(inbound)


def test_empty_lists_and_no_pending_numbers_fall_back_to_clean() -> None:
    spec = WorldSpec(seed=3, tenants=2, numbers_per_tenant=6, blacklist=0, offhours_blacklist=0,
                     users_per_tenant=2, groups_per_tenant=1, documents_share=0)
    world = build_world(spec)
    assert all(not t.pending and not t.blacklisted for t in world.tenants)
    plans = plan(world, MixSpec(), 400, seed=1)
    cats = Counter(p.category for p in plans)
    assert not cats["blacklisted"] and not cats["offhours_listed"] and not cats["documents_pending"]
    assert cats["clean"] and cats["outbound"]


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), plan_seed=st.integers(0, 1000),
       share=st.sampled_from([0.0, 0.1, 0.5]))
def test_core_agrees_on_random_worlds(seed: int, plan_seed: int, share: float) -> None:
    spec = WorldSpec(seed=seed, tenants=2, numbers_per_tenant=12, blacklist=200, offhours_blacklist=40,
                     users_per_tenant=5, groups_per_tenant=2, documents_share=share, opening_balance="3.00")
    world = build_world(spec)
    eng = Engine()
    for tenant in world.tenants:
        assert parse_settings(tenant.document) == tenant.settings
        eng.push(tenant.settings, 1)
    wrong = core_disagreements(world, eng, plan(world, MixSpec(edge_instants=0.5, written_forms=0.3), 300,
                                                seed=plan_seed))
    assert not wrong, "\n".join(wrong[:10])


# -- the wire -----------------------------------------------------------------


def _reply(e: Expected, **changes: object) -> bytes:
    fields: dict[str, object] = {
        "verdict": e.verdict, "reason": e.reason, "sip_status": e.sip_status, "version": e.version,
        "chat_mode": e.chat_mode, "lead_trigger": e.lead_trigger, "target": e.target, "line": e.line,
        "group": e.group, "members": list(e.members), "caller_id": e.caller_id, "destination": e.destination,
        "rate_per_minute": e.rate_per_minute, "increment_s": e.increment_s, "max_duration_s": e.max_duration_s,
    }
    fields.update(changes)
    return decisions_pb2.Decision(**fields).SerializeToString()  # type: ignore[arg-type]


def test_check_reply(plans: list[Planned]) -> None:
    route = next(p for p in plans if p.expected.verdict == decisions_pb2.ROUTE and p.expected.group)
    allow = next(p for p in plans if p.expected.verdict == decisions_pb2.ALLOW)
    for p in (route, allow):
        assert check_reply(p, _reply(p.expected)) is None
        assert check_reply(p, decisions_pb2.Decision.FromString(_reply(p.expected))) is None
    # an echo the server sends only with explain is not checked
    assert check_reply(route, _reply(route.expected, caller=route.a, rule="words")) is None

    wrong = check_reply(route, _reply(route.expected, verdict=decisions_pb2.FORWARD))
    assert wrong == "verdict FORWARD != expected ROUTE"
    wrong = check_reply(route, _reply(route.expected, group="elsewhere", members=["x"]))
    assert wrong is not None and wrong.startswith("group 'elsewhere' != expected ") and "; members ['x']" in wrong
    wrong = check_reply(allow, _reply(allow.expected, rate_per_minute="0.99", max_duration_s=1))
    assert wrong is not None and "rate_per_minute '0.99'" in wrong and "max_duration_s 1 != expected" in wrong
    # a reply that is not a Decision, and the version the driver's push got
    assert (check_reply(route, b"\xff\xff") or "").startswith("reply is not a Decision message")
    assert check_reply(route, _reply(route.expected, version=4), version=4) is None
    assert check_reply(route, _reply(route.expected)) is None
    assert check_reply(route, _reply(route.expected), version=4) == "version 1 != expected 4"


def test_request_messages(plans: list[Planned]) -> None:
    inbound = next(p for p in plans if p.kind == "inbound")
    outbound = next(p for p in plans if p.kind == "outbound")
    assert rpc_method(inbound) == INBOUND_METHOD == "/callgate.v1.Decisions/Inbound"
    assert rpc_method(outbound) == OUTBOUND_METHOD == "/callgate.v1.Decisions/Outbound"
    r = decisions_pb2.InboundRequest.FromString(request_message(inbound))
    assert (r.tenant, r.caller, r.called, r.at, r.explain) == (inbound.tenant, inbound.a, inbound.b, inbound.at,
                                                                False)
    o = decisions_pb2.OutboundRequest.FromString(request_message(outbound))
    assert (o.tenant, o.user, o.destination, o.at) == (outbound.tenant, outbound.a, outbound.b, outbound.at)


def test_expected_from_matches_the_proto_numbering() -> None:
    for i, name in enumerate(codes.VERDICTS[1:], start=1):
        assert decisions_pb2.Verdict.Name(i) == name
    for i, name in enumerate(codes.REASON_NAMES):
        assert decisions_pb2.Reason.Name(i) == name
    with pytest.raises(ValueError):  # an input error is a gRPC error, not a reply to expect
        expected_from(Decision("ERROR", "INVALID_CALLER", 400, 1))


def test_summary_and_breakdown(plans: list[Planned]) -> None:
    s = summary(plans)
    assert sum(v for k, v in s.items() if k.startswith("category:")) == len(plans)
    assert sum(v for k, v in s.items() if k.startswith("verdict:")) == len(plans)
    assert s["reason:BLACKLISTED"] == s["category:blacklisted"]
    b = breakdown(plans)
    assert b["documents_pending"] == {"REJECT DOCUMENTS_PENDING": s["category:documents_pending"]}
    assert Decimal(WorldSpec().opening_balance) == Decimal("50.00")


def test_documents_are_refused_when_broken(world: World) -> None:
    # the generator's documents are valid because they are written right, not because anything is lax
    doc = dict(world.tenants[0].document)
    doc["default_caller_id"] = doc["main_number"]
    with pytest.raises(SettingsError, match="main_number"):
        parse_settings(doc)
