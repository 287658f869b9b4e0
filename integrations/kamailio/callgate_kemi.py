"""callgate for Kamailio: a KEMI routing script for app_python3 (Kamailio 5.6, Python 3.11).

Each INVITE asks callgate (gRPC, one channel per Kamailio worker, made after
the fork) and acts on the decision:

- inbound (the From user is a phone number, the R-URI user one of the tenant's
  numbers): REJECT -> the suggested SIP status with a Reason header; ROUTE ->
  relayed to CALLGATE_ROUTE_URI (the PBX that rings the queue group, told the
  group in X-Callgate-Group); FORWARD -> relayed there with the R-URI user set
  to the target number (X-Callgate-Line says which line bills the leg);
  VOICEMAIL -> relayed with the R-URI user `voicemail`;
- outbound (the From user is a callgate user id): ALLOW -> relayed with
  P-Asserted-Identity set to the chosen caller ID; DENY -> the SIP status;
- the tenant's pickup code dialled (R-URI user such as *8): INTERCEPT ->
  relayed with X-Callgate-Intercept: <call id> for the PBX to bridge, else 404.

Replies and the dialog end feed CallEvent: 180/183 -> RINGING, 200 ->
ANSWERED, BYE -> ENDED (the Call-ID is callgate's call id), so pickup, CRM
leads and billing work for calls through Kamailio.  The user a call rings at
or is answered by comes from the PBX's X-Callgate-User reply header, else the
first member of the queue group.

Failure policy (CALLGATE_FAILURE), for callgate unreachable or later than the
deadline (CALLGATE_DEADLINE_MS, default 50): `closed` (default) answers 503;
`open` forwards calls on a tenant's backup line to its backup number, from
the failover table `callgate export failover` writes (CALLGATE_FAILOVER), so
that rule 3 of the spec holds while callgate itself is down; other calls get
503.  Events that cannot be sent are logged and dropped (the proxy never
waits on them).

Environment: CALLGATE_TARGET (127.0.0.1:50051), CALLGATE_TENANT (the tenant
when the failover table does not name one for the number), CALLGATE_ROUTE_URI
(sip:127.0.0.1:5080), CALLGATE_TLS_CA (the CA's PEM: talk TLS to callgate),
CALLGATE_TOKEN (a `proxy` token for a server with --auth),
CALLGATE_PYTHONPATH (folders with grpcio and the
`callgate` package, ':'-separated, put in front of sys.path), CALLGATE_BYPASS=1
(relay everything without asking: the baseline of the SIP benchmark).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import KSR  # provided by Kamailio's app_python3 (no stubs: mypy ignores missing imports)

for _folder in reversed([p for p in os.environ.get("CALLGATE_PYTHONPATH", "").split(":") if p]):
    sys.path.insert(0, _folder)

TARGET = os.environ.get("CALLGATE_TARGET", "127.0.0.1:50051")
DEFAULT_TENANT = os.environ.get("CALLGATE_TENANT", "")
DEADLINE_S = int(os.environ.get("CALLGATE_DEADLINE_MS", "50")) / 1000
FAILURE = os.environ.get("CALLGATE_FAILURE", "closed")
ROUTE_URI = os.environ.get("CALLGATE_ROUTE_URI", "sip:127.0.0.1:5080")
FAILOVER_FILE = os.environ.get("CALLGATE_FAILOVER", "")
TLS_CA = os.environ.get("CALLGATE_TLS_CA", "")      # PEM of the CA that signed callgate's certificate: TLS
TOKEN = os.environ.get("CALLGATE_TOKEN", "")        # a `proxy` token for a server with --auth
METADATA = (("authorization", f"Bearer {TOKEN}"),) if TOKEN else None
# a plain relay that never asks callgate: the baseline for measuring what callgate adds to the proxy
BYPASS = os.environ.get("CALLGATE_BYPASS", "") == "1"
PHRASES = {403: "Forbidden", 404: "Not Found", 433: "Anonymity Disallowed", 480: "Temporarily Unavailable",
           402: "Payment Required", 503: "Service Unavailable", 603: "Decline"}


def mod_init() -> Any:
    return kamailio()


def load_failover() -> dict[str, Any]:
    if not FAILOVER_FILE:
        return {"numbers": {}, "tenants": {}}
    try:
        with open(FAILOVER_FILE, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        KSR.err(f"callgate: failover table {FAILOVER_FILE} unreadable: {exc}\n")
        return {"numbers": {}, "tenants": {}}


class kamailio:
    def __init__(self) -> None:
        self.failover = load_failover()
        self.decisions: Any = None
        self.pb: Any = None

    def child_init(self, rank: int) -> int:
        # gRPC after the fork, in every worker: a channel must not cross a fork
        import grpc

        from callgate.v1 import decisions_pb2, decisions_pb2_grpc

        self.grpc, self.pb = grpc, decisions_pb2
        if TLS_CA:
            with open(TLS_CA, "rb") as handle:
                channel = grpc.secure_channel(TARGET, grpc.ssl_channel_credentials(root_certificates=handle.read()))
        else:
            channel = grpc.insecure_channel(TARGET)
        self.decisions = decisions_pb2_grpc.DecisionsStub(channel)
        return 0

    # -- helpers -----------------------------------------------------------------------------

    def tenant_of(self, number: str) -> str:
        return self.failover.get("numbers", {}).get(number, {}).get("tenant") or DEFAULT_TENANT

    def reply(self, code: int, reason: str, cause: str = "") -> int:
        if cause:
            KSR.hdr.append_to_reply(f'Reason: SIP;cause={code};text="{cause}"\r\n')
        KSR.sl.send_reply(code, reason)
        return 1

    def relay(self, events: bool = True) -> int:
        """Relay statefully; with `events`, its replies feed CallEvent (ksr_onreply_invite)."""
        if events:
            KSR.tm.t_on_reply("ksr_onreply_invite")
        return 1 if KSR.tm.t_relay() > 0 else self.reply(500, "Relay Failed")

    def event(self, tenant: str, kind: int, user: str = "", **fields: Any) -> None:
        try:
            self.decisions.CallEvent(self.pb.CallEventRequest(tenant=tenant, call_id=KSR.pv.get("$ci"), kind=kind,
                                                              user=user, **fields), timeout=DEADLINE_S * 4,
                                     metadata=METADATA)
        except self.grpc.RpcError as exc:  # a lost event is logged, never waited on
            KSR.warn(f"callgate: CallEvent {kind} for {KSR.pv.get('$ci')}: {exc.code().name}\n")

    # -- routes ------------------------------------------------------------------------------

    def ksr_request_route(self, msg: Any) -> int:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            return self.reply(483, "Too Many Hops")
        method = KSR.pv.get("$rm")
        if method == "OPTIONS":
            return self.reply(200, "OK")
        if KSR.siputils.has_totag() > 0:
            return self.in_dialog(method)
        if method in ("CANCEL", "ACK"):  # only for a transaction of ours
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return 1
        if method != "INVITE":
            return self.reply(405, "Method Not Allowed")
        KSR.rr.record_route()
        if BYPASS:
            KSR.setdsturi(ROUTE_URI)
            return self.relay(events=False)
        caller, called = KSR.pv.get("$fU") or "", KSR.pv.get("$rU") or ""
        tenant = self.tenant_of(called)
        KSR.pv.sets("$avp(cg_tenant)", tenant)
        KSR.pv.sets("$avp(cg_called)", called)
        if called.startswith(("*", "#")):
            return self.pickup(tenant, caller, called)
        if caller and not caller.lstrip("+").isdigit() and caller != "anonymous":
            return self.outbound(self.tenant_of(caller), caller, called)
        return self.inbound(tenant, caller, called)

    def ask(self, method: str, request: Any) -> Any:
        """One decision within the deadline; None when callgate is unreachable, late or refuses the input."""
        try:
            return getattr(self.decisions, method)(request, timeout=DEADLINE_S, metadata=METADATA)
        except self.grpc.RpcError as exc:
            KSR.warn(f"callgate: {method} for {KSR.pv.get('$ci')}: {exc.code().name} {exc.details()}\n")
            return None

    def inbound(self, tenant: str, caller: str, called: str) -> int:
        d = self.ask("Inbound", self.pb.InboundRequest(tenant=tenant, caller=caller, called=called))
        if d is None:
            return self.failed(tenant, called)
        verdict = self.pb.Verdict.Name(d.verdict)
        reason = self.pb.Reason.Name(d.reason)
        KSR.pv.sets("$avp(cg_dir)", "inbound")
        if verdict == "REJECT":
            return self.reply(d.sip_status or 480, PHRASES.get(d.sip_status, "Rejected"), reason)
        KSR.setdsturi(ROUTE_URI)
        if verdict == "ROUTE":
            KSR.hdr.append(f"X-Callgate-Group: {d.group}\r\n")
            KSR.pv.sets("$avp(cg_user)", d.members[0] if d.members else d.group)
        elif verdict == "FORWARD":
            KSR.setuser(d.target)
            KSR.pv.sets("$avp(cg_called)", d.target)
            KSR.hdr.append(f"X-Callgate-Line: {d.line}\r\n")
            KSR.pv.sets("$avp(cg_dir)", "forwarded")
            KSR.pv.sets("$avp(cg_line)", d.line)
            KSR.pv.sets("$avp(cg_user)", "forward")
        elif verdict == "VOICEMAIL":
            KSR.setuser("voicemail")
            KSR.pv.sets("$avp(cg_user)", "voicemail")
        return self.relay()

    def outbound(self, tenant: str, user: str, destination: str) -> int:
        d = self.ask("Outbound", self.pb.OutboundRequest(tenant=tenant, user=user, destination=destination))
        if d is None:
            return self.reply(503, "Service Unavailable", "callgate unavailable")
        if self.pb.Verdict.Name(d.verdict) != "ALLOW":
            return self.reply(d.sip_status or 403, PHRASES.get(d.sip_status, "Forbidden"),
                              self.pb.Reason.Name(d.reason))
        KSR.hdr.remove("P-Asserted-Identity")
        KSR.hdr.append(f"P-Asserted-Identity: <sip:{d.caller_id}@{KSR.pv.get('$fd')}>\r\n")
        KSR.pv.sets("$avp(cg_dir)", "outbound")
        KSR.pv.sets("$avp(cg_user)", user)
        KSR.setdsturi(ROUTE_URI)
        return self.relay()

    def pickup(self, tenant: str, user: str, dialed: str) -> int:
        d = self.ask("Pickup", self.pb.PickupRequest(tenant=tenant, user=user, dialed=dialed))
        if d is None:
            return self.reply(503, "Service Unavailable", "callgate unavailable")
        if self.pb.Verdict.Name(d.verdict) != "INTERCEPT":
            return self.reply(404, "Not Found", self.pb.Reason.Name(d.reason))
        KSR.hdr.append(f"X-Callgate-Intercept: {d.call_id}\r\n")
        KSR.setdsturi(ROUTE_URI)
        return self.relay(events=False)

    def failed(self, tenant: str, called: str) -> int:
        """callgate unreachable or late: the failure policy."""
        if FAILURE == "open":
            entry = self.failover.get("numbers", {}).get(called, {})
            backup = self.failover.get("tenants", {}).get(entry.get("tenant", tenant), {}).get("backup")
            if backup and entry.get("line") == backup.get("line"):
                KSR.info(f"callgate: unavailable, forwarding {KSR.pv.get('$ci')} to the backup {backup['number']}\n")
                KSR.setuser(backup["number"])
                KSR.hdr.append(f"X-Callgate-Line: {backup['line']}\r\n")
                KSR.setdsturi(ROUTE_URI)
                return self.relay(events=False)
        return self.reply(503, "Service Unavailable", "callgate unavailable")

    def in_dialog(self, method: str) -> int:
        if KSR.rr.loose_route() > 0:
            if method == "BYE":
                tenant = self.tenant_of(KSR.pv.get("$tU") or "") or self.tenant_of(KSR.pv.get("$fU") or "")
                self.event(tenant, self.pb.CallEventRequest.ENDED)
            KSR.tm.t_relay()
            return 1
        if method == "ACK" and KSR.tm.t_check_trans() > 0:
            KSR.tm.t_relay()
            return 1
        return self.reply(404, "Not Here")

    def ksr_onreply_invite(self, msg: Any) -> int:
        status = int(KSR.pv.get("$rs") or 0)
        if status not in (180, 183, 200) or KSR.pv.get("$rm") != "INVITE":
            return 1
        tenant = KSR.pv.get("$avp(cg_tenant)") or DEFAULT_TENANT
        user = KSR.pv.get("$hdr(X-Callgate-User)") or KSR.pv.get("$avp(cg_user)") or "unknown"
        if status == 200:
            self.event(tenant, self.pb.CallEventRequest.ANSWERED, user)
        else:
            self.event(tenant, self.pb.CallEventRequest.RINGING, user, direction=KSR.pv.get("$avp(cg_dir)") or
                       "inbound", caller=KSR.pv.get("$fU") or "", called=KSR.pv.get("$avp(cg_called)") or "",
                       line=KSR.pv.get("$avp(cg_line)") or "")
        return 1

    def ksr_reply_route(self, msg: Any) -> int:
        return 1

    def ksr_onsend_route(self, msg: Any) -> int:
        return 1
