"""Strict decoding of a settings document from JSON (UTF-8) or msgpack bytes, before any rule is checked.

`load_document` refuses what a lenient decoder would silently accept: a key
given twice in one object, a key that is not a string, a byte-order mark, an
encoding other than UTF-8, a document over MAX_DOCUMENT_BYTES.  Numbers no
field can hold (thousands of digits, NaN) are decoded as `Unfit` markers, so
that the rules (`settings_rules`) report them with their field's path.
`quote` and `path_key` word values and keys in every settings message.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import msgpack

from .settings_model import SettingsError

# Largest settings document accepted, in bytes (JSON or msgpack): a push beyond it is refused before it is parsed.
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def quote(value: Any) -> str:
    """Quote a offending value for a message, shortened."""
    try:
        text = str(value) if isinstance(value, Decimal) else repr(value)  # JSON numbers with a point are Decimal
    except (ValueError, RecursionError):  # an int beyond str()'s digit limit, or very deep nesting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def path_key(key: Any) -> str:
    """A document's key as a path component: quoted unless a plain name (so "" or "a: b" still reads as a path)."""
    return key if isinstance(key, str) and _FIELD.fullmatch(key) else quote(key)


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
                self.problems.append((out, f"key {quote(key)} is not a string: object keys are field names"))
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
                children = [(v, f"{path}.{path_key(k)}" if path else path_key(k)) for k, v in value.items()]
            elif isinstance(value, list):
                children = [(v, f"{path}[{i}]") for i, v in enumerate(value) if isinstance(v, dict | list)]
            else:
                continue
            stack.extend(reversed(children))
        unseen = (len(paths), "document")
        located = sorted(((paths.get(id(obj), unseen), i, message) for i, (obj, message) in enumerate(self.problems)))
        return [f"{path}: {message}" for (_, path), _, message in located]


MSGPACK_SUFFIXES = (".msgpack", ".mpk")


def document_format(data: bytes | str, fmt: str | None = None, filename: str = "") -> str:
    """The format of a settings document, "json" or "msgpack": the one place it is guessed.

    `fmt` when given; else msgpack for a file named *.msgpack or *.mpk; else
    JSON when the text starts with `{` or `[` (after white space), msgpack otherwise.
    """
    if fmt:
        return fmt
    if filename.endswith(MSGPACK_SUFFIXES):
        return "msgpack"
    if isinstance(data, str):
        return "json"
    return "json" if data.lstrip()[:1] in (b"{", b"[") else "msgpack"


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
            fmt = document_format(data)
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
