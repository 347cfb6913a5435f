"""Concurrent jobs on a several-GPU machine take different GPUs; a job keeps the memory it frees."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from knockout.devices import claim_gpu, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def test_concurrent_processes_claim_different_gpus(tmp_path):
    # Each child claims a GPU among 3 and holds it while the others start.
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from knockout.devices import claim_gpu;"
        "print(claim_gpu(3, sys.argv[2]), flush=True); time.sleep(3)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(ROOT / "src"), str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    claimed = sorted(int(p.stdout.readline()) for p in procs)
    for p in procs:
        p.wait(timeout=60)
    assert claimed == [0, 1, 2]
    assert claim_gpu(3, tmp_path) == 0  # freed when the holders exited


def test_auto_is_cpu_without_cuda():
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


# Allocates and frees a 32 MB tensor 40 times (after 8 while the heap grows); prints the page faults.
_FAULTS = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
from knockout.devices import keep_freed_memory
kept = keep_freed_memory() if sys.argv[2] == "keep" else None
for _ in range(8):
    torch.ones(8 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.ones(8 << 20)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_kept_memory_is_reused():  # every job calls keep_freed_memory first (jobs._start)
    def faults(mode):
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS, str(ROOT / "src"), mode], capture_output=True, text=True, check=True
        )
        kept, count = out.stdout.split()
        return kept, int(count)

    kept, with_it = faults("keep")
    _, without = faults("default")
    assert kept == "True"
    assert without > 40 * 8000  # every 32 MB buffer came back as fresh pages (8,192 of them)
    assert with_it <= 2 * 8192  # the freed buffer was taken again (the heap may still grow once or twice)
