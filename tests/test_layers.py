"""The layers of the code, read from the imports of every module (docs/architecture.md has the picture).

    cli  ->  app  ->  rpc  ->  worker  ->  store  ->  rules  ->  engine

An import may go down the list or stay in its own layer, never up; the
engine's compiled module is imported by the engine only (the rest uses the
engine's public names); the rules import neither gRPC nor SQLite; the load
tools use the product's public client only.  Function-level (lazy) imports
count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (module prefix, layer): the longest prefix decides
LAYERS = [
    ("engine", 0),
    ("callgate", 0),                 # the generated gRPC code
    ("server.rules", 1),
    ("server.metrics", 2), ("server.tls", 2), ("server.client", 2), ("server.codegen", 2),
    ("server.store", 2),
    ("server.worker", 3),
    ("server.rpc", 4),
    ("server.app", 5), ("server.replica", 5),   # the two processes: `callgate serve`, `callgate replica`
    ("server.cli", 6),
    ("server", 6),                   # the package itself
    ("loadtest", 7),
]
PUBLIC_FOR_LOADTEST = ("server.client", "server.tls", "server.cli.progress")


def layer(module: str) -> int | None:
    best = None
    for prefix, number in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, number)
    return best[1] if best else None


def modules() -> list[tuple[str, Path]]:
    found = []
    for top in ("engine", "server", "loadtest"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            found.append((name, path))
    return sorted(found)


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (ROOT / target.replace(".", "/")).is_dir():  # `from server import x`: the package is no import
                out.append((node.lineno, target))
            for alias in node.names:  # `from server import store`: the module itself
                out.append((node.lineno, f"{target}.{alias.name}"))
    return out


MODULES = modules()


@pytest.mark.parametrize("name, path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_down_the_layers(name: str, path: Path) -> None:
    mine = layer(name)
    assert mine is not None, f"{name}: no layer (add it to LAYERS and to docs/architecture.md)"
    wrong = []
    for line, target in imports(name, path):
        theirs = layer(target)
        if theirs is None:
            continue  # the standard library or a dependency
        if theirs > mine:
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {theirs} above {mine})")
        if target.startswith("engine._core") and not name.startswith("engine"):
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}: use the engine's public names")
        if name.startswith("server.rules") and (target.split(".")[0] in ("grpc", "sqlite3")):
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}: the rules use neither gRPC nor SQLite")
        if name.startswith("loadtest") and target.startswith("server") and not target.startswith(
                PUBLIC_FOR_LOADTEST) and target != "server":
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}: the load tools use the public client")
    assert not wrong, "\n".join(wrong)


def test_the_checks_are_real() -> None:
    """The checker sees an upward import, a lazy one, a relative one and a forbidden library."""
    source = "import grpc\n\ndef f():\n    from server.app import worker\n    from ..store import api\n"
    scratch = ROOT / "build" / "layers-check" / "server" / "rules" / "x.py"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    scratch.write_text(source)
    found = imports("server.rules.x", scratch)
    assert (1, "grpc") in found and (4, "server.app.worker") in found and (5, "server.store.api") in found
    assert layer("server.app.worker") == 5 and layer("server.rules.calls") == 1 and layer("json") is None
