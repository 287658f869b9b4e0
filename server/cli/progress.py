"""Progress lines: `ProgressLine`, the one display (also the load tools'), and `Ticker`, the CLI's stages."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Self, TextIO


class ProgressLine:
    """One line of progress, redrawn by a thread every `interval_s` from what the work last reported.

    The one progress display of callgate's commands and load tools: on a
    terminal the line is redrawn in place (and drawn at once, so the terminal
    shows the work started); elsewhere (CI logs, pipes) one plain line is
    printed per interval.  A subclass says what the line reads (`text`).  On
    a normal exit a last line is drawn; after an error, only when
    `final_on_error` (a load run's figures up to the interruption), else the
    line is cleared so that the error stands alone.
    """

    TTY_INTERVAL_S = 1.0
    PLAIN_INTERVAL_S = 1.0
    final_on_error = False

    def __init__(self, stream: TextIO | None = None, interval_s: float | None = None) -> None:
        # resolved now rather than as a default argument: pytest and callers may swap sys.stderr
        self.stream: TextIO = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):  # a closed or minimal stream
            self.tty = False
        self.interval_s = interval_s if interval_s is not None else (
            self.TTY_INTERVAL_S if self.tty else self.PLAIN_INTERVAL_S)
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def text(self, final: bool, completed: bool) -> str:
        """The line as it reads now; `final`: the last one, `completed`: the work ended without an error."""
        raise NotImplementedError

    def started(self) -> None:
        """Called as the work starts (before the first line)."""

    def _draw(self, final: bool = False, completed: bool = True) -> None:
        text = self.text(final, completed)
        with self._write_lock:
            if self.tty:  # redraw in place; \x1b[K clears what a longer previous line left behind
                self.stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def _run(self) -> None:
        if self.tty:
            self._draw()
        while not self._stop.wait(self.interval_s):
            self._draw()

    def __enter__(self) -> Self:
        self.started()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)  # what the line reads is quick to get; never hang the work on it
            self._thread = None
        if exc_type is None or self.final_on_error:
            self._draw(final=True, completed=exc_type is None)
        elif self.tty:
            with self._write_lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()


class Ticker(ProgressLine):
    """Stages of long CLI work (imports, big pushes), each with its count: it moves at least once a second,
    also while the work waits on the server (a compile of ten million numbers says "waiting for the server
    ... 7 s")."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 1.0) -> None:
        super().__init__(stream, interval_s)
        self._stage, self._done, self._total, self._unit = "", 0, 0, ""
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def stage(self, name: str, total: int = 0, unit: str = "") -> None:
        with self._lock:
            self._stage, self._done, self._total, self._unit = name, 0, total, unit
            self._since = time.monotonic()

    @property
    def name(self) -> str:
        return self._stage

    def update(self, done: int) -> None:
        self._done = done  # a plain store: read by the drawing thread, no lock needed for an int

    def text(self, final: bool = False, completed: bool = True) -> str:
        return self.line()

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


def _amount(n: int, unit: str) -> str:
    if unit == "B":
        return f"{n / 1e6:,.1f} MB"
    return f"{n:,}{' ' + unit if unit else ''}"
