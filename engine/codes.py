"""Public names of verdicts and reason codes, with their integer codes.

The integers are what the compiled core writes into its result structs and
batch columns; the names are the public contract (spec §3).  The order of
these tables is frozen: appending is fine, renumbering breaks stored batches
and the gRPC enums that mirror them.
"""

from __future__ import annotations

from typing import Final

# Verdicts -------------------------------------------------------------------
VERDICTS: Final = (
    "ERROR",  # the input could not be decided on (see the reason)
    "ROUTE",
    "FORWARD",
    "VOICEMAIL",
    "REJECT",
    "ALLOW",
    "DENY",
    "INTERCEPT",
    "NO_PICKUP",
)
VERDICT_CODE: Final = {name: i for i, name in enumerate(VERDICTS)}
# the codes by name, for code that branches on a decision's verdict_code (a test checks they match VERDICTS)
ERROR, ROUTE, FORWARD, VOICEMAIL, REJECT, ALLOW, DENY, INTERCEPT, NO_PICKUP = range(len(VERDICTS))

# Reasons, each with the SIP status a proxy should answer with when the call
# is refused (0: not a refusal, or no SIP answer is implied).
REASONS: Final = (
    ("OK", 0),
    ("BLACKLISTED", 603),
    ("OFF_HOURS_BLOCKED", 480),
    ("OFF_HOURS", 480),
    ("DOCUMENTS_PENDING", 403),
    ("UNKNOWN_NUMBER", 404),
    ("ANONYMOUS", 433),
    ("ACCOUNT_UNAVAILABLE", 480),
    ("INSUFFICIENT_FUNDS", 402),
    ("NO_RATE", 403),
    ("NO_CALLER_ID", 403),
    ("INVALID_CALLER", 400),
    ("INVALID_CALLED", 400),
    ("INVALID_DESTINATION", 400),
    ("INVALID_TIME", 400),
    ("INVALID_USER", 400),
    ("NOT_PICKUP_CODE", 0),
    ("NO_RINGING_CALL", 0),
    ("INVALID_BALANCE", 400),
    ("DOCUMENTS_REJECTED", 403),
)
REASON_NAMES: Final = tuple(name for name, _ in REASONS)
REASON_CODE: Final = {name: i for i, name in enumerate(REASON_NAMES)}
SIP_STATUS: Final = dict(REASONS)

# Reasons that mean "the request was bad", not "the call is refused".  The
# Python API raises for them; batch columns carry them as verdict ERROR.
INPUT_ERRORS: Final = frozenset(
    {"INVALID_CALLER", "INVALID_CALLED", "INVALID_DESTINATION", "INVALID_TIME", "INVALID_USER", "INVALID_BALANCE"}
)

CHAT_MODES: Final = ("chat_per_call", "single_chat", "none")
LEAD_TRIGGERS: Final = ("on_answer", "on_hangup")
OFFHOURS_ACTIONS: Final = ("reject", "voicemail", "forward")
TENANT_STATUSES: Final = ("active", "suspended", "disabled")
LINE_KINDS: Final = ("rented", "sip_trunk", "byoc")
# How a line's trunk sends callers (docs/decisions.md "Reading phone numbers"); the index is the core's code.
CALLER_FORMATS: Final = ("auto", "e164", "international", "national")
CURRENCIES: Final = ("USD", "EUR")

# Words that SIP headers use for a withheld caller (RFC 3323 "anonymous" and
# the spellings carriers send in practice), compared case-insensitively.
WITHHELD_CALLERS: Final = frozenset({"", "anonymous", "restricted", "private", "unavailable", "unknown"})

# Longest call a decision grants, whatever the balance: the cap every switch
# puts on a single call so a stuck leg cannot run up an unbounded charge.
MAX_CALL_SECONDS: Final = 86_400

# Instants the decision API accepts (UTC seconds): 2000-01-01 .. 2100-01-01.
# Off-hours tables are precomputed over this window.
MIN_INSTANT: Final = 946_684_800
MAX_INSTANT: Final = 4_102_444_800

# The rule that decided, in words, per reason (spec §2-§3 rule numbers), for
# the CLI and the `rule` field of gRPC decisions.
RULES: Final = {
    "OK": "no rule refused the call",
    "BLACKLISTED": "the caller is on the tenant's blacklist, refused at all times (rule 8)",
    "OFF_HOURS_BLOCKED": "the number is in its off hours and the caller is on the off-hours blacklist (rule 8)",
    "OFF_HOURS": "the number is in its off hours: its offhours_action applies (rule 8)",
    "DOCUMENTS_PENDING": "the number needs approved documents before it may be used (rule 1)",
    "UNKNOWN_NUMBER": "the called number is not one of the tenant's numbers",
    "ANONYMOUS": "the caller is withheld and the tenant blocks anonymous calls",
    "ACCOUNT_UNAVAILABLE": "the tenant is not active: calls on the backup line go to the backup number (rule 3)",
    "INSUFFICIENT_FUNDS": "the balance does not pay for one billing increment",
    "NO_RATE": "the caller ID's line has no rate for this destination",
    "NO_CALLER_ID": "the user has no caller ID and the tenant no default_caller_id (rule 2)",
    "INVALID_CALLER": "the caller is not a phone number (E.164, digits, national, or withheld)",
    "INVALID_CALLED": "the called number is not a phone number (E.164 or digits)",
    "INVALID_DESTINATION": "the destination is not a phone number (E.164, digits or national)",
    "INVALID_TIME": "the instant is outside 2000-01-01 .. 2100-01-01 (UTC seconds)",
    "INVALID_USER": "the user id is not 1-64 letters, digits or _ . : @ -",
    "NOT_PICKUP_CODE": "the dialled string is not the tenant's pickup code (rule 6)",
    "NO_RINGING_CALL": "no unanswered call rings at another member of the user's queue groups (rule 6)",
    "INVALID_BALANCE": "the balance is beyond 1e9 or has more than 6 decimals",
    "DOCUMENTS_REJECTED": "the number's documents were rejected: it may not be used until a new set is approved "
                          "(rule 1)",
}
assert set(RULES) == set(REASON_NAMES)
