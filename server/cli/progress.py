"""A progress line for long CLI work (imports, big pushes): it moves at least once a second.

A thread redraws it every `interval_s` from what the work last reported
(`update`), so that it keeps moving while the work waits on the server (a
compile of ten million numbers says "waiting for the server ... 7 s").  On a
terminal the line is redrawn in place; elsewhere (CI logs, pipes) one plain
line is printed per interval.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO


class Ticker:
    def __init__(self, stream: TextIO | None = None, interval_s: float = 1.0) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval_s = interval_s
        self._stage, self._done, self._total, self._unit = "", 0, 0, ""
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def stage(self, name: str, total: int = 0, unit: str = "") -> None:
        with self._lock:
            self._stage, self._done, self._total, self._unit = name, 0, total, unit
            self._since = time.monotonic()

    @property
    def name(self) -> str:
        return self._stage

    def update(self, done: int) -> None:
        self._done = done  # a plain store: read by the drawing thread, no lock needed for an int

    def line(self) -> str:
        with self._lock:
            stage, done, total, unit, since = self._stage, self._done, self._total, self._unit, self._since
        elapsed = time.monotonic() - since
        if total:
            share = min(1.0, done / total)
            bar = "#" * int(share * 20)
            return f"{stage} [{bar:<20}] {_amount(done, unit)} / {_amount(total, unit)} ({elapsed:.0f} s)"
        if done:
            return f"{stage}: {_amount(done, unit)} ({elapsed:.0f} s)"
        return f"{stage} ... {elapsed:.0f} s"

    def _draw(self, final: bool = False) -> None:
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._draw()

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self._draw(final=True)
        elif self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _amount(n: int, unit: str) -> str:
    if unit == "B":
        return f"{n / 1e6:,.1f} MB"
    return f"{n:,}{' ' + unit if unit else ''}"
