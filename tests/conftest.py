"""Shared fixtures: a tiny random DINOv2 saved to disk and loaded through the product's own code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# No test may reach the network: models load from local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from dinosearch.devmodel import save_random_dinov2

    return str(save_random_dinov2(tmp_path_factory.mktemp("tiny-dinov2"), shape="tiny", seed=0))


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Same shape, other weights: a different model as far as an index is concerned."""
    from dinosearch.devmodel import save_random_dinov2

    return str(save_random_dinov2(tmp_path_factory.mktemp("other-dinov2"), shape="tiny", seed=1))


@pytest.fixture()
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture()
def env(index_dir: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for CLI runs: the index and model come from the documented variables."""
    monkeypatch.setenv("DINOSEARCH_INDEX", str(index_dir))
    monkeypatch.setenv("DINOSEARCH_MODEL", tiny_model)
    return {**os.environ, "DINOSEARCH_INDEX": str(index_dir), "DINOSEARCH_MODEL": tiny_model}


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """`dinosearch ARGS` as a real subprocess (python -m, so the test venv's interpreter is used)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dinosearch", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dinosearch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium installed (Debian package `chromium`); the browser test needs it")
    return path
