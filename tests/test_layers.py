"""The library's layers (README, "Architecture"): every import, function-local ones included,
goes to the same layer or a lower one, and no module reads another module's private names."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "knockout"

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS = [
    {"errors", "io", "catalog", "archs", "devices", "provenance", "targets", "settings", "paths"},  # facts and files
    # the traced network; pure computations; the figures
    {"graph", "readout", "preprocess", "stats", "tables", "analysis", "figures"},
    # datasets and models (and rewrites of a built one); the user's data as the engine reads it
    {"sources", "models", "activations", "data", "loaders", "factorization"},
    {"engine", "units", "trainer"},  # evaluating, probing, training
    {"studies"},  # one module per study type
    {"plan", "config", "shards", "api"},  # what the workflow runs; the same from Python
    {"jobs", "commands"},  # what one rule's job, or one person's command, does
    {"cli", "__main__"},  # argument parsing
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every knockout import in `path`, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "knockout":  # from . import sources: the modules themselves
                out += [(node.lineno, f"knockout.{a.name}", []) for a in node.names]
            elif module.startswith("knockout."):
                out.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("knockout.")]
    return out


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return LAYER.get(top, -1)


MODULES = sorted(p for p in SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted({module_name(p) for p in MODULES if module_name(p) != "knockout" and layer_of(module_name(p)) < 0})
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_down_and_read_no_private_names(path):
    here = module_name(path)
    if here == "knockout":
        return
    for line, module, names in imports(path):
        assert layer_of(module) <= layer_of(
            here
        ), f"{path.name}:{line}: {here} (layer {layer_of(here)}) imports {module} (layer {layer_of(module)})"
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{path.name}:{line}: {here} imports private {private} from {module}"


def test_no_module_imports_itself_through_others():
    """No import circle, function-local imports included: following a module's imports never
    leads back to it."""
    graph = {module_name(p): {m for _, m, _ in imports(p)} for p in MODULES}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            assert nxt not in path, f"import circle: {' -> '.join(path[path.index(nxt):] + [nxt])}"
            if nxt in graph and nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
