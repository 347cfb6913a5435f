"""The tutorial notebook (docs/tutorials/resnet18_api.ipynb) runs as a reader runs it: a
torchvision ResNet-18 trained and saved by its plain PyTorch loop, the single-unit sweep at the
units' means through `knockout.ablate` on the reader's DataLoader (whose baseline must equal the
reader's own evaluation: the notebook asserts it), the figure, and the config it writes for the
rerun over seeds, which the workflow accepts (a dry run, its checkpoint checked)."""

from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, needs_fashion, snakemake

TUTORIAL = ROOT / "docs" / "tutorials" / "resnet18_api.ipynb"


def test_the_tutorial_is_stored_clean():
    nb = nbformat.read(TUTORIAL, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1


@pytest.mark.slow
@needs_fashion
def test_the_tutorial_runs_and_its_config_is_accepted(tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "tutorial.ipynb"
    papermill.execute_notebook(
        str(TUTORIAL),
        str(out),
        parameters={"n_train": 600, "n_test": 300, "epochs": 1},
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    text = "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )
    assert "knockout's baseline" in text and "figures:" in text
    accuracy = float(text.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.3  # well above chance (0.1): a trained network, not a random one
    assert (tmp_path / "figures" / "single_unit.png").stat().st_size > 0
    config = tmp_path / "resnet18_study.yaml"
    run = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(tmp_path / "checkpoints" / "resnet18_seed0.pt").is_file()
