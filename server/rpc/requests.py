"""Reading request fields: the limits of what a request may carry and the checks that refuse the rest
(INVALID_ARGUMENT, saying which field).
"""

from __future__ import annotations

import time

import grpc

from callgate.v1 import admin_pb2, decisions_pb2
from engine import CoreDecision, codes
from engine.settings import E164, tenant_id_problem
from server.rpc.errors import RequestError

MAX_TEXT = 256            # longest number, user or tenant string a decision accepts
MAX_BATCH = 100_000       # rows per DecideBatch
MAX_WIDTH = 64            # bytes per text cell in a batch
MAX_EVENTS = 1_000        # events per CallEvents
MAX_DOCUMENT_FILES = 10   # images per document upload
LIST_NAMES = {admin_pb2.PatchBlacklistRequest.BLACKLIST: "blacklist",
              admin_pb2.PatchBlacklistRequest.OFFHOURS_BLACKLIST: "offhours_blacklist"}


KIND_NUMBERS = frozenset(decisions_pb2.CallEventRequest.Kind.values())


def _text(name: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{name} is {len(value)} characters long; at most {MAX_TEXT}")
    return value


def _tenant_arg(name: str, value: str) -> str:
    """An Admin request's tenant id, by the one rule for tenant ids (INVALID_ARGUMENT otherwise)."""
    problem = tenant_id_problem(value)
    if problem:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {problem}")
    return value


def _number_arg(name: str, value: str) -> str:
    if not E164.fullmatch(value):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{name} {value[:32]!r} is not an E.164 number (+ and 8 to 15 digits)")
    return value


def _now(at: int) -> int:
    """A request's instant: UTC seconds in the engine's range, or 0 for now; else INVALID_ARGUMENT."""
    if at and not codes.MIN_INSTANT <= at < codes.MAX_INSTANT:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "at must be UTC seconds in 2000-01-01 .. 2100-01-01, or 0 for now")
    return at if at else int(time.time())



def _input_error(d: CoreDecision) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{d.reason}: {codes.RULES[d.reason]}")
