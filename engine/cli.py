"""The offline part of the `callgate` command (the rest is in server/cli.py):

    callgate check FILE            validate a settings document, list every problem
    callgate compile FILE -o SNAP  compile it and save the snapshot (loads without compiling)
    callgate demo [FILE]           print a few decisions on FILE (default: examples/acme.json)

Exit codes: 0 success, 2 bad input (the message says what to fix).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from . import demo
from .settings import Settings, SettingsError, document_format, parse_settings
from .snapshot import compile_settings, dumps

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "acme.json"


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with errors as one line (`callgate: error: ...`, exit 2) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"callgate: error: {self.prog.removeprefix('callgate ')}: {message} "
                     f"(`{self.prog} --help` explains)\n")


def int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer from low to high (protobuf fields are 64-bit; Python ints are not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text if len(text) < 30 else text[:27] + '...'} is not {what} "
                                             f"({low} to {high})")
        return value

    return parse


VERSION = int_in(1, 2**63 - 1, "a settings version")
VERSION_OR_ZERO = int_in(0, 2**63 - 1, "a settings version (0: none yet)")
LIMIT = int_in(1, 10_000, "a row count")
ROW_ID = int_in(1, 2**63 - 1, "a row id")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse(path: Path, fmt: str | None) -> Settings:
    data = _read(path)
    try:
        return parse_settings(data, document_format(data, fmt, path.name))
    except SettingsError as exc:
        raise CliError(f"{path}: {exc}") from None


def cmd_check(args: argparse.Namespace) -> int:
    settings = _parse(args.file, args.format)
    print(f"{args.file}: valid settings for tenant {settings.tenant!r}: {len(settings.numbers)} numbers, "
          f"{len(settings.users)} users, {len(settings.queue_groups)} queue groups, "
          f"{len(settings.blacklist)} + {len(settings.offhours_blacklist)} listed callers")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    settings = _parse(args.file, args.format)
    start = time.perf_counter()
    snapshot = compile_settings(settings, version=args.version)
    compiled = time.perf_counter() - start
    data = dumps(snapshot)
    try:
        args.output.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"compiled tenant {settings.tenant!r} version {args.version} in {compiled:.3f} s; "
          f"wrote {len(data):,} bytes to {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return demo.main([str(args.file)])


def add_offline_commands(sub: Any) -> None:
    """check, compile and demo: the commands that need no server."""
    check = sub.add_parser("check", help="validate a settings document and list every problem",
                           description="Validate a settings document whole. Every problem is listed with "
                                       "the path of its field; exit code 2 if there is any.")
    check.add_argument("file", type=Path, help="settings document (JSON, or msgpack with --format msgpack)")
    check.add_argument("--format", choices=("json", "msgpack"), help="document format (default: guessed)")
    check.set_defaults(run=cmd_check)

    comp = sub.add_parser("compile", help="compile settings into a snapshot file",
                          description="Compile a settings document into the core's snapshot and save it; "
                                      "a saved snapshot loads in another process without compiling.")
    comp.add_argument("file", type=Path, help="settings document")
    comp.add_argument("-o", "--output", type=Path, required=True, help="snapshot file to write")
    comp.add_argument("--version", type=VERSION, default=1, help="settings version to stamp (default 1)")
    comp.add_argument("--format", choices=("json", "msgpack"), help="document format (default: guessed)")
    comp.set_defaults(run=cmd_compile)

    dem = sub.add_parser("demo", help="print a few decisions on a settings document (offline)",
                         description="Compile a settings document and print inbound, outbound and pickup "
                                     "decisions in words.")
    dem.add_argument("file", type=Path, nargs="?", default=EXAMPLE, help="settings document (default: the example)")
    dem.set_defaults(run=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m engine", description="callgate's offline tools (the full command is `callgate`).")
    add_offline_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run the chosen command; a CliError is one line on stderr and exit code 2."""
    for arg in sys.argv[1:] if argv is None else argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 (kept as lone surrogates)
            print(f"callgate: error: argument {arg.encode('utf-8', 'replace').decode()!r} is not UTF-8 text",
                  file=sys.stderr)
            return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a bad argument (one line already printed)
        return int(stop.code or 0)
    try:
        return int(args.run(args))
    except CliError as exc:
        print(f"callgate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`callgate ... | head`): no trace, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"callgate: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # every failure is one line (a store error, a bug): the trace only when asked for
        if os.environ.get("CALLGATE_TRACEBACK"):
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"callgate: error: {text} ({type(exc).__name__}; CALLGATE_TRACEBACK=1 shows where)", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
