"""Keeps development/architecture.md's table of the library's layers true to tests/test_layers.py,
which enforces them: every module its LAYERS lists must be named in the table's row of the same
layer (`name.py`, or `name/` for a package), or the build stops and says which."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
PAGE = "development/architecture.md"


def layers() -> list[set[str]]:
    """LAYERS of tests/test_layers.py (lowest first), read without running it."""
    tree = ast.parse((ROOT / "tests" / "test_layers.py").read_text())
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "LAYERS" for t in stmt.targets):
            return [set(ast.literal_eval(s)) for s in stmt.value.elts]
    raise PluginError("tests/test_layers.py has no LAYERS")


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE:
        return markdown
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) [^|]*\|([^|]*)\|", markdown, re.M)}
    wrong = []
    for level, names in enumerate(layers()):
        row = rows.get(level, "")
        for name in sorted(names):
            if f"`{name}.py`" not in row and f"`{name}/`" not in row:
                wrong.append(f"{name} (layer {level})")
    if wrong:
        raise PluginError(
            f"docs/{PAGE}: the table of layers does not name {', '.join(wrong)} in the row of its layer "
            "in tests/test_layers.py"
        )
    return markdown
