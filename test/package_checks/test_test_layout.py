"""No test folder may be importable as a package the code imports.

pytest puts a test file's first folder without ``__init__.py`` on ``sys.path``; a folder below it
named like an optional dependency (``test/backends/llama_cpp/``) is then found by ``import
llama_cpp`` as a namespace package where the real one is missing, so ``importorskip`` does not skip
and a new user's ``make test`` fails where it should skip.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_top_level_names() -> set[str]:
    names: set[str] = set()
    for path in list((ROOT / "aura_ros").rglob("*.py")) + list((ROOT / "test").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
                  in {"importorskip", "find_spec", "import_module"}
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_no_test_folder_shadows_an_imported_package():
    own = {"helpers", "aura_ros"}
    imported = imported_top_level_names() - own
    folders = {p.name: p for p in (ROOT / "test").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    shadowing = sorted(str(p.relative_to(ROOT)) for name, p in folders.items() if name in imported)
    assert not shadowing, f"test folders named like imported packages (rename them): {shadowing}"


def test_the_check_sees_the_optional_backends():
    # The check above is only worth something if it knows the optional backends' module names.
    assert {"llama_cpp", "mlx", "mlx_lm", "torch", "rclpy"} <= imported_top_level_names()
