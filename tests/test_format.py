"""The code is formatted as the project's formatters write it: black (line length 120, in
pyproject.toml) for src/, bench/ and tests/, snakefmt (black inside) for the rules."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FORMATTERS = {"black": ["src", "bench", "tests"], "snakefmt": ["Snakefile", "workflow"]}


@pytest.mark.parametrize("tool", FORMATTERS)
def test_formatted(tool):
    done = subprocess.run([str(BIN / tool), "--check", *FORMATTERS[tool]], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"run `.venv/bin/{tool} {' '.join(FORMATTERS[tool])}`:\n{done.stderr[-2000:]}"
