"""What moving a phone number between tenants does to their settings documents (pure rules).

A number belongs to one tenant at a time (spec §7; the store enforces it).
An operator moves one with a transfer, or gives a number that an old store
holds twice to one of its claimants (resolve).  Both come down to two edits
of effective documents, worked out here and validated whole by the usual
compile before anything is stored:

- `release`: the tenant's document without the number: its `numbers[]`
  entry goes, and so does every use of it as a caller ID (the tenant's
  default caller ID, a user's own, the main number): a tenant can present
  only numbers it holds.  Forward targets and the backup number stay: any
  number may be called.
- `adopt`: the receiving tenant's document with the entry, on a line and
  queue group of the receiver's own.

Each returns notes in words for the operator (what else changed).
"""

from __future__ import annotations

import copy
from typing import Any


class TransferRefused(ValueError):
    """The documents as they stand do not allow the move (the message says why)."""


def release(doc: dict[str, Any], number: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(document without `number`, its numbers[] entry, notes); TransferRefused if the document does not list it."""
    out = copy.deepcopy(doc)
    tenant = out.get("tenant", "?")
    entries = out.get("numbers") or []
    found = [e for e in entries if isinstance(e, dict) and e.get("number") == number]
    if not found:
        raise TransferRefused(f"tenant {tenant!r} does not list {number} in its numbers")
    out["numbers"] = [e for e in entries if not (isinstance(e, dict) and e.get("number") == number)]
    notes = [f"{number} left tenant {tenant!r}"]
    for field in ("default_caller_id", "main_number"):
        if out.get(field) == number:
            del out[field]
            notes.append(f"tenant {tenant!r} has no {field} any more (it was {number})")
    for user in out.get("users") or []:
        if isinstance(user, dict) and user.get("caller_id") == number:
            del user["caller_id"]
            notes.append(f"user {user.get('id')!r} of tenant {tenant!r} presents the default caller ID now "
                         f"(its own was {number})")
    return out, found[0], notes


def adopt(doc: dict[str, Any], entry: dict[str, Any], line: str = "", route_to: str = ""
          ) -> tuple[dict[str, Any], list[str]]:
    """(receiving document with the entry, notes): on `line` (default: the same line id) and `route_to`
    (default: the same queue group if the receiver has one of that id, else none)."""
    out = copy.deepcopy(doc)
    tenant = out.get("tenant", "?")
    number = entry.get("number")
    if any(isinstance(e, dict) and e.get("number") == number for e in out.get("numbers") or []):
        raise TransferRefused(f"tenant {tenant!r} lists {number} already")
    moved = copy.deepcopy(entry)
    notes = [f"{number} joined tenant {tenant!r}"]
    lines = {x.get("id") for x in out.get("lines") or [] if isinstance(x, dict)}
    wanted_line = line or str(entry.get("line", ""))
    if wanted_line not in lines:
        raise TransferRefused(f"tenant {tenant!r} has no line {wanted_line!r}: give the line it takes the number on "
                              f"(one of {', '.join(sorted(map(str, lines))) or 'none: add a line first'})")
    moved["line"] = wanted_line
    groups = {g.get("id") for g in out.get("queue_groups") or [] if isinstance(g, dict)}
    if route_to:
        if route_to not in groups:
            raise TransferRefused(f"tenant {tenant!r} has no queue group {route_to!r}")
        moved["route_to"] = route_to
    elif moved.get("route_to") is not None and moved["route_to"] not in groups:
        notes.append(f"calls to {number} route to no queue group: tenant {tenant!r} has no group "
                     f"{moved['route_to']!r} (give one)")
        del moved["route_to"]
    if moved.get("requires_documents"):
        notes.append(f"{number} needs documents: tenant {tenant!r} uploads its own (approvals stay with the "
                     "tenant that had it), until then its calls are refused with DOCUMENTS_PENDING")
    out["numbers"] = [*(out.get("numbers") or []), moved]
    return out, notes
