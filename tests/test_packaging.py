"""``pip install .`` installs only the packages setup.py lists: every package of moltbot_gw
must be there, or a non-editable install fails at import (an editable one hides it)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def listed_packages() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "packages":
            return {element.value for element in node.value.elts}
    raise AssertionError("setup.py has no packages=[...]")


def test_setup_lists_every_package_of_moltbot_gw():
    on_disk = {".".join(init.parent.relative_to(ROOT).parts)
               for init in (ROOT / "moltbot_gw").rglob("__init__.py")}
    assert on_disk - listed_packages() == set()
