"""Real `callgate serve` processes for integration tests (loopback only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from loadtest.stats import stop_process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "acme.json"
# examples/acme.json's own numbers (a number belongs to one tenant: other tenants get numbers of their own)
OWN_NUMBERS = ("+14155550100", "+14155550199", "+442071234567")


def own_number(number: str, block: int) -> str:
    """Block 0 is acme's own number; block 100..999 (not 555) the same number in another tenant's range."""
    if block == 0:
        return number
    assert 100 <= block <= 999 and block != 555
    return {"+14155550100": f"+1415{block}0100", "+14155550199": f"+1415{block}0199",
            "+442071234567": f"+44207{block}4567"}[number]


def example_doc(tenant: str = "acme", block: int = 0) -> dict[str, Any]:
    """examples/acme.json as `tenant`'s document, with numbers of its own (block as in own_number)."""
    text = EXAMPLE.read_text()
    for number in OWN_NUMBERS:
        text = text.replace(f'"{number}"', f'"{own_number(number, block)}"')
    doc = json.loads(text)
    doc["tenant"] = tenant
    return doc


class Server:
    """`python -m callgate serve` in a subprocess; logs collected; stopped by its PID."""

    def __init__(self, data_dir: Path, *args: str, seed: Path | None = EXAMPLE, listen: str = "127.0.0.1:0",
                 workers: int = 1, wait: bool = True, metrics: str = "") -> None:
        self.data_dir = data_dir
        cmd = [sys.executable, "-m", "callgate", "serve", "--listen", listen, "--data-dir", str(data_dir),
               "--metrics", metrics, "--workers", str(workers), "--poll", "0.1", *args]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.logs: list[dict] = []
        self.port: int | None = int(listen.rsplit(":", 1)[1]) or None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            self.wait_listening(workers)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"msg": line.rstrip()}
            self.logs.append(record)
            if record.get("event") == "listening":
                self.port = int(record["address"].rsplit(":", 1)[1])
                if sum(1 for r in self.logs if r.get("event") == "listening") >= self._want:
                    self._listening.set()

    _want = 1

    def wait_listening(self, workers: int = 1, timeout: float = 60) -> None:
        self._want = workers
        if sum(1 for r in self.logs if r.get("event") == "listening") >= workers:
            self._listening.set()
        if not self._listening.wait(timeout):
            self.stop()
            raise RuntimeError(f"server did not start; logs: {self.logs[-20:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", 64 << 20),
                                                            ("grpc.max_receive_message_length", 64 << 20)])

    def stop(self, timeout: float = 20) -> int | None:
        return stop_process(self.proc, timeout)

    def events(self, name: str) -> list[dict]:
        return [r for r in self.logs if r.get("event") == name]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; return its value (or raise after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)
