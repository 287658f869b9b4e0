"""The core's own tests and the snapshot fuzz, run again against its debug build.

The debug build (setup.py with CALLGATE_DEBUG=1, `make debug`) has Cython's
bounds, wraparound and initialization checks on and is compiled `-O0 -g
-Wall -Werror`, into build/debug/engine (the in-place build is left alone).
It is built once (cythonize rebuilds only when the core's sources changed:
engine/_core.pyx, its contract _core.pxd and its _core_*.pxi sections),
next to a copy of the engine package's Python modules; then pytest runs
tests/test_core.py and tests/test_snapshot_fuzz.py in a subprocess whose
`engine` is that copy (--import-mode=append keeps the repository's own
`engine` behind it on sys.path), and which checks it has the debug module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "build" / "debug"


@pytest.fixture(scope="module")
def debug_tree() -> Path:
    env = dict(os.environ, CALLGATE_DEBUG="1")
    build = subprocess.run([sys.executable, "setup.py", "--quiet", "build_ext"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    package = DEBUG / "engine"
    for source in (ROOT / "engine").glob("*.py"):  # the pure-Python modules beside the debug extension
        shutil.copy2(source, package / source.name)
    built = sorted(package.glob("_core.*.so"))
    assert built, f"no debug extension in {package}"
    return DEBUG


def run_in(tree: Path, *args: str, examples: str = "1000", timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, CALLGATE_EXPECT_DEBUG="1", CALLGATE_FUZZ_EXAMPLES=examples,
               PYTHONPATH=os.pathsep.join([str(tree), str(ROOT)]))
    return subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_debug_module_is_the_one_imported(debug_tree: Path) -> None:
    out = run_in(debug_tree, "-c",
                 "import inspect, engine; "
                 "print(engine.DEBUG_BUILD, inspect.getfile(engine.CoreSnapshot), engine.__file__)")
    assert out.returncode == 0, out.stderr
    flag, core, package = out.stdout.split()
    assert flag == "True"
    assert Path(core).parent == debug_tree / "engine"
    assert Path(package).parent == debug_tree / "engine"


def test_core_and_snapshot_fuzz_pass_against_the_debug_build(debug_tree: Path) -> None:
    out = run_in(debug_tree, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=append",
                 "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
                 str(ROOT / "tests" / "test_core.py"), str(ROOT / "tests" / "test_snapshot_fuzz.py"))
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
