"""What the CLI says on a terminal: stderr attached to a pseudo-terminal, stdout a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dinosearch.cli import app

from .images import jpeg_bytes, photo, save

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")


def on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`dinosearch ARGS` with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinosearch", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=slave, env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read as it comes, so a chatty terminal never blocks the process
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the process closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def test_query_says_it_is_loading_the_model_only_when_it_does(env: dict, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    indexed = [save(photo(160, 120, seed=s), folder / f"p{s}.jpg") for s in range(3)]
    assert CliRunner().invoke(app, ["index", str(folder)]).exit_code == 0
    new = tmp_path / "new.jpg"
    new.write_bytes(jpeg_bytes(photo(160, 120, seed=9)))

    code, out, terminal = on_a_terminal("query", str(new), "-k", "2", env=env)
    assert code == 0 and len(out.splitlines()) == 2, terminal
    assert "loading the model" in terminal and Path(env["DINOSEARCH_MODEL"]).name in terminal

    # An indexed, unchanged image uses its stored vector: no model, so nothing to announce.
    code, out, terminal = on_a_terminal("query", str(indexed[0]), "-k", "2", env=env)
    assert code == 0 and len(out.splitlines()) == 2 and "loading the model" not in terminal

    # Not on a terminal (a pipe, --json): stderr stays empty.
    r = CliRunner().invoke(app, ["query", str(new), "-k", "2"])
    assert r.exit_code == 0 and r.stderr == ""
    code, out, terminal = on_a_terminal("query", str(new), "-k", "2", "--json", env=env)
    assert code == 0 and "loading the model" not in terminal
