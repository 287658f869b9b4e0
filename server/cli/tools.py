"""`callgate grpc list|describe|health`: what any gRPC client can ask a callgate server, with the stock
clients (grpcio-reflection's descriptor database, grpcio-health-checking), through the command's usual
channel (TLS, token).  Reflection and health need no token."""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli import CliError
from server.cli.grammar import print_json
from server.cli.rpc import channel, guarded


def _database(args: argparse.Namespace) -> Any:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    return ProtoReflectionDescriptorDatabase(channel(args))


def cmd_grpc_list(args: argparse.Namespace) -> int:
    db = _database(args)
    services = sorted(guarded(args, db.get_services))
    if not print_json(args, {"services": services}):
        print("\n".join(services))
    return 0


def cmd_grpc_describe(args: argparse.Namespace) -> int:
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(_database(args))
    name = args.name
    service = method = None
    try:
        service = guarded(args, lambda: pool.FindServiceByName(name))
    except (KeyError, CliError):
        service_name, _, method_name = name.rpartition(".")
        try:
            service = guarded(args, lambda: pool.FindServiceByName(service_name))
            method = service.methods_by_name[method_name]
        except (KeyError, CliError):
            raise CliError(f"{name!r} is not a service or method of callgate at {args.server} "
                           "(`callgate grpc list` shows the services)") from None
    methods = [method] if method is not None else list(service.methods)
    described = [{"method": f"{service.full_name}.{m.name}",
                  "request": m.input_type.full_name, "reply": m.output_type.full_name,
                  "client_streaming": m.client_streaming, "server_streaming": m.server_streaming,
                  "request_fields": [f.name for f in m.input_type.fields]} for m in methods]
    if print_json(args, {"service": service.full_name, "methods": described}):
        return 0
    print(f"service {service.full_name}")
    for m in described:
        stream_in = "stream " if m["client_streaming"] else ""
        stream_out = "stream " if m["server_streaming"] else ""
        print(f"  rpc {m['method'].rsplit('.', 1)[1]}({stream_in}{m['request']}) returns ({stream_out}{m['reply']})")
        if method is not None:
            print(f"    request fields: {', '.join(m['request_fields'])}")
    return 0


def cmd_grpc_health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel(args))
    reply = guarded(args, lambda: stub.Check(health_pb2.HealthCheckRequest(service=args.service),
                                             timeout=args.timeout))
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if not print_json(args, {"service": args.service, "status": status}):
        print(f"{args.service or '(the server)'}: {status}")
    return 0 if status == "SERVING" else 1


def add_grpc_commands(sub: Any) -> None:
    grpc_ = sub.add_parser("grpc", help="what stock gRPC clients see: services, methods, health")
    gsub = grpc_.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = gsub.add_parser("list", help="the services the server offers (server reflection)")
    ls.set_defaults(run=cmd_grpc_list)
    de = gsub.add_parser("describe", help="a service's methods, or one method's request and reply")
    de.add_argument("name", metavar="SERVICE[.METHOD]", help="e.g. callgate.v1.Decisions or "
                                                               "callgate.v1.Decisions.Inbound")
    de.set_defaults(run=cmd_grpc_describe)
    he = gsub.add_parser("health", help="grpc.health.v1 Check: exit 0 when SERVING, 1 when not")
    he.add_argument("service", nargs="?", default="",
                    help="'' (the server), callgate.v1.Decisions, callgate.v1.Admin or callgate.v1.Store")
    he.set_defaults(run=cmd_grpc_health)
