"""`index --ray`: decode and embed on a real (local, 2-CPU) Ray cluster give the local path's results.

One Ray cluster for the session (`ray.init(num_cpus=2)`, ~2 s); the tests run the product's own code
against it, in this process (Index.add(ray=...)) and as a `dinosearch index --ray ADDRESS` subprocess,
one of which is killed (-9) mid-run and run again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dinosearch import Index
from dinosearch.errors import DinosearchError, PathNotFoundError
from dinosearch.records import ImageFile

from . import hostile as H
from .conftest import run_cli
from .images import jpeg_bytes, photo, with_exif_orientation
from .storecheck import DB, _assert_faiss_equals_sqlite, rows

FAULTS_ENV = "DINOSEARCH_TEST_DECODE_FAULTS"
TIMEOUT = 10.0  # seconds a decode may take here: the hanging file's, and a crashed file's retry on a new worker


@pytest.fixture(scope="session")
def ray_address() -> str:
    """A local Ray cluster of 2 CPUs whose workers honour the test-only decode faults."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'dinosearch[ray]' (the test extra has it)")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": {FAULTS_ENV: "1"}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _folder(root: Path) -> dict[str, str | None]:
    """Good, corrupt, huge and hostile files. name -> the failure kind expected (None: indexed)."""
    files = {
        "a.jpg": (jpeg_bytes(photo(640, 480, seed=1)), None),
        "b.png": (H.encode(photo(300, 200, seed=2), "PNG"), None),
        "sub/c.jpg": (with_exif_orientation(photo(400, 300, seed=3), 6), None),
        "sub/copy-of-a.jpg": (jpeg_bytes(photo(640, 480, seed=1)), None),
        "d.webp": (H.encode(photo(256, 256, seed=4), "WEBP"), None),
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg_bytes(photo(320, 240, seed=5))[:4000], "corrupt"),
        "pdf.jpg": (H.PDF, "not-an-image"),
        "absurd.png": (H.png(65535, 65535, rows=1), "too-large"),
        "codec-segfault.jpg": (H.fault("segfault"), "crashed"),
        "codec-hang.jpg": (H.fault("hang"), "timeout"),
    }
    for name, (data, _) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {name: kind for name, (_, kind) in files.items()}


def _state(index_dir: Path, root: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """(path -> (hash, size, mtime, format, vector)), (path -> failure kind), paths relative to root."""
    with Index(index_dir, create=False) as ix:
        found = {os.path.relpath(p, root): (r.content_hash, r.size, r.mtime_ns, ix.file_of(r.id)["format"],
                                             np.frombuffer(r.vector, dtype="<f4"))
                 for p, r in rows(index_dir).items()}
        failed = {os.path.relpath(f.path, root): f.error for f in ix.failures()}
    return found, failed


def test_ray_gives_the_local_rows_vectors_and_failures(ray_address, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, "1")  # the local decode workers inherit it
    root = tmp_path / "photos"
    expected = _folder(root)
    with Index(tmp_path / "local", model=tiny_model, workers=2) as ix:
        local_report = ix.add(root, decode_timeout=TIMEOUT)
    with Index(tmp_path / "ray", model=tiny_model) as ix:
        ray_report = ix.add(root, decode_timeout=TIMEOUT, ray="auto")  # this process's cluster

    assert (ray_report.added, ray_report.failed) == (local_report.added, local_report.failed) == (5, 6)
    local, local_failed = _state(tmp_path / "local", root)
    got, got_failed = _state(tmp_path / "ray", root)
    assert got_failed == local_failed == {n: k for n, k in expected.items() if k is not None}
    assert set(got) == set(local) == {n for n, k in expected.items() if k is None}
    for name, (h, size, mtime, fmt, v) in got.items():
        assert (h, size, mtime, fmt) == local[name][:4], name
        assert float(v @ local[name][4]) >= 0.9999, name
    with Index(tmp_path / "ray", create=False) as ix:  # searchable: FAISS was written by the same writer
        assert ix.stats().vectors == 5
        assert ix.search(root / "a.jpg", k=1)[0].path == str(root / "sub" / "copy-of-a.jpg")


def test_incremental_rules_through_ray(ray_address, tiny_model, tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(4):
        (root / f"p{i}.jpg").write_bytes(jpeg_bytes(photo(320, 240, seed=10 + i)))
    with Index(tmp_path / "ix", model=tiny_model) as ix:
        first = ix.add(root, ray="auto")
        assert (first.added, first.embedded, first.failed) == (4, 4, 0)
        before = rows(tmp_path / "ix")

        (root / "new.jpg").write_bytes(jpeg_bytes(photo(320, 240, seed=20)))  # add
        (root / "p0.jpg").write_bytes(jpeg_bytes(photo(300, 200, seed=21)))  # modify
        os.rename(root / "p1.jpg", root / "renamed.jpg")  # rename: the stored vector is reused
        (root / "p2.jpg").unlink()  # delete
        again = ix.add(root, ray="auto")
        assert (again.added, again.updated, again.removed, again.unchanged, again.failed) == (2, 1, 2, 1, 0)
        assert again.embedded == 2  # the new file and the modified one; the rename needed no model
        after = rows(tmp_path / "ix")
        assert set(after) == {str(root / n) for n in ("p0.jpg", "renamed.jpg", "p3.jpg", "new.jpg")}
        assert after[str(root / "p0.jpg")].id == before[str(root / "p0.jpg")].id  # a changed file keeps its id
        assert after[str(root / "renamed.jpg")].vector == before[str(root / "p1.jpg")].vector

        unchanged = ix.add(root, ray="auto")
        assert (unchanged.added, unchanged.updated, unchanged.removed, unchanged.unchanged) == (0, 0, 0, 4)
        with pytest.raises(PathNotFoundError):
            ix.add(tmp_path / "not-there", ray="auto")
        assert rows(tmp_path / "ix") == after  # the missing root changed nothing

        other = tmp_path / "other"  # another root: a copy of an indexed photo is read by its task
        other.mkdir()
        (other / "same.jpg").write_bytes((root / "p3.jpg").read_bytes())
        (other / "fresh.jpg").write_bytes(jpeg_bytes(photo(320, 240, seed=30)))
        copied = ix.add(other, ray="auto")
        assert (copied.added, copied.embedded, copied.failed) == (2, 1, 0)  # the copy took the stored vector
        assert rows(tmp_path / "ix")[str(other / "same.jpg")].vector == after[str(root / "p3.jpg")].vector


def test_a_node_that_cannot_read_a_root_stops_the_run_early(ray_address):
    import ray

    from dinosearch.ray_cluster import check_nodes_can_read

    missing = ImageFile(path="/nonexistent-root/x.jpg", root="/nonexistent-root", size=1, mtime_ns=0)
    with pytest.raises(DinosearchError, match="cannot read /nonexistent-root.*same path"):
        check_nodes_can_read(ray, [missing])


def test_cli_ray_address_gives_the_same_json_report(ray_address, tiny_model, tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        (root / f"p{i}.jpg").write_bytes(jpeg_bytes(photo(200, 150, seed=30 + i)))
    (root / "bad.jpg").write_bytes(b"not an image at all")
    env = {**os.environ, "DINOSEARCH_INDEX": str(tmp_path / "ix"), "DINOSEARCH_MODEL": tiny_model}
    proc = run_cli("index", str(root), "--json", "--ray", ray_address, env=env, check=True)
    report = json.loads(proc.stdout)
    assert set(report) == {"added", "updated", "removed", "unchanged", "failed", "seconds", "images_per_second"}
    assert (report["added"], report["failed"]) == (3, 1)
    failures = json.loads(run_cli("failures", "--json", env=env, check=True).stdout)
    assert [(Path(f["path"]).name, f["error"]) for f in failures] == [("bad.jpg", "not-an-image")]


RESUME_FILES = 400  # more than one commit chunk (the writer commits every 256 rows or 5 s): the kill lands mid-run


def _committed(index_dir: Path) -> int:
    """Rows committed so far, read-only while a run writes; 0 before the catalogue or its schema exists."""
    try:
        con = sqlite3.connect(f"file:{index_dir / DB}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # no file yet, no table yet, or a migration holding it
        return 0


def _cluster_processes() -> list[str]:
    """Titles of this process's descendants: the session's Ray cluster (started here by `ray_address`)."""
    parent, title = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, IndexError, ValueError):
                continue
    me, found = os.getpid(), []
    for pid, p in parent.items():
        while p in parent and p not in (me, 0, 1):
            p = parent[p]
        if p == me and pid in title:
            found.append(title[pid])
    return found


def _run_workers() -> list[str]:
    """The cluster's processes running an index run's remote code (Ray titles them `ray::NAME`)."""
    from dinosearch.ray_cluster import ModelActor, decode_task, unreadable

    names = tuple(f"ray::{fn.__name__}" for fn in (ModelActor, decode_task, unreadable))
    return [t for t in _cluster_processes() if t.startswith(names)]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the cluster's worker processes in /proc")
def test_a_killed_driver_resumes_with_the_committed_work_kept(ray_address, tiny_model, tmp_path):
    root, index_dir = tmp_path / "photos", tmp_path / "ix"
    root.mkdir()
    for i in range(RESUME_FILES):
        (root / f"p{i:04d}.jpg").write_bytes(jpeg_bytes(photo(64, 48, seed=100 + i)))
    args = ["index", str(root), "--index", str(index_dir), "--model", tiny_model, "--ray", ray_address, "--json"]
    assert any("raylet" in t for t in _cluster_processes()), "the session's Ray cluster is not this process's child"

    with open(tmp_path / "killed.err", "w+") as err:
        driver = subprocess.Popen([sys.executable, "-m", "dinosearch", *args], stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 300
            while _committed(index_dir) == 0 and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            at_kill = _run_workers()
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.kill()
            driver.wait()
        err.seek(0)
        assert driver.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{err.read()}"
    kept = rows(index_dir)  # what the killed driver had committed
    assert 0 < len(kept) < RESUME_FILES
    assert any(t.startswith("ray::ModelActor") for t in at_kill), at_kill  # it was embedding on the cluster

    # The run's actors and tasks were the driver's own (not detached): the cluster ends them with it.
    # They never wrote to the index (the driver is its only writer), and nothing did since the kill.
    deadline = time.monotonic() + 60
    while _run_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _run_workers() == [], "the killed driver's actors or tasks still run on the cluster"
    assert rows(index_dir) == kept

    again = run_cli(*args, check=True, timeout=600)  # the same command, to the end
    report = json.loads(again.stdout)
    # The committed files were planned as unchanged: never read, decoded or embedded again.
    assert (report["added"], report["updated"], report["removed"], report["unchanged"], report["failed"]) == (
        RESUME_FILES - len(kept), 0, 0, len(kept), 0)

    final = rows(index_dir)
    assert set(final) == {str(root / f"p{i:04d}.jpg") for i in range(RESUME_FILES)}
    con = sqlite3.connect(index_dir / DB)
    try:  # one row per file: no path or content twice
        counts = con.execute("SELECT count(*), count(DISTINCT path), count(DISTINCT content_hash) FROM images").fetchone()
    finally:
        con.close()
    assert counts == (RESUME_FILES,) * 3
    for path, row in kept.items():  # the same row: id, content, vector, and the time it was indexed
        assert final[path] == row, path

    from dinosearch.store import vectorindex

    with Index(index_dir, create=False) as ix:  # FAISS on disk holds exactly SQLite's rows and vectors
        loaded = vectorindex.load(ix.catalogue, ix.fingerprint.dim)
        assert not loaded.rebuilt, "the FAISS file on disk does not match SQLite"
        _assert_faiss_equals_sqlite(loaded.index, index_dir)
        assert (ix.stats().images, ix.stats().vectors) == (RESUME_FILES, RESUME_FILES)


def test_without_ray_the_flag_says_how_to_install_it(tiny_model, tmp_path):
    shadow = tmp_path / "no-ray"  # a `ray` that cannot be imported, first on the path
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    root = tmp_path / "photos"
    root.mkdir()
    (root / "p.jpg").write_bytes(jpeg_bytes(photo(200, 150, seed=40)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), *sys.path]),
           "DINOSEARCH_INDEX": str(tmp_path / "ix"), "DINOSEARCH_MODEL": tiny_model}
    proc = run_cli("index", str(root), "--ray", env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "dinosearch: --ray needs Ray, which is not installed: pip install 'dinosearch[ray]' (on every machine of the cluster)"
    ]
    assert rows(tmp_path / "ix") == {}
