"""callgate's decision engine: settings, compiled snapshots and decisions.

This package is the API the rest of callgate uses: everything the server, the
load tools and the tests need from the compiled core is exported here, so that
nothing outside `engine/` imports `engine._core` (the implementation module).

    from engine import Engine, parse_settings
    engine = Engine()
    engine.push(parse_settings(open("examples/acme.json").read()), version=1)
    engine.inbound("acme", "+14155550666", "+14155550199", at=1796149800).reason  # 'BLACKLISTED'

What it holds:

- `settings` (with `settings_model`, `settings_decode`, `settings_rules`): the
  tenant settings document, parsed strictly and validated whole.
- `snapshot`: settings compiled into a `CoreSnapshot`, serialized and loaded.
- `replica` (imported on demand: `from engine import replica`): a proxy host's
  snapshots as files that every worker process maps read-only and shares
  (`write_snapshot`, `remove_snapshot`, `held`, `open_snapshot`,
  `touch_heartbeat`, `last_heard`, `write_policy`, `read_policy`), and
  `LocalDecisions`, a worker's decisions from them (`LocalAnswer`).
- `_core` (engine/_core.pyx, its `_core_*.pxi` sections, the contract in
  `_core.pxd`): the compiled core that decides; `reference`: the same
  decisions in plain Python (docs/decisions.md is what both follow).
- `engine`: `Engine`, every tenant's snapshot in force; `decision`, `codes`,
  `dialing`, `timezones`, `document_json`, `money`: shared types, codes and tables;
  `cli`, `demo`: the offline command line.

What it may import: the standard library and its third-party dependencies
(numpy, msgpack, pyroaring, phonenumbers, tzdata), nothing from `server/`,
`loadtest/` or `callgate/`: the arrows point into the engine, never out.
"""

from ._core import (
    DEBUG_BUILD,
    INBOUND_DTYPE,
    OUTBOUND_DTYPE,
    CoreDecision,
    CoreSnapshot,
    parse_roaring64,
    roaring_index,
)
from .decision import Decision, RingingCall
from .engine import Engine, UnknownTenant, instant
from .money import MICRO, format_amount, to_micro
from .settings import E164, Settings, SettingsError, load_document, parse_settings, tenant_id_problem
from .snapshot import Built, build, compile_settings, dumps, loads, roaring_bytes, with_documents

__all__ = [
    "DEBUG_BUILD",
    "E164",
    "INBOUND_DTYPE",
    "MICRO",
    "OUTBOUND_DTYPE",
    "Built",
    "CoreDecision",
    "CoreSnapshot",
    "Decision",
    "Engine",
    "RingingCall",
    "Settings",
    "SettingsError",
    "UnknownTenant",
    "build",
    "compile_settings",
    "dumps",
    "format_amount",
    "instant",
    "load_document",
    "loads",
    "parse_roaring64",
    "parse_settings",
    "roaring_bytes",
    "roaring_index",
    "tenant_id_problem",
    "to_micro",
    "with_documents",
]
