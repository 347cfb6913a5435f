"""A record of what produced the results: the resolved config, knockout's version, package
versions, device, the workflow's git commit and data checksums, written next to the results
(`results/provenance.json`)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import __version__

PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "scipy",
    "seaborn",
    "matplotlib",
    "snakemake",
    "papermill",
    "jsonschema",
    "pyyaml",
)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo: Path | None) -> dict:
    """The commit of `repo` and whether the work tree had uncommitted changes (None without git,
    or without a folder: a workflow read from a repository, which its knockout version names)."""
    if repo is None:
        return {"commit": None, "dirty": None}
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def device_info() -> dict:
    import torch

    info = {"cuda_available": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def record(
    config: dict, manifests: list[Path], repo: Path | None, metas: list[Path] = (), preprocess: dict | None = None
) -> dict:
    """Everything above as one dict; `repo` is the workflow's folder (None: not on disk),
    `manifests` the datasets' verified-download manifests, `metas` the prepared views' meta.json,
    `preprocess` each model's resolved preprocessing and view (its mean and std filled from the
    view's statistics where they are the dataset's)."""
    stats = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in metas}
    models = {}
    for model, resolved in (preprocess or {}).items():
        meta = stats.get(resolved["view"], {})
        models[model] = resolved | {
            k: resolved[k] if resolved.get(k) is not None else meta.get(k) for k in ("mean", "std")
        }
    data = {}
    for path in map(Path, manifests):
        manifest = json.loads(path.read_text())
        # An image folder's manifest lists every image: its digest stands for the listing here.
        listing = (
            {"files": len(manifest["files"]), "listing_sha256": manifest["listing_sha256"]}
            if "listing_sha256" in manifest
            else None
        )
        data[manifest["dataset"]] = listing or manifest["files"]
    return {
        "config": config,
        "knockout": __version__,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device_info(),
        "git": git_commit(repo),
        "data": data,
        "preprocess": models,
    }
