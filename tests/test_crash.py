"""Crash consistency: `kill -9` anywhere, then run again, gives a clean run's result; nothing committed
is redone. Broken FAISS files are rebuilt from SQLite; a full disk leaves the previous state intact;
schemas newer than the code are refused, every older one is migrated.

The kill harness (tests/killharness.py) kills a real `dinosearch index` at every commit and write
boundary its clean run crosses, at the first and last of each per-file step, and at random moments.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from .images import jpeg_bytes, photo
from .killharness import BOUNDARIES, PER_FILE, Zygote, shared_zygote
from .storecheck import DB, Row, _assert_faiss_equals_sqlite, check_final, check_reader_view, rows

# The harness ---------------------------------------------------------------------------------------------
N_IMAGES = 6
COMMIT_EVERY = 2
SEED = 20240531


@pytest.fixture(scope="module")
def zygotes(tmp_path_factory: pytest.TempPathFactory):
    """Two lanes: while one run waits on its decode worker or the disk, the other uses the CPU."""
    second = Zygote(tmp_path_factory.mktemp("zygote-2"))
    try:
        yield [shared_zygote(tmp_path_factory.getbasetemp() / "zygote"), second]
    finally:
        second.close()


@dataclass
class Outcome:
    spec: str
    killed: bool
    problem: str | None = None


class Harness:
    def __init__(self, zygotes: list[Zygote], base: Path, model: str):
        self.zygotes, self.base, self.model = zygotes, base, model
        self.root = base / "photos"
        self.n = 0
        self.outcomes: list[Outcome] = []
        self.free: queue.Queue = queue.Queue()
        for z in zygotes:
            self.free.put(z)
        self.lock = threading.Lock()
        self.extra: list[str] = []  # more `index` options (an --index-type)

    def argv(self, index_dir: Path) -> list[str]:
        return ["index", str(self.root), "--index", str(index_dir), "--model", self.model,
                "--workers", "1", "--batch-size", "2", "--json", *self.extra]

    def clean(self, index_dir: Path) -> tuple[list[str], float, dict]:
        trace = self.base / f"trace-{index_dir.name}"
        preload = {"model": self.model, "device": "auto", "precision": "auto", "batch_size": 2}
        for z in self.zygotes[1:]:  # each lane loads the model once, before forking
            z.run(["--help"], preload=preload)
        r = self.zygotes[0].run(self.argv(index_dir), trace=str(trace), commit_every=COMMIT_EVERY, preload=preload)
        assert r["rc"] == 0, r["stderr"]
        events = [line.split()[0] for line in trace.read_text().splitlines()]
        return events, r["seconds"], json.loads(r["stdout"])

    def kill_all(self, points: list[tuple[str, dict]], start: Path | None, reference: dict[str, Row], dim: int) -> None:
        """Every kill point, on as many lanes as there are zygotes; outcomes kept in the points' order."""
        with ThreadPoolExecutor(len(self.zygotes)) as pool:
            done = list(pool.map(lambda p: self._on_a_lane(start, p[0], reference, dim, **p[1]), points))
        self.outcomes.extend(done)

    def _on_a_lane(self, start: Path | None, spec: str, reference: dict[str, Row], dim: int, **kill) -> Outcome:
        z = self.free.get()
        try:
            return self.kill_and_rerun(z, start, spec, reference, dim, **kill)
        finally:
            self.free.put(z)

    def kill_and_rerun(self, z: Zygote, start: Path | None, spec: str, reference: dict[str, Row], dim: int, **kill) -> Outcome:
        """From `start` (a copy) or empty: run, kill at `spec`, check what a reader sees, run again, compare."""
        with self.lock:
            self.n += 1
            index_dir = self.base / f"kill-{self.n}"
        if start is not None:
            shutil.copytree(start, index_dir)
        before = rows(index_dir)
        outcome = Outcome(spec, killed=False)
        try:
            r = z.run(self.argv(index_dir), commit_every=COMMIT_EVERY, **kill)
            assert r["orphans"] == 0, f"{r['orphans']} decode workers outlived the killed indexer"
            if r["rc"] != -9:
                assert r["rc"] == 0, f"exit {r['rc']} instead of being killed: {_last_line(r['stderr'])}"
            outcome.killed = r["rc"] == -9
            committed = rows(index_dir)
            # Nothing committed before this run is lost by it, whatever the moment of the kill.
            for path, row in before.items():
                if path in reference and reference[path].content_hash == row.content_hash:
                    assert committed.get(path) == row, f"{path} changed by a run that had nothing to change"
            check_reader_view(index_dir, dim)
            again = z.run(self.argv(index_dir), commit_every=COMMIT_EVERY)
            assert again["rc"] == 0, f"the run after the kill failed: {_last_line(again['stderr'])}"
            assert again["orphans"] == 0
            report = json.loads(again["stdout"])
            # Work committed before the kill is not redone: those rows are untouched and counted unchanged.
            done = {p for p, row in committed.items() if p in reference and _same_file(row, reference[p])}
            after = rows(index_dir)
            for path in done:
                assert after[path] == committed[path], f"{path} was redone after the kill"
            assert report["unchanged"] == len(done), (report, len(done))
            assert report["added"] + report["updated"] == len(reference) - len(done), report
            check_final(index_dir, reference, dim)
        except AssertionError as exc:
            outcome.problem = (str(exc).splitlines() or ["assertion failed"])[0][:400]
        except Exception as exc:  # noqa: BLE001 - a broken index raises anything; report it with the point
            outcome.problem = f"{type(exc).__name__}: {exc}"[:400]
        finally:
            shutil.rmtree(index_dir, ignore_errors=True)
        return outcome

    def kill_points(self, phase: str, trace: list[str], duration: float, randoms: int, rng: random.Random) -> list[tuple[str, dict]]:
        """(label, how to kill): every boundary the clean run crossed, first and last per-file steps, random moments."""
        points: list[tuple[str, dict]] = [(f"{phase}: {e}", {"kill_at": e}) for e in trace if _point(e) in BOUNDARIES]
        for name in PER_FILE:
            seen = [e for e in trace if _point(e) == name]
            for e in dict.fromkeys([seen[0], seen[-1]] if seen else []):
                points.append((f"{phase}: {e}", {"kill_at": e}))
        for _ in range(randoms):
            delay = round(rng.uniform(0.05, duration), 3)
            points.append((f"{phase}: after {delay} s", {"kill_after": delay}))
        return points


def _point(spec: str) -> str:
    """'update: sql.commit#3' or 'sql.commit#3' -> 'sql.commit'."""
    return spec.rpartition(": ")[2].rpartition("#")[0]


def _last_line(text: str) -> str:
    """The exception line of a traceback, or the CLI's own error line, or the last line said."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("dinosearch: ") or re.match(r"^[\w.]*(Error|Exception)\w*: ", line):
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def _same_file(row: Row, ref: Row) -> bool:
    return (row.content_hash, row.size, row.mtime_ns) == (ref.content_hash, ref.size, ref.mtime_ns)


def _write_tree(root: Path, seeds: dict[str, int]) -> None:
    for name, seed in seeds.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = jpeg_bytes(photo(96, 72, seed=seed))
        path.write_bytes(data)


def _summary(outcomes: list[Outcome]) -> str:
    killed = [o for o in outcomes if o.killed]
    kinds = {
        "commit/write boundaries": [o for o in killed if _point(o.spec) in BOUNDARIES],
        "per-file steps": [o for o in killed if _point(o.spec) in PER_FILE],
        "random moments": [o for o in killed if not _point(o.spec)],
    }
    lines = [
        f"kill points tried: {len(outcomes)}; killed there: {len(killed)}; held: {sum(1 for o in killed if o.problem is None)}; "
        f"random kills that came after the run had finished: {sum(1 for o in outcomes if not o.killed)}",
        "  killed at " + ", ".join(f"{len(v)} {k}" for k, v in kinds.items()),
    ]
    lines += [f"  FAILED {o.spec}: {o.problem}" for o in outcomes if o.problem]
    return "\n".join(lines)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kill harness forks a warm zygote and reads /proc")
def test_kill_at_every_boundary_then_run_again(zygotes: list[Zygote], tmp_path: Path, tiny_model: str) -> None:
    """A first index of a folder, then an incremental run (adds, an edit, deletes, a rename), each killed
    at every commit / write boundary it crosses, at per-file steps and at random moments."""
    rng = random.Random(SEED)
    h = Harness(zygotes, tmp_path, tiny_model)
    _write_tree(h.root, {f"{'a' if i % 2 else 'b'}/p{i}.jpg": i for i in range(N_IMAGES)})

    # Phase 1: a new index.
    ref1_dir = tmp_path / "ref1"
    trace1, seconds1, report1 = h.clean(ref1_dir)
    assert report1["added"] == N_IMAGES
    ref1 = rows(ref1_dir)
    dim = len(next(iter(ref1.values())).vector) // 4
    check_final(ref1_dir, ref1, dim)
    h.kill_all(h.kill_points("new index", trace1, seconds1, randoms=3, rng=rng), None, ref1, dim)
    phase1 = list(h.outcomes)

    # Phase 2: the folder changes; the update is killed everywhere too.
    (h.root / "a" / "p1.jpg").unlink()
    (h.root / "b" / "p2.jpg").unlink()
    (h.root / "a" / "p3.jpg").write_bytes(jpeg_bytes(photo(80, 80, seed=103)))  # edited
    (h.root / "a" / "p5.jpg").rename(h.root / "b" / "renamed.jpg")  # moved: its vector is reused
    _write_tree(h.root, {f"c/new{i}.jpg": 200 + i for i in range(2)})
    ref2_dir = tmp_path / "ref2"
    shutil.copytree(ref1_dir, ref2_dir)
    trace2, seconds2, report2 = h.clean(ref2_dir)
    assert (report2["added"], report2["updated"], report2["removed"]) == (3, 1, 3), report2
    ref2 = rows(ref2_dir)
    check_final(ref2_dir, ref2, dim)
    for path in ("a/p3.jpg", "b/p0.jpg"):  # ids are stable through edits
        assert ref2[str(h.root / path)].id == ref1[str(h.root / path)].id
    new_ids = [ref2[str(h.root / p)].id for p in ("b/renamed.jpg", "c/new0.jpg", "c/new1.jpg")]
    assert min(new_ids) > max(r.id for r in ref1.values())  # never a reused id
    h.kill_all(h.kill_points("update", trace2, seconds2, randoms=2, rng=rng), ref1_dir, ref2, dim)

    summary = _summary(h.outcomes)
    print(summary)
    (tmp_path.parent / "kill-harness-summary.txt").write_text(summary + "\n")
    assert all(o.problem is None for o in h.outcomes), summary
    boundary_kills = [o for o in h.outcomes if o.killed and _point(o.spec) in BOUNDARIES]
    assert len(boundary_kills) >= 30, summary  # the coverage must not silently shrink
    assert {_point(o.spec) for o in boundary_kills} >= set(BOUNDARIES), summary
    assert len([o for o in phase1 if o.killed]) >= 20, summary


IVF = "IVF2,SQ8"  # an inverted-file index, forced at a handful of photos


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kill harness forks a warm zygote and reads /proc")
def test_kill_while_an_ivf_index_is_updated_in_place(zygotes: list[Zygote], tmp_path: Path, tiny_model: str) -> None:
    """An IVF index is updated in place by id (adds, an edit, deletes, a rename); the update is killed at
    every commit / write boundary it crosses, then run again: a clean run's result, an IVF index again."""
    rng = random.Random(SEED + 1)
    h = Harness(zygotes, tmp_path, tiny_model)
    h.extra = ["--index-type", IVF]
    _write_tree(h.root, {f"{'a' if i % 2 else 'b'}/p{i}.jpg": i for i in range(N_IMAGES)})
    ref1_dir = tmp_path / "ref1"
    h.clean(ref1_dir)
    (h.root / "a" / "p1.jpg").unlink()
    (h.root / "a" / "p3.jpg").write_bytes(jpeg_bytes(photo(80, 80, seed=103)))  # edited
    (h.root / "a" / "p5.jpg").rename(h.root / "b" / "renamed.jpg")
    _write_tree(h.root, {"c/new0.jpg": 200})
    h.extra = []  # later runs keep the recorded type
    ref2_dir = tmp_path / "ref2"
    shutil.copytree(ref1_dir, ref2_dir)
    trace, seconds, report = h.clean(ref2_dir)
    assert (report["added"], report["updated"], report["removed"]) == (2, 1, 2), report
    ref2 = rows(ref2_dir)
    dim = len(next(iter(ref2.values())).vector) // 4
    check_final(ref2_dir, ref2, dim)
    con = sqlite3.connect(ref2_dir / DB)
    state = json.loads(con.execute("SELECT value FROM settings WHERE key = 'faiss'").fetchone()[0])
    con.close()
    assert state["type"] == IVF and state["trained"] == N_IMAGES  # updated in place, not trained again
    h.kill_all(h.kill_points("ivf update", trace, seconds, randoms=1, rng=rng), ref1_dir, ref2, dim)
    summary = _summary(h.outcomes)
    print(summary)
    assert all(o.problem is None for o in h.outcomes), summary
    killed_at = {_point(o.spec) for o in h.outcomes if o.killed}
    assert {"faiss.written", "faiss.torn", "faiss.replace.after", "settings.done"} <= killed_at, summary


# Broken FAISS files: detected on open, rebuilt from SQLite, never wrong ids --------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, other_model: str) -> Path:
    """An index of 8 photos, plus an index of the same photos by another model and one of other photos."""
    from dinosearch import Index

    base = tmp_path_factory.mktemp("faiss")
    for name, model, seed, kind in (("index", tiny_model, 0, None), ("other-model", other_model, 0, None),
                                    ("other-photos", tiny_model, 50, None), ("index-ivf", tiny_model, 0, IVF)):
        _write_tree(base / f"photos-{seed}", {f"p{i}.jpg": seed + i for i in range(8)})
        with Index(base / name, model=model, workers=1, index_type=kind) as ix:
            ix.add(base / f"photos-{seed}")
    return base


def _current_file(index_dir: Path) -> Path:
    [f] = list(index_dir.glob("vectors-*.faiss"))
    return f


def _other_dim(path: Path, index_dir: Path) -> None:
    import faiss

    ids = np.array(sorted(r.id for r in rows(index_dir).values()), dtype=np.int64)
    other = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    other.add_with_ids(np.random.default_rng(0).random((len(ids), 16), dtype=np.float32), ids)
    faiss.write_index(other, str(path))


def _not_idmap(path: Path, index_dir: Path) -> None:
    import faiss

    vecs = np.stack([np.frombuffer(r.vector, "<f4") for r in rows(index_dir).values()]).astype(np.float32)
    flat = faiss.IndexFlatIP(vecs.shape[1])
    flat.add(vecs)  # same vectors, positional ids
    faiss.write_index(flat, str(path))


CORRUPTIONS = {
    "truncated": lambda f, d, base: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "header-only": lambda f, d, base: f.write_bytes(f.read_bytes()[:16]),
    "empty": lambda f, d, base: f.write_bytes(b""),
    "garbage": lambda f, d, base: f.write_bytes(random.Random(1).randbytes(f.stat().st_size)),
    "huge-count-header": lambda f, d, base: f.write_bytes(b"IxM2" + (32).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little") + f.read_bytes()[16:]),
    "missing": lambda f, d, base: f.unlink(),
    "other-model": lambda f, d, base: shutil.copyfile(_current_file(base / "other-model"), f),
    "other-photos": lambda f, d, base: shutil.copyfile(_current_file(base / "other-photos"), f),
    "other-dim": lambda f, d, base: _other_dim(f, d),
    "not-an-idmap": lambda f, d, base: _not_idmap(f, d),
}


@pytest.mark.parametrize("kind", ["index", "index-ivf"])
@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_a_broken_faiss_file_is_rebuilt_from_sqlite(built: Path, tmp_path: Path, damage: str, kind: str) -> None:
    from dinosearch import Index
    from dinosearch.store import vectorindex as vectors
    from dinosearch.store.catalogue import Catalogue

    index_dir = tmp_path / "index"
    shutil.copytree(built / kind, index_dir)
    stored = rows(index_dir)
    dim = len(next(iter(stored.values())).vector) // 4
    CORRUPTIONS[damage](index_dir / _current_file(built / kind).name, index_dir, built)
    cat = Catalogue(index_dir, create=False)
    try:
        loaded = vectors.load(cat, dim, mmap=True)
        assert loaded.rebuilt, f"a {damage} FAISS file was accepted"
        assert loaded.info["type"] == (IVF if kind == "index-ivf" else vectors.FLAT)  # rebuilt as the kind asked for
        _assert_faiss_equals_sqlite(loaded.index, index_dir)
    finally:
        cat.close()
    with Index(index_dir, create=False) as ix:  # what a query sees: every image finds itself first
        for path, r in stored.items():
            hits = ix.search_vector(np.frombuffer(r.vector, "<f4"), k=3)
            assert hits[0].id == r.id and hits[0].path == path
            assert {h.id for h in hits} <= {x.id for x in stored.values()}
        assert ix.stats().vectors == len(stored)
    # The reader saved its rebuild (no writer was busy): the file on disk is good again.
    check_final(index_dir, stored, dim)


# Disk full ----------------------------------------------------------------------------------------------
@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs: a disk that can really fill up. Needs root with CAP_SYS_ADMIN (else skipped)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def _state(index_dir: Path) -> tuple[dict[str, Row], dict[str, bytes], set[str]]:
    files = {p.name: p.read_bytes() for p in index_dir.glob("vectors-*")}
    return rows(index_dir), files, {p.name for p in index_dir.iterdir()}


def test_disk_full_while_writing_the_faiss_file(small_disk: Path, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows are committed; the vector file is not written: a clear error, the previous file intact, no temp file."""
    from dinosearch import Index
    from dinosearch.errors import DinosearchError
    from dinosearch.store import vectorindex as vectors

    root, index_dir = tmp_path / "photos", small_disk / "index"
    _write_tree(root, {f"p{i}.jpg": 400 + i for i in range(4)})
    with Index(index_dir, model=tiny_model, workers=1) as ix:
        ix.add(root)
    _, files_before, _ = _state(index_dir)
    _write_tree(root, {f"q{i}.jpg": 500 + i for i in range(2)})
    real_write = vectors._write_file
    filler: list[Path] = []

    def full_disk_write(index, path):
        filler.append(_fill(small_disk))  # the disk fills up just before the vector file is written
        return real_write(index, path)

    monkeypatch.setattr(vectors, "_write_file", full_disk_write)
    with pytest.raises(DinosearchError) as err:
        with Index(index_dir, model=tiny_model, workers=1) as ix:
            ix.add(root)
    assert "full" in str(err.value) and "free some space" in str(err.value)
    monkeypatch.setattr(vectors, "_write_file", real_write)
    filler[0].unlink()  # (reading a WAL database needs a little space too)
    rows_after, files_after, names = _state(index_dir)
    assert files_after == files_before, "the previous vector file changed"
    assert not [n for n in names if n.endswith(".tmp")], names
    assert len(rows_after) == 6  # the rows were committed before the vector file was due
    with Index(index_dir, create=False) as ix:  # readers meanwhile: rebuilt from SQLite, right ids
        assert ix.stats().vectors == 6
    with Index(index_dir, model=tiny_model, workers=1) as ix:
        again = ix.add(root)
        assert (again.added, again.unchanged) == (0, 6)
    check_final(index_dir, rows(index_dir), dim=len(next(iter(rows_after.values())).vector) // 4)


def test_disk_full_while_committing_rows(small_disk: Path, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite cannot commit: a clear run-level error (not a traceback), the previous state intact."""
    from dinosearch import Index
    from dinosearch.errors import DinosearchError
    from dinosearch.store.catalogue import Catalogue

    root, index_dir = tmp_path / "photos", small_disk / "index"
    _write_tree(root, {f"p{i}.jpg": 600 + i for i in range(4)})
    with Index(index_dir, model=tiny_model, workers=1) as ix:
        ix.add(root)
    rows_before, files_before, _ = _state(index_dir)
    _write_tree(root, {f"q{i}.jpg": 700 + i for i in range(6)})
    real_write = Catalogue.write
    filler: list[Path] = []

    def full_disk_write(self, *args, **kwargs):
        if not filler:
            filler.append(_fill(small_disk))  # the disk fills up while the run is going
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Catalogue, "write", full_disk_write)
    with pytest.raises(DinosearchError) as err:
        with Index(index_dir, model=tiny_model, workers=1) as ix:
            ix.add(root)
    message = str(err.value)
    assert ("full" in message or "space" in message) and "Traceback" not in message
    monkeypatch.setattr(Catalogue, "write", real_write)
    filler[0].unlink()  # (reading a WAL database needs a little space too)
    rows_after, files_after, names = _state(index_dir)
    assert rows_after == rows_before and files_after == files_before
    assert not [n for n in names if n.endswith(".tmp")], names
    with Index(index_dir, model=tiny_model, workers=1) as ix:
        assert ix.add(root).added == 6
    check_final(index_dir, rows(index_dir), dim=len(next(iter(rows_before.values())).vector) // 4)


# Schemas ---------------------------------------------------------------------------------------------
def test_a_newer_schema_is_refused_untouched(built: Path, tmp_path: Path) -> None:
    from .conftest import run_cli

    index_dir = tmp_path / "index"
    shutil.copytree(built / "index", index_dir)
    con = sqlite3.connect(index_dir / DB)
    con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    con.commit()
    con.close()
    before = rows(index_dir)
    proc = run_cli("stats", "--index", str(index_dir), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "newer dinosearch" in proc.stderr and "9999_from_the_future" in proc.stderr
    con = sqlite3.connect(index_dir / DB)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone() == ("9999_from_the_future",)
    con.close()
    assert rows(index_dir) == before


def _revisions() -> list[str]:
    from dinosearch.store.migrate import _config
    from alembic.script import ScriptDirectory

    return [s.revision for s in reversed(list(ScriptDirectory.from_config(_config()).walk_revisions()))]


@pytest.mark.parametrize("revision", [None, *_revisions()])
def test_every_earlier_schema_is_migrated_on_open(tmp_path: Path, revision: str | None) -> None:
    """A database at any known revision (or none) opens at the current one, rows kept, tables as the code declares."""
    from sqlalchemy import create_engine, inspect

    from dinosearch.store import schema
    from dinosearch.store.catalogue import Catalogue
    from dinosearch.store.engine import current_revision
    from dinosearch.store.migrate import upgrade

    index_dir = tmp_path / "index"
    index_dir.mkdir()
    engine = create_engine(f"sqlite:///{index_dir / DB}")
    seeded = 0
    if revision is not None:
        upgrade(engine, revision)
        with engine.begin() as conn:
            if "images" in inspect(conn).get_table_names():
                conn.exec_driver_sql(
                    "INSERT INTO images (path, root, size, mtime_ns, content_hash, vector, indexed_at) "
                    "VALUES (x'2f612e6a7067', x'2f', 1, 2, 'h', x'0000803f', 3.0)"
                )
                seeded = 1
    engine.dispose()
    cat = Catalogue(index_dir, create=False)
    try:
        assert current_revision(cat.engine) == schema.SCHEMA_REVISION
        assert cat.count_images() == seeded
        found = inspect(cat.engine)
        for table in schema.metadata.sorted_tables:
            assert {c["name"] for c in found.get_columns(table.name)} == {c.name for c in table.columns}, table.name
    finally:
        cat.close()
