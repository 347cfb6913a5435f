"""Which device a job runs on, and how its process holds memory. On a machine with several GPUs,
concurrent jobs (as many as `snakemake --resources gpu=N` lets run) each take a different GPU by
holding a lock file for as long as the process lives; under SLURM, CUDA_VISIBLE_DEVICES already
names the job's GPU."""

from __future__ import annotations

import ctypes
import fcntl
import os
import tempfile
import time
from pathlib import Path

import torch

_held: list = []  # open lock files: closing them (at exit) frees the GPU


def claim_gpu(count: int, lock_dir: str | Path | None = None, wait_s: float = 3600) -> int:
    """Index of a GPU no other knockout process holds, among `count`; waits while all are taken."""
    folder = Path(lock_dir or os.environ.get("KNOCKOUT_LOCK_DIR", tempfile.gettempdir()))
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for index in range(count):
            handle = open(folder / f"knockout-gpu{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _held.append(handle)
            return index
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU among {count} after {wait_s:.0f} s")
        time.sleep(1)


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Have glibc's malloc keep freed blocks of up to `limit` bytes for the next allocation
    rather than hand them back to the OS. By default a tensor buffer freed and allocated again
    each batch comes back as fresh pages, and every first touch faults: 1.6 million faults and
    3.5 s of kernel time in a process that trains study 5's CNN for 310 steps on 2 cores;
    0.17 million and 0.6 s with this. The price: the process keeps its peak memory until it
    exits. False (and nothing changed) where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `auto`/`cuda` on several GPUs -> a free one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.device_count() > 1:
        return torch.device(f"cuda:{claim_gpu(torch.cuda.device_count())}")
    return torch.device(device)
