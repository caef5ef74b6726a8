"""`dinosearch serve` runs the model's OpenMP threads passively (see tests/bench/load.py for why)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dinosearch.cli import app

from .images import photo, save


def test_serve_makes_the_model_threads_wait_passively(env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    save(photo(96, 64, seed=1), tmp_path / "photos" / "a.jpg")
    assert CliRunner().invoke(app, ["index", str(tmp_path / "photos")]).exit_code == 0
    seen: dict[str, Any] = {}
    # uvicorn would serve forever: record the environment the app starts in instead.
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.update(policy=os.environ.get("OMP_WAIT_POLICY")))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert CliRunner().invoke(app, ["serve", "--port", "0"]).exit_code == 0
    assert seen == {"policy": "PASSIVE"}

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's own setting is kept
    assert CliRunner().invoke(app, ["serve", "--port", "0"]).exit_code == 0
    assert seen == {"policy": "ACTIVE"}
