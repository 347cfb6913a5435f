"""The documentation's figures, from a run of the default study: runs it (`snakemake --cores all`
in the repository root; what is up to date is not redone), then copies every figure it drew,
results/figures/{analysis}/{figure}.png, to docs/figures/{analysis}/ (and nothing else: a figure
the run no longer draws is removed from the docs).

    .venv/bin/python docs/make_figures.py            # run the default study, then copy
    .venv/bin/python docs/make_figures.py --no-run   # copy what results/figures holds
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-run", action="store_true", help="copy the figures results/figures holds")
    args = parser.parse_args(argv)
    if not args.no_run:
        snakemake = Path(sys.executable).with_name("snakemake")
        subprocess.run([str(snakemake), "--cores", "all"], cwd=ROOT, check=True)
    source, target = ROOT / "results" / "figures", ROOT / "docs" / "figures"
    if not source.is_dir():
        sys.exit(f"no figures at {source}: run the default study first")
    shutil.rmtree(target, ignore_errors=True)
    for png in sorted(source.glob("*/*.png")):
        (target / png.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, target / png.parent.name / png.name)
        print(f"{png.relative_to(ROOT)} -> {(target / png.parent.name / png.name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
