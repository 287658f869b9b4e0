"""Real `callgate serve` processes for integration tests (loopback only)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.process import EXAMPLE, ROOT, ReplicaProcess, ServeProcess

__all__ = ["EXAMPLE", "OWN_NUMBERS", "ROOT", "ReplicaProcess", "Server", "example_doc", "own_number", "seed_tokens",
           "wait_for"]

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


def seed_tokens(data_dir: Path, roles: tuple[str, ...] = ("owner", "operator")) -> dict[str, str]:
    """A fresh store under `data_dir` holding one token per role (made before the server starts, as an owner's
    first token is); the secrets by role."""
    from server.rules.tokens import new_token
    from server.store.sqlite import SQLiteStore

    store = SQLiteStore(data_dir / "callgate.sqlite")
    tokens = {}
    try:
        for role in roles:
            ident, secret, token_hash = new_token()
            store.add_token(ident, token_hash, role, [], 0, role)
            tokens[role] = secret
    finally:
        store.close()
    return tokens


class Server(ServeProcess):
    """The shared `callgate serve` process (loadtest.process) with the tests' habit: workers poll every 0.1 s."""

    def __init__(self, data_dir: Path, *args: str, poll_s: float = 0.1, **options: Any) -> None:
        super().__init__(data_dir, *args, poll_s=poll_s, **options)


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
