# The compiled decision core.
#
# A CoreSnapshot is one tenant's settings compiled into flat arrays (built by
# engine.snapshot, kept alive by the snapshot) and a C struct of pointers into
# them.  Decisions are `nogil` C functions over that struct: no Python object
# is touched between reading the input bytes and writing the Out struct.
# The semantics are those of docs/decisions.md, which engine/reference.py
# implements in plain Python; tests hold the two to each other.
#
# The codes and the C layout are the contract in engine/_core.pxd; the Python
# face is engine/_core.pyi (and engine/__init__, which the rest of the code
# imports).  This file holds the module's constants and the dtypes that mirror
# the layout; the code is in sections, compiled as one module by `include`:
#
#   _core_tables.pxi       byte loads, hashes, the number and user hash tables
#   _core_roaring.pxi      roaring64 bitmaps read in place, their derived indexes
#   _core_numbers.pxi      reading phone numbers (E.164, in a country, callers)
#   _core_hours_rates.pxi  off hours (zones, weekly minutes, holidays), the rate trie
#   _core_decide.pxi       the decisions: inbound, outbound, pickup (nogil C)
#   _core_decision.pxi     CoreDecision, a decision as Python sees it
#   _core_guard.pxi        a decision over a mapped file that faults (SIGBUS) fails, the process lives
#   _core_validate.pxi     the checks a snapshot passes before it is bound
#   _core_snapshot.pxi     CoreSnapshot: binding, single decisions, batches, lists
#   _core_local.pxi        LocalFast: a replica worker's inbound decision while in step; LocalAnswer

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy, memset


cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil
    int __builtin_popcountll(unsigned long long) nogil

cdef extern from *:
    """
    #ifndef CALLGATE_DEBUG
    #define CALLGATE_DEBUG 0
    #endif
    """
    const int CALLGATE_DEBUG

import numpy as np

cimport numpy as cnp

from datetime import date as _date
from decimal import Decimal

from . import codes
from .decision import Decision

cnp.import_array()

cdef int64_t MIN_INSTANT = codes.MIN_INSTANT
cdef int64_t ZONE_BUCKETS = ((codes.MAX_INSTANT - codes.MIN_INSTANT) >> ZONE_BUCKET_BITS) + 1
cdef int64_t MAX_INSTANT = codes.MAX_INSTANT
cdef int64_t MAX_BALANCE_MICRO = 1000000000000000  # 1e9 currency units
cdef uint64_t EMPTY_KEY = 0xFFFFFFFFFFFFFFFFULL     # no key: values are < 2^64 >> 16

# the enums of the contract (engine/_core.pxd) are engine.codes' tables, whole
assert MAX_CALL_SECONDS == codes.MAX_CALL_SECONDS
assert {"ERROR": V_ERROR, "ROUTE": V_ROUTE, "FORWARD": V_FORWARD, "VOICEMAIL": V_VOICEMAIL, "REJECT": V_REJECT,
        "ALLOW": V_ALLOW, "DENY": V_DENY, "INTERCEPT": V_INTERCEPT, "NO_PICKUP": V_NO_PICKUP} == codes.VERDICT_CODE
assert {"OK": R_OK, "BLACKLISTED": R_BLACKLISTED, "OFF_HOURS_BLOCKED": R_OFF_HOURS_BLOCKED,
        "OFF_HOURS": R_OFF_HOURS, "DOCUMENTS_PENDING": R_DOCUMENTS_PENDING, "UNKNOWN_NUMBER": R_UNKNOWN_NUMBER,
        "ANONYMOUS": R_ANONYMOUS, "ACCOUNT_UNAVAILABLE": R_ACCOUNT_UNAVAILABLE,
        "INSUFFICIENT_FUNDS": R_INSUFFICIENT_FUNDS, "NO_RATE": R_NO_RATE, "NO_CALLER_ID": R_NO_CALLER_ID,
        "INVALID_CALLER": R_INVALID_CALLER, "INVALID_CALLED": R_INVALID_CALLED,
        "INVALID_DESTINATION": R_INVALID_DESTINATION, "INVALID_TIME": R_INVALID_TIME,
        "INVALID_USER": R_INVALID_USER, "NOT_PICKUP_CODE": R_NOT_PICKUP_CODE, "NO_RINGING_CALL": R_NO_RINGING_CALL,
        "INVALID_BALANCE": R_INVALID_BALANCE, "DOCUMENTS_REJECTED": R_DOCUMENTS_REJECTED} == codes.REASON_CODE
assert (FMT_AUTO, FMT_E164, FMT_INTERNATIONAL, FMT_NATIONAL) == tuple(
    codes.CALLER_FORMATS.index(name) for name in ("auto", "e164", "international", "national"))

_VERDICTS = codes.VERDICTS
_REASONS = codes.REASON_NAMES
_SIP = tuple(sip for _, sip in codes.REASONS)

cdef uint16_t SIP[32]
assert len(_SIP) <= 32
for _i, _s in enumerate(_SIP):
    SIP[_i] = _s


include "_core_tables.pxi"
include "_core_roaring.pxi"
include "_core_numbers.pxi"
include "_core_hours_rates.pxi"
include "_core_decide.pxi"
include "_core_decision.pxi"
include "_core_guard.pxi"
include "_core_validate.pxi"
include "_core_snapshot.pxi"
include "_core_local.pxi"


# numpy dtypes with the layout of the contract's structs (engine/_core.pxd), for engine.snapshot and batches
COUNTRY_DTYPE = np.dtype([
    ("cc", np.uint64), ("cc_len", np.int32), ("ip_len", np.int32), ("np_len", np.int32),
    ("lengths", np.uint32), ("ip", "S8"), ("np", "S8"),
], align=True)
assert COUNTRY_DTYPE.itemsize == sizeof(Country)
INBOUND_DTYPE = np.dtype([("target", np.uint64), ("line", np.int32), ("group", np.int32), ("sip", np.uint16),
                          ("verdict", np.uint8), ("reason", np.uint8)], align=True)
assert INBOUND_DTYPE.itemsize == sizeof(InRow)
OUTBOUND_DTYPE = np.dtype([("max_duration", np.int64), ("line", np.int32), ("callerid", np.int32),
                           ("rate", np.int32), ("sip", np.uint16), ("verdict", np.uint8), ("reason", np.uint8)],
                          align=True)
assert OUTBOUND_DTYPE.itemsize == sizeof(OutRow)
SLOT_DTYPE = np.dtype([("key", np.uint64), ("index", np.int32), ("pad", np.int32)])
assert SLOT_DTYPE.itemsize == sizeof(Slot)
CONTAINER_DTYPE = np.dtype([("key", np.uint64), ("off", np.uint32), ("meta", np.uint32)])
assert CONTAINER_DTYPE.itemsize == sizeof(Container)

# layout sizes for engine.snapshot's compiler
WEEK_WORDS_ = WEEK_WORDS
ZONE_BUCKETS_ = ZONE_BUCKETS
MIN_INSTANT_ = MIN_INSTANT
ZONE_BUCKET_BITS_ = ZONE_BUCKET_BITS
DEBUG_BUILD = bool(CALLGATE_DEBUG)  # the debug variant (setup.py, CALLGATE_DEBUG=1: checks on, -O0)
