"""How the `callgate` command writes and reads people's text: stored text as one safe line, instants."""

from __future__ import annotations

import datetime as dt

from engine.cli import CliError


def shown(text: str, width: int) -> str:
    """Text from the store as one terminal line: control characters (a newline, an escape sequence a tenant
    put in a comment) written as escapes, so that no stored text can fake a line or drive the terminal."""
    text = text[:width * 4]
    if text.isprintable():
        return text[:width]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)[:width]


def when(seconds: float) -> str:
    """UTC seconds as the CLI prints them; '-' for none."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if seconds else "-"


def instant(text: str | None) -> int:
    """--at: epoch seconds or an ISO 8601 time with a zone; None: now (0 lets the server use its clock)."""
    if text is None:
        return 0
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--at {text!r} is neither epoch seconds nor an ISO time like 2026-12-01T10:30:00-08:00") \
            from None
    if moment.tzinfo is None:
        raise CliError(f"--at {text!r} has no time zone: add one, e.g. {text}Z or {text}-08:00")
    return int(moment.timestamp())
