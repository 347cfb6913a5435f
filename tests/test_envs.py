"""Conda envs: every rule declares one, the files are pinned conda-forge envs, and every module a
rule's code imports (followed from its CLI verb through the library) is in its env."""

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "knockout"
# import name -> conda-forge package name
PACKAGES = {
    "torch": "pytorch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "pandas": "pandas",
    "scipy": "scipy",
    "yaml": "pyyaml",
    "jsonschema": "jsonschema",
    "tqdm": "tqdm",
    "pyarrow": "pyarrow",
    "matplotlib": "matplotlib",
    "seaborn": "seaborn",
    "papermill": "papermill",
    "PIL": "pillow",
    "safetensors": "safetensors",
}
# what a package brings along in every conda-forge build
IMPLIED = {
    "torchvision": {"pillow", "pytorch", "numpy"},
    "seaborn": {"matplotlib", "pandas", "numpy"},
    "pandas": {"numpy"},
}


def rules() -> dict[str, dict]:
    """rule name -> {env, verb} from workflow/rules/*.smk (snakefmt-formatted)."""
    found = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule \w+:)", path.read_text()):
            head = re.match(r"rule (\w+):", block)
            if not head:
                continue
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            verb = re.search(r'"knockout ([\w-]+)', block)
            found[head.group(1)] = {
                "env": (path.parent / env.group(1)).resolve() if env else None,
                "verb": verb.group(1) if verb else None,
            }
    return found


def imports_of(tree: ast.AST, module: str) -> tuple[set[str], set[str]]:
    """(external top-level names, knockout modules) imported anywhere in `tree`."""
    external, internal = set(), set()
    package = module.rsplit(".", 1)[0] if not module.endswith("__init__") else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (internal if alias.name.startswith("knockout") else external).add(
                    alias.name.split(".")[0] if not alias.name.startswith("knockout") else alias.name
                )
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                internal.add(target)
                if not node.module:
                    internal.update(f"{target}.{a.name}" for a in node.names)
            elif node.module.startswith("knockout"):
                internal.add(node.module)
            else:
                external.add(node.module.split(".")[0])
    return external, internal


def module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for candidate in (SRC / rel).with_suffix(".py"), SRC / rel / "__init__.py":
        if candidate.exists():
            return candidate
    return None


def closure(verb: str) -> set[str]:
    """External modules the CLI verb can import: the module-level imports of the CLI and of
    `knockout.jobs`, the imports of the verb's function in `knockout.jobs`, then everything the
    knockout modules they reach import (a subpackage brings all its modules: study types are
    found by name at run time). The notebook verb also runs the notebooks' own imports."""
    jobs = ast.parse((SRC / "jobs.py").read_text())
    func = next(n for n in jobs.body if isinstance(n, ast.FunctionDef) and n.name == verb.replace("-", "_"))
    module_level = [n for n in jobs.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    external, todo = set(), set()
    for node, name in [(func, "knockout.jobs"), (ast.Module(body=module_level, type_ignores=[]), "knockout.jobs")]:
        e, i = imports_of(node, name)
        external |= e
        todo |= i
    if verb == "notebook":
        import nbformat

        for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
            code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
            e, i = imports_of(ast.parse(code), "notebook")
            external |= e
            todo |= i
    todo |= {"knockout", "knockout.cli", "knockout.__main__"}
    seen = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        if path.name == "__init__.py" and name != "knockout":  # a plugin package: all its modules
            todo |= {f"{name}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"}
        tree = ast.parse(path.read_text())
        if name in ("knockout", "knockout.jobs"):  # lazy attributes; jobs: only its module level (above)
            tree = ast.Module(
                body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[]
            )
        e, i = imports_of(tree, name if path.name != "__init__.py" else f"{name}.__init__")
        external |= e
        todo |= i
    return {m for m in external if m not in sys.stdlib_module_names and m != "__future__"}


def env_packages(path: Path) -> dict[str, str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    return dict(d.split("=", 1) for d in deps if isinstance(d, str))


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_files_are_pinned_conda_forge_envs(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    for dep in env["dependencies"]:
        assert isinstance(dep, str) and re.fullmatch(r"[\w.-]+=[\w.]+", dep), f"{path.name}: {dep!r} is not pinned"


def test_env_pins_agree_with_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    pins = dict(re.findall(r'"([\w-]+)==([\w.]+)"', text))
    pins["pytorch"] = pins.pop("torch")
    for path in ENV_FILES:
        for name, version in env_packages(path).items():
            if name in pins:
                assert pins[name] == version, f"{path.name}: {name}={version} but pyproject pins {pins[name]}"


def test_every_rule_declares_an_env_and_calls_one_verb():
    for name, rule in rules().items():
        if name == "all":
            continue
        assert rule["env"] is not None and rule["env"].exists(), f"rule {name} has no conda env"
        assert rule["verb"], f"rule {name} does not call `knockout <verb>`"


@pytest.mark.parametrize("rule", [r for r in rules() if r != "all"])
def test_env_provides_every_module_the_rule_imports(rule):
    info = rules()[rule]
    needed = closure(info["verb"])
    have = set(env_packages(info["env"]))
    have |= set().union(*(IMPLIED.get(p, set()) for p in list(have)))
    missing = {m for m in needed if PACKAGES.get(m, m) not in have}
    assert not missing, f"rule {rule} (knockout {info['verb']}) imports {sorted(missing)}, not in {info['env'].name}"
