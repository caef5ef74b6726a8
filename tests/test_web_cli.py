"""`dinosearch serve`: a real server process on loopback, started and stopped like a user would."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.images import jpeg_bytes, photo
from tests.test_web_support import shared_index


@pytest.fixture(scope="module")
def web_index(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    return shared_index(tmp_path_factory, tiny_model)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_never_imports_the_web_app() -> None:
    code = (
        "import sys, dinosearch.cli; "
        "bad = [m for m in ('fastapi', 'uvicorn', 'dinosearch.web.app', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_serve_without_an_index_fails_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    proc = run_cli("serve", "--index", str(tmp_path / "nothing"), "--port", "1", env=env, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("dinosearch: ") and "Traceback" not in proc.stderr


def test_serve_refuses_an_impossible_backend_before_starting(web_index: Path, env: dict[str, str]) -> None:
    proc = run_cli("serve", "--index", str(web_index), "--port", "1", "--backend", "onnxruntime", "--precision", "bf16",
                   env=env, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("dinosearch: ") and "fp32 or int8" in proc.stderr
    assert "Uvicorn running" not in proc.stderr + proc.stdout


def test_serve_runs_until_interrupted(web_index: Path, env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinosearch", "serve", "--index", str(web_index), "--port", str(port)],
        env={**env, "DINOSEARCH_API_KEY": "k3y"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=url, timeout=30) as c:
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
            assert c.get("/").status_code == 200
            assert c.get("/api/stats").status_code == 401  # the key came from $DINOSEARCH_API_KEY
            auth = {"Authorization": "Bearer k3y"}
            assert c.get("/api/stats", headers=auth).json()["images"] > 0
            r = c.post("/api/search", headers=auth, files={"image": ("q.jpg", jpeg_bytes(photo(128, 128, seed=5)), "image/jpeg")})
            assert r.status_code == 200 and r.json()["results"]
            assert c.get("/", headers={"Host": "rebind.attacker.example"}).status_code == 400
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "k3y" not in out  # the key is never logged
