"""Concurrent jobs on a several-GPU machine take different GPUs."""

import subprocess
import sys
from pathlib import Path

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
        subprocess.Popen([sys.executable, "-c", code, str(ROOT / "src"), str(tmp_path)], stdout=subprocess.PIPE, text=True)
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
