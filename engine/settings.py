"""The tenant settings document (SPEC §1): typed model, parsing, validation.

A document is validated whole: every problem is collected with the path of
the field it concerns (``numbers[3].schedule.weekly.tue[0]: '25:00' is not a
time``) and reported at once in one `SettingsError`.  Nothing is half
applied: `parse_settings` either returns a complete `Settings` or raises.

Money stays `Decimal` from the wire to the model; phone numbers stay E.164
strings; the compiler (`engine.snapshot`) turns them into the core's tables.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import msgpack

from . import codes
from .dialing import country_dialing

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Largest settings document accepted, in bytes (JSON or msgpack), and the
# longest lists: a push beyond these is refused before it is parsed.
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
MAX_LIST = {
    "lines": 1_000,
    "rates": 100_000,
    "numbers": 100_000,
    "users": 100_000,
    "queue_groups": 10_000,
    "blacklist": 20_000_000,
    "offhours_blacklist": 20_000_000,
    "holidays": 1_000,
    "intervals": 48,
    "groups": 1_000,
    "members": 100_000,
}

# Money bounds keep the core's integer arithmetic (micro-units, int64) exact.
MAX_RATE = Decimal("1000")
MAX_AMOUNT = Decimal("1000000000")
RATE_DECIMALS = 6
AMOUNT_DECIMALS = 2
MAX_INCREMENT_S = 3600

E164 = re.compile(r"\+[1-9][0-9]{7,14}")
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")
_TIME = re.compile(r"([0-9]{2}):([0-9]{2})")
_MONEY = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_PREFIX = re.compile(r"[0-9]{1,15}")
_PICKUP = re.compile(r"[0-9*#]{2,8}")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class SettingsError(ValueError):
    """A settings document that cannot be accepted; `errors` lists each problem."""

    def __reduce__(self) -> tuple[type[SettingsError], tuple[list[str]]]:
        # crosses process boundaries (compiles run in a worker pool) whole
        return (SettingsError, (self.errors,))

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        shown = "\n".join(f"  - {e}" for e in self.errors[:50])
        more = f"\n  ... and {len(self.errors) - 50} more" if len(self.errors) > 50 else ""
        noun = "error" if len(self.errors) == 1 else "errors"
        super().__init__(f"settings refused, {len(self.errors)} {noun}:\n{shown}{more}")


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    prefix: str
    per_minute: Decimal
    increment_s: int


@dataclass(frozen=True, slots=True)
class Line:
    id: str
    kind: str
    rates: tuple[Rate, ...]
    caller_format: str = "auto"   # how its trunk sends callers: auto | e164 | international | national


@dataclass(frozen=True, slots=True)
class Rental:
    monthly_fee: Decimal
    renews_on: dt.date


@dataclass(frozen=True, slots=True)
class Schedule:
    timezone: str
    # weekday (0 = Monday) -> working intervals as (start, end) minutes of
    # the local day, start included, end excluded, end <= 1440.
    weekly: tuple[tuple[tuple[int, int], ...], ...]
    holidays: tuple[dt.date, ...]


@dataclass(frozen=True, slots=True)
class OffhoursAction:
    action: str  # reject | voicemail | forward
    to: str | None = None


@dataclass(frozen=True, slots=True)
class Number:
    number: str
    line: str
    country: str
    requires_documents: bool
    inbound_only: bool
    rental: Rental | None
    schedule: Schedule | None
    offhours_action: OffhoursAction
    route_to: str | None


@dataclass(frozen=True, slots=True)
class User:
    id: str
    caller_id: str | None
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueueGroup:
    id: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AutoTopup:
    enabled: bool
    amount: Decimal | None


@dataclass(frozen=True, slots=True)
class Backup:
    number: str
    line: str


@dataclass(frozen=True, slots=True)
class Settings:
    tenant: str
    currency: str
    status: str
    chat_mode: str
    lead_trigger: str
    default_caller_id: str | None = None
    main_number: str | None = None
    pickup_code: str | None = None
    auto_topup: AutoTopup = AutoTopup(False, None)
    backup: Backup | None = None
    block_anonymous: bool = False
    lines: tuple[Line, ...] = ()
    numbers: tuple[Number, ...] = ()
    users: tuple[User, ...] = ()
    queue_groups: tuple[QueueGroup, ...] = ()
    blacklist: tuple[str, ...] = ()
    offhours_blacklist: tuple[str, ...] = ()
    # The raw document as pushed, kept for history and `settings show`.
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def group_members(self) -> dict[str, tuple[str, ...]]:
        """Queue group id -> member user ids, in document order.

        Membership is the union of `queue_groups[].members` and
        `users[].groups`: either side may list it.
        """
        members: dict[str, dict[str, None]] = {g.id: dict.fromkeys(g.members) for g in self.queue_groups}
        for user in self.users:
            for gid in user.groups:
                members[gid].setdefault(user.id)
        return {gid: tuple(m) for gid, m in members.items()}

    def user_groups(self) -> dict[str, frozenset[str]]:
        """User id -> the queue groups they belong to (same union as above).

        Users are those of `users` and every queue group member: a member
        needs an entry in `users` only to have a caller ID of their own.
        """
        out: dict[str, set[str]] = {u.id: set(u.groups) for u in self.users}
        for group in self.queue_groups:
            for uid in group.members:
                out.setdefault(uid, set()).add(group.id)
        return {uid: frozenset(g) for uid, g in out.items()}


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


class Unfit:
    """A value the decoder could read but no field can hold (an integer of thousands of digits, NaN).

    The decoder puts it where the value was, so that the validator reports it
    with the path of its field, in the same words as every other problem.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<{self.reason}>"


MAX_INT_DIGITS = 30  # far beyond every whole-number field (int64 has 19 digits); longer is Unfit


def _json_int(text: str) -> int | Unfit:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return Unfit(f"a whole number of {digits} digits does not fit any field")
    return int(text)


def _json_constant(name: str) -> Unfit:
    return Unfit(f"{name} is not a JSON number")


BOMS = ((b"\xef\xbb\xbf", "UTF-8"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"),
        (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))


class _Keys:
    """object_pairs_hook for one decode: builds each object and notes duplicate and non-string keys.

    The hook cannot know where the object sits; the problems are located by a
    walk of the decoded document afterwards (only when there are any).
    """

    def __init__(self) -> None:
        self.problems: list[tuple[dict, str]] = []

    def __call__(self, pairs: list[tuple[Any, Any]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if not isinstance(key, str):
                self.problems.append((out, f"key {_q(key)} is not a string: object keys are field names"))
                continue
            if key in out:
                self.problems.append((out, f"duplicate key {key!r}"))
            out[key] = value
        return out

    def errors(self, document: Any) -> list[str]:
        """Each problem as 'path: message', in document order (a path the walk cannot reach is 'document')."""
        wanted = {id(obj) for obj, _ in self.problems}
        paths: dict[int, tuple[int, str]] = {}   # object -> (place in document order, path)
        stack: list[tuple[Any, str]] = [(document, "")]
        while stack and len(paths) < len(wanted):
            value, path = stack.pop()
            if isinstance(value, dict):
                if id(value) in wanted:
                    paths.setdefault(id(value), (len(paths), path or "document"))
                children = [(v, f"{path}.{_field(k)}" if path else _field(k)) for k, v in value.items()]
            elif isinstance(value, list):
                children = [(v, f"{path}[{i}]") for i, v in enumerate(value) if isinstance(v, dict | list)]
            else:
                continue
            stack.extend(reversed(children))
        unseen = (len(paths), "document")
        located = sorted(((paths.get(id(obj), unseen), i, message) for i, (obj, message) in enumerate(self.problems)))
        return [f"{path}: {message}" for (_, path), _, message in located]


def load_document(data: bytes | str, fmt: str | None = None) -> Any:
    """Decode a settings document from JSON (UTF-8) or msgpack bytes, strictly.

    `fmt` is "json" or "msgpack"; None guesses (JSON starts with `{`).
    Refused with the path of the problem: a key given twice in one object, a
    key that is not a string (msgpack), a byte-order mark or another encoding
    than UTF-8; numbers no field can hold reach the validator as `Unfit`.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SettingsError([f"document: {len(data)} bytes is larger than the {MAX_DOCUMENT_BYTES} byte limit"])
    if fmt not in (None, "json", "msgpack"):
        raise ValueError(f"unknown settings format {fmt!r}: use json or msgpack")
    if isinstance(data, str):
        if data.startswith("\ufeff"):
            raise SettingsError(["document: starts with a byte-order mark (U+FEFF): remove it"])
        if fmt == "msgpack":
            raise SettingsError(["document: msgpack must be bytes"])
        text = data
    else:
        if fmt != "msgpack":
            for bom, encoding in BOMS:
                if data.startswith(bom):
                    raise SettingsError([f"document: starts with a {encoding} byte-order mark: save it as UTF-8 "
                                         "without a byte-order mark"])
        if fmt is None:
            if data[:1] == b"\x00":  # no msgpack map starts so; UTF-16 or UTF-32 JSON without a mark does
                raise SettingsError(["document: starts with a NUL byte, as UTF-16 or UTF-32 text does: "
                                     "JSON documents are read as UTF-8 only"])
            fmt = "json" if data.lstrip()[:1] in (b"{", b"[") else "msgpack"
        if fmt == "msgpack":
            return _load_msgpack(bytes(data))
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SettingsError([f"document: not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
                                 "JSON documents are read as UTF-8 only"]) from None
        if "\x00" in text[:4]:
            raise SettingsError(["document: holds NUL bytes, as UTF-16 or UTF-32 text does: "
                                 "JSON documents are read as UTF-8 only"])
    keys = _Keys()
    try:
        doc = json.loads(text, parse_float=Decimal, parse_int=_json_int, parse_constant=_json_constant,
                         object_pairs_hook=keys)
    except ValueError as exc:
        raise SettingsError([f"document: not valid JSON ({exc})"]) from None
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond Decimal's range
        raise SettingsError(["document: not valid JSON (a number is out of range)"]) from None
    except RecursionError:
        raise SettingsError(["document: not valid JSON (nested too deeply)"]) from None
    if keys.problems:
        raise SettingsError(keys.errors(doc))
    return doc


def _load_msgpack(data: bytes) -> Any:
    keys = _Keys()
    try:
        # strict_map_key=False lets any key reach the hook, which refuses it with its path
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False, object_pairs_hook=keys)
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError) as exc:
        raise SettingsError([f"document: not valid msgpack ({str(exc)[:200] or type(exc).__name__})"]) from None
    if keys.problems:
        raise SettingsError(keys.errors(doc))
    return doc


def parse_settings(data: bytes | str | Mapping[str, Any], fmt: str | None = None) -> Settings:
    """Validate a whole settings document; return the model or raise SettingsError."""
    doc = load_document(data, fmt) if isinstance(data, (bytes, bytearray, str)) else data
    return _Validator().settings(doc)


def tenant_id_problem(value: object) -> str | None:
    """What is wrong with a tenant id, or None.  The one rule for tenant ids, wherever one arrives:
    settings documents, tokens, the store and every Admin RPC."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not TENANT_ID.fullmatch(value):
        return (f"{_q(value)} is not a valid tenant id (1 to 64 letters, digits, _ . -, starting with a letter "
                "or a digit)")
    return None


def check_tenant_id(value: object) -> str:
    """`value` if it is a valid tenant id, else ValueError saying why."""
    problem = tenant_id_problem(value)
    if problem:
        raise ValueError(problem)
    assert isinstance(value, str)
    return value


def _q(value: Any) -> str:
    """Quote a offending value for a message, shortened."""
    try:
        text = str(value) if isinstance(value, Decimal) else repr(value)  # JSON numbers with a point are Decimal
    except (ValueError, RecursionError):  # an int beyond str()'s digit limit, or very deep nesting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _field(key: Any) -> str:
    """A document's key as a path component: quoted unless a plain name (so "" or "a: b" still reads as a path)."""
    return key if isinstance(key, str) and _FIELD.fullmatch(key) else _q(key)


class _Validator:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    # -- scalars -----------------------------------------------------------
    def unfit(self, path: str, value: Any, expected: str = "") -> bool:
        """Report a value the decoder marked as fitting no field (True: reported)."""
        if isinstance(value, Unfit):
            self.err(path, value.reason + (f"; expected {expected}" if expected else ""))
            return True
        return False

    def fields(self, path: str, value: Any, required: Iterable[str], optional: Iterable[str]) -> dict | None:
        if self.unfit(path, value, "an object"):
            return None
        if not isinstance(value, Mapping):
            self.err(path, f"must be an object, not {type(value).__name__}")
            return None
        required = tuple(required)
        known = set(required) | set(optional)
        for key in value:
            if key not in known:
                self.err(f"{path}.{_field(key)}" if path else _field(key), "unknown field")
        for key in required:
            if key not in value:
                self.err(f"{path}.{key}" if path else key, "is required")
        return dict(value)

    def str_(self, path: str, value: Any) -> str | None:
        if self.unfit(path, value, "a string"):
            return None
        if not isinstance(value, str):
            self.err(path, f"must be a string, not {type(value).__name__}")
            return None
        return value

    def bool_(self, path: str, value: Any) -> bool | None:
        if self.unfit(path, value, "true or false"):
            return None
        if not isinstance(value, bool):
            self.err(path, f"must be true or false, not {_q(value)}")
            return None
        return value

    def enum(self, path: str, value: Any, choices: Sequence[str]) -> str | None:
        if self.str_(path, value) is None:
            return None
        if value not in choices:
            self.err(path, f"{_q(value)} is not one of {', '.join(choices)}")
            return None
        return str(value)

    def e164(self, path: str, value: Any) -> str | None:
        if self.str_(path, value) is None:
            return None
        if not E164.fullmatch(value):
            self.err(path, f"{_q(value)} is not an E.164 number (+ and 8 to 15 digits)")
            return None
        return str(value)

    def ident(self, path: str, value: Any, pattern: re.Pattern[str] = _ID) -> str | None:
        if self.str_(path, value) is None:
            return None
        if not pattern.fullmatch(value):
            chars = "_ . : @ -"
            self.err(path, f"{_q(value)} is not a valid id (letters, digits, {chars}, at most 64)")
            return None
        return str(value)

    def money(self, path: str, value: Any, decimals: int, minimum: Decimal, maximum: Decimal) -> Decimal | None:
        if self.unfit(path, value, "a decimal string such as \"0.0200\""):
            return None
        if isinstance(value, (float, Decimal)) and not isinstance(value, bool):
            self.err(path, f"{_q(value)} must be a string such as \"0.0200\": money is exact, never a float")
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            self.err(path, f"{_q(value)} must be a string such as \"{_q(value)}.00\": money is written as a "
                           "decimal string")
            return None
        if self.str_(path, value) is None:
            return None
        if not _MONEY.fullmatch(value):
            self.err(path, f"{_q(value)} is not a decimal amount")
            return None
        try:
            amount = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
            self.err(path, f"{_q(value)} is not a decimal amount")
            return None
        exponent = amount.as_tuple().exponent
        assert isinstance(exponent, int)
        if -exponent > decimals:
            self.err(path, f"{_q(value)} has more than {decimals} decimal places")
            return None
        if amount < minimum or amount > maximum:
            self.err(path, f"{_q(value)} is outside {minimum} .. {maximum}")
            return None
        return amount

    def int_(self, path: str, value: Any, lo: int, hi: int) -> int | None:
        if self.unfit(path, value, f"{lo} .. {hi}"):
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.err(path, f"must be a whole number, not {_q(value)}")
            return None
        if not lo <= value <= hi:
            self.err(path, f"{_q(value)} is outside {lo} .. {hi}")
            return None
        return value

    def date(self, path: str, value: Any) -> dt.date | None:
        if self.str_(path, value) is None:
            return None
        try:
            if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
                raise ValueError
            return dt.date.fromisoformat(value)
        except ValueError:
            self.err(path, f"{_q(value)} is not a date (YYYY-MM-DD)")
            return None

    def list_(self, path: str, value: Any, limit_key: str) -> list | None:
        if self.unfit(path, value, "a list"):
            return None
        if not isinstance(value, (list, tuple)):
            self.err(path, f"must be a list, not {type(value).__name__}")
            return None
        limit = MAX_LIST[limit_key]
        if len(value) > limit:
            self.err(path, f"{len(value)} entries is more than the limit of {limit}")
            return None
        return list(value)

    def time(self, path: str, value: Any, *, end: bool) -> int | None:
        if self.str_(path, value) is None:
            return None
        m = _TIME.fullmatch(value)
        if m:
            hours, minutes = int(m.group(1)), int(m.group(2))
            if minutes < 60 and (hours < 24 or (end and hours == 24 and minutes == 0)):
                return hours * 60 + minutes
            if hours == 24 and minutes == 0:
                self.err(path, f"{_q(value)} can only end an interval, not start one")
                return None
        self.err(path, f"{_q(value)} is not a time")
        return None

    # -- sections ----------------------------------------------------------
    def settings(self, doc: Any) -> Settings:
        top = self.fields(
            "",
            doc,
            required=("tenant", "currency", "status", "chat_mode", "lead_trigger"),
            optional=("default_caller_id", "main_number", "pickup_code", "auto_topup", "backup",
                      "block_anonymous", "lines", "numbers", "users", "queue_groups", "blacklist",
                      "offhours_blacklist"),
        )
        if top is None:
            # fields() words a top-level error with an empty path; give it one.
            self.errors = [e.replace(": ", "document: ", 1) if e.startswith(": ") else e for e in self.errors]
            raise SettingsError(self.errors)
        tenant = None
        if "tenant" in top and not self.unfit("tenant", top["tenant"], "a tenant id"):
            problem = tenant_id_problem(top["tenant"])
            if problem:
                self.err("tenant", problem)
            else:
                tenant = top["tenant"]
        currency = self.enum("currency", top["currency"], codes.CURRENCIES) if "currency" in top else None
        status = self.enum("status", top["status"], codes.TENANT_STATUSES) if "status" in top else None
        chat_mode = self.enum("chat_mode", top["chat_mode"], codes.CHAT_MODES) if "chat_mode" in top else None
        lead_trigger = (
            self.enum("lead_trigger", top["lead_trigger"], codes.LEAD_TRIGGERS) if "lead_trigger" in top else None
        )
        block_anonymous = bool(self.bool_("block_anonymous", top.get("block_anonymous", False)))

        lines = self.section(top, "lines", self.line)
        line_ids = self.unique_ids("lines", lines)
        queue_groups = self.section(top, "queue_groups", self.queue_group)
        group_ids = self.unique_ids("queue_groups", queue_groups)
        numbers = self.section(top, "numbers", lambda p, v: self.number(p, v, line_ids, group_ids))
        by_number: dict[str, Number] = {}
        for i, num in enumerate(numbers):
            if num is None:
                continue
            if num.number in by_number:
                self.err(f"numbers[{i}].number", f"{num.number} is listed twice")
            by_number[num.number] = num
        users = self.section(top, "users", lambda p, v: self.user(p, v, group_ids, by_number))
        user_ids = self.unique_ids("users", users)
        del user_ids  # checked for duplicates; group members need not be listed in users

        default_caller_id = self.caller_id("default_caller_id", top.get("default_caller_id"), by_number)
        main_number = None
        if top.get("main_number") is not None:
            main_number = self.e164("main_number", top["main_number"])
        if main_number is not None and top.get("default_caller_id") == main_number:
            self.err("default_caller_id",
                     f"{main_number} is the main_number, which may never be the default outbound "
                     "number: choose another of the tenant's numbers")

        pickup_code = None
        if top.get("pickup_code") is not None:
            pickup_code = self.str_("pickup_code", top["pickup_code"])
            if pickup_code is not None and not _PICKUP.fullmatch(pickup_code):
                self.err("pickup_code", f"{_q(pickup_code)} must be 2 to 8 of the characters 0-9 * #")
                pickup_code = None
            elif pickup_code is not None and pickup_code[0] not in "*#":
                self.err("pickup_code", f"{_q(pickup_code)} must start with * or #, "
                                        "or it collides with dialable numbers")
                pickup_code = None

        auto_topup = self.auto_topup(top.get("auto_topup"))
        backup = self.backup(top.get("backup"), line_ids, by_number)
        blacklist = self.number_list(top, "blacklist")
        offhours_blacklist = self.number_list(top, "offhours_blacklist")

        if self.errors:
            raise SettingsError(self.errors)
        assert tenant and currency and status and chat_mode and lead_trigger
        return Settings(
            tenant=tenant, currency=currency, status=status, chat_mode=chat_mode,
            lead_trigger=lead_trigger, default_caller_id=default_caller_id, main_number=main_number,
            pickup_code=pickup_code, auto_topup=auto_topup, backup=backup,
            block_anonymous=block_anonymous,
            lines=tuple(x for x in lines if x is not None),
            numbers=tuple(x for x in numbers if x is not None),
            users=tuple(x for x in users if x is not None),
            queue_groups=tuple(x for x in queue_groups if x is not None),
            blacklist=blacklist, offhours_blacklist=offhours_blacklist,
            document=doc,
        )

    def section(self, top: dict, key: str, parse: Callable[[str, Any], Any]) -> list:
        raw = self.list_(key, top.get(key, []), key)
        if raw is None:
            return []
        return [parse(f"{key}[{i}]", item) for i, item in enumerate(raw)]

    def unique_ids(self, key: str, items: Sequence[Any]) -> set[str]:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item is None:
                continue
            if item.id in seen:
                self.err(f"{key}[{i}].id", f"{_q(item.id)} is used twice")
            seen.add(item.id)
        return seen

    def number_list(self, top: dict, key: str) -> tuple[str, ...]:
        raw = self.list_(key, top.get(key, []), key)
        if raw is None:
            return ()
        bad = [i for i, v in enumerate(raw) if not (isinstance(v, str) and E164.fullmatch(v))]
        for i in bad[:100]:
            self.e164(f"{key}[{i}]", raw[i])
        if len(bad) > 100:
            self.err(key, f"{len(bad) - 100} more entries are not E.164 numbers")
        return tuple(raw)

    def line(self, path: str, value: Any) -> Line | None:
        f = self.fields(path, value, ("id", "kind"), ("rates", "caller_format"))
        if f is None:
            return None
        lid = self.ident(f"{path}.id", f["id"]) if "id" in f else None
        kind = self.enum(f"{path}.kind", f["kind"], codes.LINE_KINDS) if "kind" in f else None
        caller_format = self.enum(f"{path}.caller_format", f.get("caller_format", "auto"), codes.CALLER_FORMATS)
        rates_raw = self.list_(f"{path}.rates", f.get("rates", []), "rates") or []
        rates: list[Rate] = []
        prefixes: set[str] = set()
        for i, r in enumerate(rates_raw):
            rp = f"{path}.rates[{i}]"
            rf = self.fields(rp, r, ("prefix", "per_minute", "increment_s"), ())
            if rf is None or not {"prefix", "per_minute", "increment_s"} <= rf.keys():
                continue
            prefix = self.str_(f"{rp}.prefix", rf["prefix"])
            if prefix is not None and not _PREFIX.fullmatch(prefix):
                self.err(f"{rp}.prefix", f"{_q(prefix)} must be 1 to 15 digits (a country code and more, no +)")
                prefix = None
            per_minute = self.money(f"{rp}.per_minute", rf["per_minute"], RATE_DECIMALS, Decimal(0), MAX_RATE)
            increment = self.int_(f"{rp}.increment_s", rf["increment_s"], 1, MAX_INCREMENT_S)
            if prefix is not None and prefix in prefixes:
                self.err(f"{rp}.prefix", f"{_q(prefix)} is listed twice on this line")
            if prefix is not None:
                prefixes.add(prefix)
            if prefix is not None and per_minute is not None and increment is not None:
                rates.append(Rate(prefix, per_minute, increment))
        if lid is None or kind is None or caller_format is None:
            return None
        return Line(lid, kind, tuple(rates), caller_format)

    def queue_group(self, path: str, value: Any) -> QueueGroup | None:
        f = self.fields(path, value, ("id",), ("members",))
        if f is None:
            return None
        gid = self.ident(f"{path}.id", f["id"]) if "id" in f else None
        members = self.list_(f"{path}.members", f.get("members", []), "members") or []
        ok = [m for i, m in enumerate(members) if self.ident(f"{path}.members[{i}]", m) is not None]
        return QueueGroup(gid, tuple(ok)) if gid is not None else None

    def number(self, path: str, value: Any, line_ids: set[str], group_ids: set[str]) -> Number | None:
        f = self.fields(path, value, ("number", "line", "country"),
                        ("requires_documents", "inbound_only", "rental", "schedule", "offhours_action", "route_to"))
        if f is None:
            return None
        number = self.e164(f"{path}.number", f["number"]) if "number" in f else None
        line = self.str_(f"{path}.line", f["line"]) if "line" in f else None
        if line is not None and line not in line_ids:
            self.err(f"{path}.line", f"line {_q(line)} is not in lines")
            line = None
        country = self.str_(f"{path}.country", f["country"]) if "country" in f else None
        if country is not None:
            dialing = country_dialing(country) if re.fullmatch(r"[A-Z]{2}", country) else None
            if dialing is None:
                self.err(f"{path}.country", f"{_q(country)} is not an ISO 3166 country code such as \"US\"")
                country = None
            elif number is not None and not number[1:].startswith(dialing.country_code):
                self.err(f"{path}.number",
                         f"{number} does not start with +{dialing.country_code}, the code of {country}")
        requires_documents = self.bool_(f"{path}.requires_documents", f.get("requires_documents", False))
        inbound_only = self.bool_(f"{path}.inbound_only", f.get("inbound_only", False))
        rental = self.rental(f"{path}.rental", f["rental"]) if f.get("rental") is not None else None
        schedule = self.schedule(f"{path}.schedule", f["schedule"]) if f.get("schedule") is not None else None
        action = self.offhours_action(f"{path}.offhours_action", f.get("offhours_action"))
        route_to = None
        if f.get("route_to") is not None:
            route_to = self.str_(f"{path}.route_to", f["route_to"])
            if route_to is not None and route_to not in group_ids:
                self.err(f"{path}.route_to", f"queue group {_q(route_to)} is not in queue_groups")
                route_to = None
        if None in (number, line, country, requires_documents, inbound_only, action):
            return None
        assert number and line and country and action is not None
        return Number(number, line, country, bool(requires_documents), bool(inbound_only), rental, schedule,
                      action, route_to)

    def rental(self, path: str, value: Any) -> Rental | None:
        f = self.fields(path, value, ("monthly_fee", "renews_on"), ())
        if f is None or not {"monthly_fee", "renews_on"} <= f.keys():
            return None
        fee = self.money(f"{path}.monthly_fee", f["monthly_fee"], AMOUNT_DECIMALS, Decimal(0), MAX_AMOUNT)
        renews = self.date(f"{path}.renews_on", f["renews_on"])
        return Rental(fee, renews) if fee is not None and renews is not None else None

    def schedule(self, path: str, value: Any) -> Schedule | None:
        f = self.fields(path, value, ("timezone",), ("weekly", "holidays"))
        if f is None:
            return None
        tz = None
        if "timezone" in f and self.str_(f"{path}.timezone", f["timezone"]) is not None:
            try:
                if not f["timezone"] or f["timezone"].startswith(("/", ".")) or ".." in f["timezone"]:
                    raise ValueError
                zoneinfo.ZoneInfo(f["timezone"])
                tz = f["timezone"]
            except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
                self.err(f"{path}.timezone", f"{_q(f['timezone'])} is not an IANA time zone such as "
                                             "\"America/Los_Angeles\"")
        weekly: list[tuple[tuple[int, int], ...]] = [() for _ in WEEKDAYS]
        raw_weekly = f.get("weekly", {})
        if not isinstance(raw_weekly, Mapping):
            self.err(f"{path}.weekly", f"must be an object of weekdays, not {type(raw_weekly).__name__}")
            raw_weekly = {}
        for day, intervals in raw_weekly.items():
            dp = f"{path}.weekly.{_field(day)}"
            if day not in WEEKDAYS:
                self.err(dp, f"{_q(day)} is not a weekday ({', '.join(WEEKDAYS)})")
                continue
            raw = self.list_(dp, intervals, "intervals") or []
            parsed: list[tuple[int, int]] = []
            for i, iv in enumerate(raw):
                ip = f"{dp}[{i}]"
                if not isinstance(iv, (list, tuple)) or len(iv) != 2:
                    self.err(ip, f"{_q(iv)} must be a pair [\"HH:MM\", \"HH:MM\"]")
                    continue
                start = self.time(ip, iv[0], end=False)
                end = self.time(ip, iv[1], end=True)
                if start is None or end is None:
                    continue
                if end <= start:
                    self.err(ip, f"{iv[0]}-{iv[1]} ends before it starts: an interval never crosses "
                                 "midnight, write two")
                    continue
                parsed.append((start, end))
            weekly[WEEKDAYS.index(day)] = tuple(sorted(parsed))
        holidays: list[dt.date] = []
        raw_h = self.list_(f"{path}.holidays", f.get("holidays", []), "holidays") or []
        for i, h in enumerate(raw_h):
            d = self.date(f"{path}.holidays[{i}]", h)
            if d is not None:
                holidays.append(d)
        if tz is None:
            return None
        return Schedule(tz, tuple(weekly), tuple(sorted(set(holidays))))

    def offhours_action(self, path: str, value: Any) -> OffhoursAction | None:
        if value is None:
            return OffhoursAction("reject")
        f = self.fields(path, value, ("action",), ("to",))
        if f is None or "action" not in f:
            return None
        action = self.enum(f"{path}.action", f["action"], codes.OFFHOURS_ACTIONS)
        if action is None:
            return None
        if action == "forward":
            if f.get("to") is None:
                self.err(f"{path}.to", "is required when the action is forward")
                return None
            to = self.e164(f"{path}.to", f["to"])
            return OffhoursAction(action, to) if to else None
        if f.get("to") is not None:
            self.err(f"{path}.to", f"only a forward action has a target, not {action}")
            return None
        return OffhoursAction(action)

    def caller_id(self, path: str, value: Any, by_number: Mapping[str, Number]) -> str | None:
        if value is None:
            return None
        number = self.e164(path, value)
        if number is None:
            return None
        own = by_number.get(number)
        if own is None:
            self.err(path, f"{number} is not one of the tenant's numbers; a caller ID must be")
            return None
        if own.inbound_only:
            self.err(path, f"{number} is inbound-only and cannot be a caller ID")
            return None
        return number

    def user(self, path: str, value: Any, group_ids: set[str], by_number: Mapping[str, Number]) -> User | None:
        f = self.fields(path, value, ("id",), ("caller_id", "groups"))
        if f is None:
            return None
        uid = self.ident(f"{path}.id", f["id"]) if "id" in f else None
        caller_id = self.caller_id(f"{path}.caller_id", f.get("caller_id"), by_number)
        groups = self.list_(f"{path}.groups", f.get("groups", []), "groups") or []
        ok: list[str] = []
        for i, g in enumerate(groups):
            if self.str_(f"{path}.groups[{i}]", g) is None:
                continue
            if g not in group_ids:
                self.err(f"{path}.groups[{i}]", f"queue group {_q(g)} is not in queue_groups")
                continue
            ok.append(g)
        if uid is None:
            return None
        return User(uid, caller_id, tuple(dict.fromkeys(ok)))

    def auto_topup(self, value: Any) -> AutoTopup:
        if value is None:
            return AutoTopup(False, None)
        f = self.fields("auto_topup", value, ("enabled",), ("amount",))
        if f is None or "enabled" not in f:
            return AutoTopup(False, None)
        enabled = self.bool_("auto_topup.enabled", f["enabled"])
        amount = None
        if f.get("amount") is not None:
            amount = self.money("auto_topup.amount", f["amount"], AMOUNT_DECIMALS, Decimal("0.01"), MAX_AMOUNT)
        elif enabled:
            self.err("auto_topup.amount", "is required when auto top-up is enabled")
        return AutoTopup(bool(enabled), amount)

    def backup(self, value: Any, line_ids: set[str], by_number: Mapping[str, Number]) -> Backup | None:
        if value is None:
            return None
        f = self.fields("backup", value, ("number", "line"), ())
        if f is None or not {"number", "line"} <= f.keys():
            return None
        number = self.e164("backup.number", f["number"])
        if number is not None and number in by_number:
            self.err("backup.number", f"{number} is one of the tenant's own numbers: forwarding there while "
                                      "the tenant is unavailable would loop")
            number = None
        line = self.str_("backup.line", f["line"])
        if line is not None and line not in line_ids:
            self.err("backup.line", f"line {_q(line)} is not in lines")
            line = None
        return Backup(number, line) if number and line else None
