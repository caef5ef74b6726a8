"""Concurrent use: a second `index` on the same index fails fast, naming the first (an OS file lock); the
first is unaffected; readers keep working meanwhile.

The first run is a real `dinosearch index` held still at a chosen point by the kill harness's pause hook,
so the second one meets it at exactly that moment. (`serve` answering queries while `index` runs is
tested with the web app.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from .conftest import run_cli
from .images import jpeg_bytes, photo
from .killharness import Zygote, shared_zygote
from .storecheck import check_final, rows

N = 6

# The first run is held still by the kill harness's zygote (fork, /proc): Linux only.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs the Linux kill harness")


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Zygote:
    return shared_zygote(tmp_path_factory.getbasetemp() / "zygote")


def _tree(root: Path) -> None:
    for i in range(N):
        path = root / f"p{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(photo(96, 72, seed=300 + i)))


def _wait_paused(flag: Path, timeout: float = 90) -> int:
    paused = Path(str(flag) + ".paused")
    deadline = time.monotonic() + timeout
    while not paused.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the first run never reached its pause point ({flag.name})")
        time.sleep(0.05)
    time.sleep(0.05)
    return int(paused.read_text())


def _argv(root: Path, index_dir: Path, model: str) -> list[str]:
    return ["index", str(root), "--index", str(index_dir), "--model", model, "--workers", "1", "--batch-size", "2", "--json"]


@pytest.mark.parametrize(
    "pause_at",
    [
        "sql.commit#3",  # inside a write transaction, before its COMMIT
        "faiss.written#1",  # while the FAISS file is being written
        "sql.commit#1",  # a new index, inside its first migration
    ],
)
def test_second_index_run_fails_fast_naming_the_first(zygote: Zygote, tmp_path: Path, tiny_model: str, pause_at: str) -> None:
    root, index_dir, flag = tmp_path / "photos", tmp_path / "index", tmp_path / "hold"
    _tree(root)
    flag.write_text("")
    first = zygote.start(_argv(root, index_dir, tiny_model), pause_at=pause_at, pause_flag=str(flag), commit_every=2,
                         preload={"model": tiny_model, "device": "auto", "precision": "auto", "batch_size": 2})
    try:
        pid = _wait_paused(flag)
        env = {**os.environ, "DINOSEARCH_MODEL": tiny_model}
        started = time.monotonic()
        second = run_cli("index", str(root), "--index", str(index_dir), env=env, timeout=60)
        waited = time.monotonic() - started
        # Readers are not blocked by the writer.
        stats = None if pause_at == "sql.commit#1" else run_cli("stats", "--index", str(index_dir), "--json", env=env, timeout=60)
        seen = len(rows(index_dir))
    finally:
        flag.unlink()
        done = zygote.result(first, timeout=120)  # always collected: the zygote answers in order
    assert second.returncode == 1, (second.stdout, second.stderr[-3000:])
    assert f"another dinosearch process is writing to {index_dir}" in second.stderr
    assert f"pid {pid} " in second.stderr and "index" in second.stderr  # names the holder and its command
    assert "Traceback" not in second.stderr
    assert waited < 30, f"the second run waited {waited:.0f} s instead of failing fast"
    if stats is not None:
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["images"] == seen
    assert done["rc"] == 0, done["stderr"][-2000:]
    assert json.loads(done["stdout"])["added"] == N  # the first run is unaffected
    final = rows(index_dir)
    assert len(final) == N
    check_final(index_dir, final, dim=len(next(iter(final.values())).vector) // 4)


def test_the_lock_dies_with_its_holder(zygote: Zygote, tmp_path: Path, tiny_model: str) -> None:
    """After a writer is killed (kill -9), the next one gets the lock at once: no stale lock to clear."""
    root, index_dir = tmp_path / "photos", tmp_path / "index"
    _tree(root)
    killed = zygote.run(_argv(root, index_dir, tiny_model), kill_at="write.done#1", commit_every=2)
    assert killed["rc"] == -9
    assert (index_dir / "writer.lock").exists()
    again = zygote.run(_argv(root, index_dir, tiny_model), commit_every=2)
    assert again["rc"] == 0, again["stderr"][-2000:]


def test_lock_message_when_the_holder_note_is_missing_or_odd(tmp_path: Path) -> None:
    import fcntl

    from dinosearch.errors import IndexLockedError
    from dinosearch.store.lock import WriterLock

    tmp_path.mkdir(exist_ok=True)
    for note in (b"", b"{not json", b'"a string"', json.dumps({"pid": 42, "host": "h", "cmd": "x" * 10}).encode()):
        path = tmp_path / "writer.lock"
        path.write_bytes(note)
        fd = os.open(path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: conflicts like another process
        try:
            with pytest.raises(IndexLockedError) as err:
                WriterLock(tmp_path).acquire()
            assert "another dinosearch process is writing to" in str(err.value)
            assert ("pid 42 on h" in str(err.value)) == (b"42" in note)
        finally:
            os.close(fd)
    with WriterLock(tmp_path):  # free again
        info = json.loads((tmp_path / "writer.lock").read_text())
        assert info["pid"] == os.getpid() and len(info["cmd"]) <= 400
