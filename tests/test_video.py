"""Videos as frames: sampling, scene changes, rotation, failures, incremental rules, queries, migration."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from dinosearch.api import Index  # noqa: E402
from dinosearch.records import VideoOptions, format_timestamp  # noqa: E402
from dinosearch.store.catalogue import Catalogue  # noqa: E402
from dinosearch.store.layout import DB_NAME, SCHEMA_REVISION  # noqa: E402

from .conftest import run_cli  # noqa: E402
from .images import photo, save  # noqa: E402
from .test_index import Boom  # noqa: E402
from .videos import empty_video, make_video, rotate_like_a_phone, stills  # noqa: E402

VIDEO = VideoOptions(interval=2.0, max_frames=50)


@pytest.fixture()
def ix(index_dir: Path, tiny_model: str):
    with Index(index_dir, model=tiny_model, device="cpu", workers=1) as index:
        yield index


def frames_of(ix: Index, path: Path) -> list[tuple[int, float, int, int]]:
    """(id, timestamp, width, height) of a path's rows, in time order."""
    with sqlite3.connect(ix.catalogue.db_path) as conn:
        rows = conn.execute(
            "SELECT id, timestamp, width, height FROM images WHERE path = ? ORDER BY timestamp", (os.fsencode(str(path)),)
        ).fetchall()
    return rows


def consistent(ix: Index) -> None:
    """SQLite rows == FAISS vectors, and every row (a frame too) finds itself at rank 1 (copies tie)."""
    from dinosearch.store import vectorindex

    loaded = vectorindex.load(ix.catalogue, ix.fingerprint.dim)
    assert not loaded.rebuilt and loaded.count == ix.catalogue.count_images()
    for ids, vecs in ix.catalogue.iter_vectors():
        for i, v in zip(ids, vecs):
            hits = ix.search_vector(v, k=5, all_frames=True)
            assert i in [h.id for h in hits if h.score >= hits[0].score - 1e-6]


def three_scenes(path: Path, seed: int = 100) -> Path:
    a, b, c = stills(3, seed=seed)
    return make_video(path, [(0.0, a), (2.0, b), (4.0, c)], seconds=6)


def test_interval_frames_plus_a_scene_change(ix: Index, tmp_path: Path) -> None:
    a, b = stills(2)
    video = make_video(tmp_path / "lib" / "clip.mp4", [(0.0, a), (3.0, b)], seconds=5)
    r = ix.add(tmp_path / "lib", video=VIDEO)
    assert (r.added, r.failed, r.embedded) == (1, 0, 4)
    times = [t for _, t, _, _ in frames_of(ix, video)]
    assert times[:2] == [0.0, 2.0] and times[3] == 4.0
    assert 3.0 <= times[2] <= 3.25  # the cut, within one scene check of where it is
    consistent(ix)


def test_a_pan_is_not_a_scene_change(tmp_path: Path) -> None:
    from dinosearch.records import Preprocess
    from dinosearch.video import decode_video

    from PIL import Image

    # Random 16 px bars panned 24 px a frame: every check differs by more than a cut's threshold.
    bars = np.repeat(np.random.default_rng(3).integers(0, 256, (1, 1400 // 16, 3), dtype=np.uint8), 16, axis=1)
    wide = Image.fromarray(np.repeat(bars, 64, axis=0))
    pan = [(i / 10, wide.crop((24 * i, 0, 24 * i + 96, 64))) for i in range(50)]  # 5 s
    video = make_video(tmp_path / "pan.mp4", pan, seconds=5)
    pre = Preprocess(64, 56, 56, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with open(video, "rb") as f:
        decoded = decode_video(f, pre, options=VIDEO)
    assert [fr.timestamp for fr in decoded.frames] == [0.0, 2.0, 4.0]
    assert decoded.frames[0].pixels.shape == (56, 56, 3) and decoded.frames[0].thumbnail[:3] == b"\xff\xd8\xff"


def test_max_frames_caps_a_file(ix: Index, tmp_path: Path) -> None:
    video = make_video(tmp_path / "lib" / "long.mp4", [(0.0, stills(1)[0])], seconds=6)
    ix.add(tmp_path / "lib", video=VideoOptions(interval=0.5, max_frames=3))
    times = [t for _, t, _, _ in frames_of(ix, video)]
    assert len(times) == 3 and times[-1] >= 4.0  # spread over the whole video, not the first 1.5 s


def test_phone_rotation_is_applied(ix: Index, tmp_path: Path) -> None:
    video = rotate_like_a_phone(make_video(tmp_path / "lib" / "portrait.mp4", [(0.0, stills(1)[0])], seconds=1))
    ix.add(tmp_path / "lib", video=VIDEO)
    [(_, _, width, height)] = frames_of(ix, video)
    assert (width, height) == (64, 96)  # stored 96x64, shown upright as portrait


def test_bad_videos_are_recorded_and_photos_still_indexed(ix: Index, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    good = three_scenes(lib / "good.mp4")
    data = good.read_bytes()
    (lib / "truncated.mp4").write_bytes(data[: len(data) // 3])
    make_video(lib / "lossless.mkv", [(0.0, stills(1)[0])], seconds=1, codec="ffv1")
    (lib / "notes.mp4").write_bytes(b"not a video at all\n" * 20)
    empty_video(lib / "zero.mp4")
    save(photo(160, 120, seed=1), lib / "photo.jpg")
    r = ix.add(lib, video=VIDEO)
    assert (r.added, r.failed) == (2, 4)
    kinds = {Path(f.path).name: f.error for f in ix.failures()}
    assert kinds == {"truncated.mp4": "corrupt", "lossless.mkv": "unsupported-codec", "notes.mp4": "not-a-video",
                     "zero.mp4": "empty"}
    assert {Path(f.path).name: f.message for f in ix.failures()}["lossless.mkv"].startswith("the video codec ffv1")


def test_incremental_add_modify_rename_delete(index_dir: Path, tiny_model: str, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    first = three_scenes(lib / "a.mp4")
    with Index(index_dir, model=tiny_model, device="cpu", workers=1) as ix:
        r = ix.add(lib, video=VIDEO)
        assert (r.added, r.embedded) == (1, 3)
        old_ids = [i for i, *_ in frames_of(ix, first)]
        # Unchanged: skipped by stat, without the model.
    with Index(index_dir, embedder=Boom()) as ix:  # type: ignore[arg-type]
        r = ix.add(lib, video=VIDEO)
        assert (r.unchanged, r.added, r.updated) == (1, 0, 0)
        # Renamed: its frames are reused by content hash, still without the model.
        renamed = first.with_name("b.mp4")
        first.rename(renamed)
        r = ix.add(lib, video=VIDEO)
        assert (r.added, r.removed, r.embedded) == (1, 1, 0)
        assert frames_of(ix, first) == []
        assert [t for _, t, *_ in frames_of(ix, renamed)] == [0.0, 2.0, 4.0]
    with Index(index_dir, model=tiny_model, device="cpu", workers=1) as ix:
        # Modified: its frames are replaced (new ids), none of the old ones left.
        a, b = stills(2, seed=300)
        make_video(renamed, [(0.0, a), (1.0, b)], seconds=2)
        r = ix.add(lib, video=VIDEO)
        assert (r.updated, r.added, r.embedded) == (1, 0, 2)
        rows = frames_of(ix, renamed)
        assert [t for _, t, *_ in rows] == [0.0, 1.0]
        assert not set(old_ids) & {i for i, *_ in rows}
        consistent(ix)
        # Deleted: all its frames go, counted as one file.
        renamed.unlink()
        save(photo(160, 120, seed=2), lib / "keep.jpg")  # the root is not empty (an empty one is protected)
        r = ix.add(lib, video=VIDEO)
        assert (r.removed, r.added) == (1, 1)
        assert ix.catalogue.count_images() == 1


def test_runs_without_video_leave_indexed_videos_alone(ix: Index, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    video = three_scenes(lib / "a.mp4")
    save(photo(160, 120, seed=1), lib / "p.jpg")
    r = ix.add(lib)
    assert (r.added, r.failed) == (1, 0)  # the photo only
    ix.add(lib, video=VIDEO)
    r = ix.add(lib)
    assert r.removed == 0 and len(frames_of(ix, video)) == 3


def test_query_by_a_still_finds_the_video_at_its_time(ix: Index, tmp_path: Path) -> None:
    a, b, c = stills(3)
    make_video(tmp_path / "lib" / "scenes.mp4", [(0.0, a), (2.0, b), (4.0, c)], seconds=6)
    for i in range(3):
        save(photo(96, 64, seed=500 + i), tmp_path / "lib" / f"other{i}.png")
    ix.add(tmp_path / "lib", video=VIDEO)
    still = save(b, tmp_path / "query" / "b.png")
    hits = ix.search(still, k=5)
    assert hits[0].path.endswith("scenes.mp4") and 2.0 <= hits[0].timestamp < 4.0
    assert sum(h.path.endswith("scenes.mp4") for h in hits) == 1  # the best frame only
    all_frames = ix.search(still, k=10, all_frames=True)
    assert sum(h.path.endswith("scenes.mp4") for h in all_frames) == 3
    assert [h.timestamp for h in hits if h.path.endswith(".png")] == [None, None, None]


def test_cli_video_flags_output_and_json(env: dict[str, str], tmp_path: Path) -> None:
    a, b, c = stills(3)
    make_video(tmp_path / "lib" / "scenes.mp4", [(0.0, a), (2.0, b), (4.0, c)], seconds=6)
    still = save(c, tmp_path / "q" / "c.png")
    done = run_cli("index", str(tmp_path / "lib"), "--video", "--video-interval", "2", "--video-max-frames", "10",
                   "--workers", "1", "--json", env=env, check=True)
    assert json.loads(done.stdout)["added"] == 1
    out = run_cli("query", str(still), "-k", "1", env=env, check=True).stdout
    assert out.split()[2].endswith("scenes.mp4") and out.split()[3:5] == ["@", "00:00:04.0"]
    results = json.loads(run_cli("query", str(still), "--all-frames", "--json", env=env, check=True).stdout)["results"]
    assert sorted(r["timestamp"] for r in results) == [0.0, 2.0, 4.0]


def test_video_without_pyav_is_one_line_and_photos_still_index(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "no-av"
    blocker.mkdir()
    (blocker / "av.py").write_text("raise ImportError('PyAV is not installed')\n")
    env = {**env, "PYTHONPATH": str(blocker)}
    save(photo(160, 120, seed=1), tmp_path / "lib" / "p.jpg")
    three_scenes(tmp_path / "lib" / "a.mp4")
    failed = run_cli("index", str(tmp_path / "lib"), "--video", env=env)
    assert failed.returncode == 1
    assert failed.stderr.strip().count("\n") == 0 and "pip install 'dinosearch[video]'" in failed.stderr
    done = run_cli("index", str(tmp_path / "lib"), "--workers", "1", "--json", env=env, check=True)
    assert json.loads(done.stdout)["added"] == 1


def test_video_options_are_checked() -> None:
    with pytest.raises(ValueError, match="interval > 0"):
        VideoOptions(interval=0)
    with pytest.raises(ValueError, match="at least 1 frame"):
        VideoOptions(max_frames=0)


def test_timestamp_format() -> None:
    assert format_timestamp(83.44) == "00:01:23.4"
    assert format_timestamp(3600 * 2 + 5.06) == "02:00:05.1"


def test_an_index_at_the_first_schema_upgrades_in_place(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from dinosearch.store.migrate import upgrade

    db = tmp_path / "ix" / DB_NAME
    db.parent.mkdir()
    engine = create_engine(f"sqlite:///{db}")
    upgrade(engine, "0001")
    engine.dispose()
    vec = np.ones(4, "<f4").tobytes()
    with sqlite3.connect(db) as conn:
        for i in range(1, 4):
            conn.execute(
                "INSERT INTO images (path, root, size, mtime_ns, content_hash, vector, indexed_at) VALUES (?, ?, 1, 1, ?, ?, 0)",
                (f"/p/{i}.jpg".encode(), b"/p", f"h{i}", vec),
            )
        conn.execute("DELETE FROM images WHERE id = 3")  # the highest id, never to be handed out again
    cat = Catalogue(tmp_path / "ix")
    try:
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (SCHEMA_REVISION,)
            assert conn.execute("SELECT id, timestamp FROM images ORDER BY id").fetchall() == [(1, None), (2, None)]
            conn.execute(
                "INSERT INTO images (path, root, size, mtime_ns, content_hash, vector, indexed_at) VALUES (?, ?, 1, 1, 'h4', ?, 0)",
                (b"/p/4.jpg", b"/p", vec),
            )
            assert conn.execute("SELECT max(id) FROM images").fetchone() == (4,)
            with pytest.raises(sqlite3.IntegrityError):  # still one row per photo path
                conn.execute(
                    "INSERT INTO images (path, root, size, mtime_ns, content_hash, vector, indexed_at) VALUES (?, ?, 1, 1, 'h', ?, 0)",
                    (b"/p/1.jpg", b"/p", vec),
                )
    finally:
        cat.close()


def test_duplicates_treat_a_video_as_one_file(ix: Index, tmp_path: Path) -> None:
    """A still taken from a video is its near duplicate; a video's own frames never group together,
    and a copy of a video is one exact duplicate of it, not one per frame."""
    a, b, c = stills(3, seed=700)
    video = make_video(tmp_path / "lib" / "scenes.mp4", [(0.0, a), (2.0, b), (4.0, c)], seconds=6)
    shutil.copy(video, tmp_path / "lib" / "copy.mp4")
    save(b, tmp_path / "lib" / "still.png")
    for i in range(3):
        save(photo(96, 64, seed=800 + i), tmp_path / "lib" / f"other{i}.png")
    ix.add(tmp_path / "lib", video=VIDEO)
    assert len(frames_of(ix, video)) >= 3
    [exact] = ix.duplicates(level="exact")
    assert sorted(os.path.basename(m.path) for m in (exact.keeper, *exact.duplicates)) == ["copy.mp4", "scenes.mp4"]
    for g in ix.duplicates(level="near", threshold=0.999):
        paths = [m.path for m in (g.keeper, *g.duplicates)]
        assert len(paths) == len(set(paths)), paths  # one member per file: never a video's frames together
    groups = ix.duplicates(level="near", threshold=0.999)
    still = [g for g in groups if any(m.path.endswith("still.png") for m in (g.keeper, *g.duplicates))]
    assert still and {os.path.basename(m.path) for m in (still[0].keeper, *still[0].duplicates)} >= {"still.png"}
    assert any(m.path.endswith(".mp4") for m in (still[0].keeper, *still[0].duplicates))
