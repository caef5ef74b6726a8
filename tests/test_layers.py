"""The import contract of pyproject.toml ([tool.importlinter]) holds, and it catches a forbidden import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the project's contracts over the `dinosearch` package found in `package_parent`."""
    script = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(script), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_parent)},
    )


def test_the_code_keeps_its_layers() -> None:
    r = lint_imports(ROOT, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("cli.py", "from .web import app as _web_app\n", "layers"),  # the CLI never imports the web app
        ("web/routes.py", "from ..store import catalogue as _catalogue\n", "never the store"),
        ("store/catalogue.py", "from ..api import Index as _Index\n", "layers"),  # storage below the API
        ("decode.py", "def _late():\n    from .query import combine\n", "layers"),  # a lazy import counts too
        ("index.py", "from .settings import default_index_dir as _d\n", "entry points alone"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    copy = tmp_path / "dinosearch"
    shutil.copytree(ROOT / "dinosearch", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / module, "a", encoding="utf-8") as f:
        f.write("\n" + line)
    r = lint_imports(tmp_path, tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BROKEN" in r.stdout and contract in r.stdout.split("Broken contracts", 1)[1]
