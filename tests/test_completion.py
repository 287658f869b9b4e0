"""Shell completion of the `callgate` command (argcomplete): the installed console script answers argcomplete's
protocol, and `callgate completion bash` is code that makes bash complete through it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .serving import ROOT

CALLGATE = Path(sys.executable).parent / "callgate"   # the console script `make` installs (editable) in .venv


def complete(line: str, tmp_path: Path, program: list[str] | None = None, start: int = 1) -> list[str]:
    """What `callgate` offers for `line` (the cursor at its end), asked the way the shell code asks."""
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": str(start), "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}
    done = subprocess.run(program or [str(CALLGATE)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return sorted(word.strip() for word in out.read_text().split("\n") if word.strip())


@pytest.mark.skipif(not CALLGATE.exists(), reason="the callgate console script is not installed (run make)")
def test_the_console_script_completes_commands_and_options(tmp_path: Path) -> None:
    assert complete("callgate ten", tmp_path) == ["tenant"]
    assert {"serve", "settings", "tenant", "completion", "loadtest", "billing"} <= set(complete("callgate ", tmp_path))
    assert complete("callgate se", tmp_path) == ["serve", "settings"]
    assert complete("callgate tenant r", tmp_path) == ["remove"]
    assert complete("callgate tenant remove --c", tmp_path) == ["--confirm"]
    assert complete("callgate --server 127.0.0.1:1 tenant remove --d", tmp_path) == ["--dry-run"]
    assert complete("callgate completion ", tmp_path) == ["--help", "-h", "bash", "fish", "zsh"]


def test_python_m_callgate_completes_too(tmp_path: Path) -> None:
    # `python -m callgate ...`: the words start at the third (argcomplete's _ARGCOMPLETE=3)
    line = f"{sys.executable} -m callgate tenant r"
    assert complete(line, tmp_path, [sys.executable, "-m", "callgate"], start=3) == ["remove"]


def test_the_module_of_the_console_script_carries_the_marker() -> None:
    # argcomplete's global completion (activate-global-python-argcomplete) completes a console script whose
    # module says so in its first 1024 bytes
    assert b"PYTHON_ARGCOMPLETE_OK" in (ROOT / "server" / "cli" / "main.py").read_bytes()[:1024]


@pytest.mark.skipif(not CALLGATE.exists() or shutil.which("bash") is None, reason="needs bash and the console script")
def test_bash_completes_with_the_printed_code(tmp_path: Path) -> None:
    script = """
        eval "$(callgate completion bash)"
        COMP_WORDS=(callgate tenant remove --f); COMP_CWORD=3
        COMP_LINE="callgate tenant remove --f"; COMP_POINT=${#COMP_LINE}
        _python_argcomplete callgate
        echo "${COMPREPLY[@]}"
    """
    env = {**os.environ, "PATH": f"{CALLGATE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["--force"]
    for shell in ("zsh", "fish"):
        code = subprocess.run([str(CALLGATE), "completion", shell], capture_output=True, text=True, timeout=60)
        assert code.returncode == 0 and "callgate" in code.stdout
