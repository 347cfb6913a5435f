"""The code is formatted as the project's formatters write it: black (line length 120, in
pyproject.toml) for src/, bench/ and tests/, snakefmt (black inside) for the rules; and
Snakemake's linter finds nothing in the workflow."""

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


def test_snakemake_lint_is_clean():
    """`snakemake --lint` on the default study: Snakemake's own advice on the workflow (functions
    in common.smk, a log for every rule, ...) has nothing to say."""
    done = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in done.stdout + done.stderr, done.stdout[-3000:]
