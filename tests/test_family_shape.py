"""Every study type has the one protocol, is found by its module name, and is planned without
torch; the evaluated types' `apply` gives a new network and leaves the trained one as it was."""

import subprocess
import sys

import torch

from knockout.models import build_model
from knockout.engine import Context
from knockout.studies import JOBS, study_type, study_types
from specs import study_spec

TYPES = {
    "filter_ablation",
    "layer_swap",
    "ablate_then_train",
    "architecture",
    "factorize",
    "occlusion",
    "top_activations",
}
EXAMPLES = {
    "filter_ablation": {"layers": ["conv1"], "sets": {"a": {"select": "units", "units": {"conv1": [0]}}}},
    "layer_swap": {"layers": ["conv1"], "modes": ["reinit"]},
    "ablate_then_train": {"layers": ["conv1"], "sets": {"a": {"select": "units", "units": {"conv1": [0]}}}},
    "architecture": {"variants": {"wide": {"dense": [128]}}},
    "factorize": {},
    "occlusion": {},
    "top_activations": {"layers": {"conv1": 2}},
}


def test_every_type_is_a_module_with_the_protocol_of_its_job():
    assert set(study_types()) == TYPES
    for name in TYPES:
        study = study_type(name)
        assert study.job in JOBS and isinstance(study.notebook, str) and study.name == name
        assert isinstance(study.needs(study_spec(name, **EXAMPLES[name])), set)
        if study.job == "probe":  # a probe that splits into shards says how, and joins them
            assert study.shards.startswith("no: ") or study.merge is not None and study.image_count is not None
        else:
            assert study.conditions is not None and study.apply is not None


def test_conditions_start_at_baseline_and_apply_leaves_the_trained_network_untouched():
    torch.manual_seed(0)
    trained, init = build_model("study5_cnn", (1, 28, 28), 10), build_model("study5_cnn", (1, 28, 28), 10)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    ctx = Context(trained=trained, init=init)
    x = torch.randn(4, 1, 28, 28)
    for name in TYPES:
        study = study_type(name)
        if study.job == "probe":
            continue
        conditions = study.conditions(study_spec(name, **EXAMPLES[name]), ctx)
        assert conditions[0].name == "baseline"
        changed = study.apply(conditions[-1], ctx)
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(changed.parameters(), trained.parameters()))
        with torch.no_grad():
            changed.eval()(x)  # it runs
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


def test_planning_a_study_imports_no_torch():
    code = (
        "import sys, yaml\n"
        "from knockout.config import validate\n"
        "from knockout.plan import Plan\n"
        "plan = Plan(validate(yaml.safe_load(open('config.yaml'))))\n"
        "assert plan.targets() and all(plan.study_job(n) for n in plan.studies)\n"
        "print('torch' in sys.modules)\n"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
