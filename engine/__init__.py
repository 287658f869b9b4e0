"""callgate's decision engine: settings, compiled snapshots and decisions.

The public API is plain Python over the compiled core (`engine._core`):

    from engine import Engine, parse_settings
    engine = Engine()
    engine.push(parse_settings(open("examples/acme.json").read()), version=1)
    engine.inbound("acme", "+14155550666", "+14155550199", at=1796149800).reason  # 'BLACKLISTED'

`engine.reference.Reference` decides the same in plain Python; see
docs/decisions.md for the semantics both follow.
"""

from ._core import CoreDecision, CoreSnapshot
from .decision import Decision, RingingCall
from .engine import Engine, UnknownTenant, instant
from .settings import Settings, SettingsError, load_document, parse_settings
from .snapshot import compile_settings, dumps, loads, micro_units, with_documents

__all__ = [
    "CoreDecision",
    "CoreSnapshot",
    "Decision",
    "Engine",
    "RingingCall",
    "Settings",
    "SettingsError",
    "UnknownTenant",
    "compile_settings",
    "dumps",
    "instant",
    "load_document",
    "loads",
    "micro_units",
    "parse_settings",
    "with_documents",
]
