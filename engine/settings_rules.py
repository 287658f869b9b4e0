"""The rules of a settings document (spec §1, §2), checked whole: `validate` turns a decoded document into
the typed model (`settings_model`) or raises one `SettingsError` listing every problem with the path of the
field it concerns (``numbers[3].schedule.weekly.tue[0]: '25:00' is not a time``).  Nothing is half applied.

Also the one rule for tenant ids wherever one arrives (`tenant_id_problem`).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from . import codes
from .dialing import country_dialing
from .settings_decode import Unfit
from .settings_decode import path_key as _field
from .settings_decode import quote as _q
from .settings_model import (
    AMOUNT_DECIMALS,
    MAX_AMOUNT,
    MAX_INCREMENT_S,
    MAX_LIST,
    MAX_RATE,
    RATE_DECIMALS,
    WEEKDAYS,
    AutoTopup,
    Backup,
    Line,
    Number,
    OffhoursAction,
    QueueGroup,
    Rate,
    Rental,
    Schedule,
    Settings,
    SettingsError,
    User,
)

E164 = re.compile(r"\+[1-9][0-9]{7,14}")
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")
_TIME = re.compile(r"([0-9]{2}):([0-9]{2})")
_MONEY = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_PREFIX = re.compile(r"[0-9]{1,15}")
_PICKUP = re.compile(r"[0-9*#]{2,8}")


def validate(doc: Any) -> Settings:
    """The model of a decoded document, or SettingsError listing every problem."""
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
