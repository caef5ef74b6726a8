"""Incremental indexing: add, modify, rename, copy, delete, missing and empty roots, failures."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinosearch.api import Index
from dinosearch.errors import ModelMismatchError, PathNotFoundError
from dinosearch.store import vectorindex as vector_store

from .images import jpeg_bytes, photo, save


def make_tree(root: Path, n: int = 4, seed: int = 0) -> list[Path]:
    return [save(photo(320, 240, seed=seed + i), root / f"img{i}.jpg", quality=90) for i in range(n)]


@pytest.fixture()
def ix(index_dir: Path, tiny_model: str):
    with Index(index_dir, model=tiny_model, device="cpu", workers=1) as index:
        yield index


class Boom:
    """An embedder that fails the test if the model is touched at all."""

    def __getattr__(self, name: str):
        raise AssertionError("the model was used")


def consistent(ix: Index) -> None:
    """SQLite rows == FAISS vectors, and every image finds itself at rank 1 (exact copies tie)."""
    loaded = vector_store.load(ix.catalogue, ix.fingerprint.dim)
    assert not loaded.rebuilt, "the FAISS file on disk does not match SQLite"
    assert loaded.count == ix.catalogue.count_images()
    for ids, vecs in ix.catalogue.iter_vectors():
        for i, v in zip(ids, vecs):
            hits = ix.search_vector(v, k=5)
            top = [h.id for h in hits if h.score >= hits[0].score - 1e-6]
            assert i in top


def test_first_run_then_unchanged(ix: Index, tmp_path: Path) -> None:
    make_tree(tmp_path / "photos")
    r = ix.add(tmp_path / "photos")
    assert (r.added, r.updated, r.removed, r.unchanged, r.failed) == (4, 0, 0, 0, 0)
    # Every thread a run starts is joined before it returns: one still running when the interpreter
    # exits is killed inside torch, which aborts the process after the work is done.
    assert [t.name for t in threading.enumerate() if t.name.startswith("dinosearch-")] == []
    consistent(ix)
    r = ix.add(tmp_path / "photos")
    assert (r.added, r.updated, r.removed, r.unchanged, r.failed, r.embedded) == (0, 0, 0, 4, 0, 0)


def test_unchanged_tree_never_loads_the_model(index_dir: Path, tiny_model: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "photos")
    with Index(index_dir, model=tiny_model, device="cpu") as ix:
        ix.add(tmp_path / "photos")

    with Index(index_dir, embedder=Boom()) as ix:  # type: ignore[arg-type]
        r = ix.add(tmp_path / "photos")
    assert r.unchanged == 4


def test_modified_file_is_reembedded_in_place(ix: Index, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "photos")
    ix.add(tmp_path / "photos")
    before = ix.catalogue.lookup_path(str(files[0]))
    save(photo(320, 240, seed=99), files[0], quality=90)
    os.utime(files[0], ns=(before[0].mtime_ns + 10**9, before[0].mtime_ns + 10**9))
    r = ix.add(tmp_path / "photos")
    assert (r.added, r.updated, r.unchanged, r.embedded) == (0, 1, 3, 1)
    after = ix.catalogue.lookup_path(str(files[0]))
    assert after[0].id == before[0].id  # ids are stable
    assert after[0].content_hash != before[0].content_hash
    assert float(after[1] @ before[1]) < 0.9999
    consistent(ix)


def test_rename_and_copy_reuse_the_vector(ix: Index, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "photos")
    ix.add(tmp_path / "photos")
    old = ix.catalogue.lookup_path(str(files[1]))
    renamed = files[1].with_name("renamed.jpg")
    files[1].rename(renamed)
    shutil.copy(files[2], tmp_path / "photos" / "copy.jpg")
    r = ix.add(tmp_path / "photos")
    assert (r.added, r.removed, r.unchanged, r.embedded) == (2, 1, 3, 0)
    new = ix.catalogue.lookup_path(str(renamed))
    assert np.array_equal(new[1], old[1])
    assert ix.catalogue.lookup_path(str(files[1])) is None
    consistent(ix)


def test_new_photos_are_read_by_the_workers_and_possible_copies_here(
    ix: Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a file the size of an indexed one is read by the indexing process (to find a rename
    without decoding); new photos go to the decode workers by path, and get their identity there."""
    import dinosearch.index as indexer
    import dinosearch.route as router

    read_here: list[str] = []
    real_read = router.read_file
    monkeypatch.setattr(router, "read_file", lambda f: read_here.append(f.path) or real_read(f))
    files = make_tree(tmp_path / "photos")
    r = ix.add(tmp_path / "photos")
    assert (r.added, r.embedded, read_here) == (4, 4, [])
    for f in files:
        known, _ = ix.catalogue.lookup_path(str(f))
        st = f.stat()
        assert (known.size, known.mtime_ns, known.content_hash) == (st.st_size, st.st_mtime_ns, indexer.content_hash(f.read_bytes()))
    renamed = files[0].with_name("moved.jpg")
    files[0].rename(renamed)
    r = ix.add(tmp_path / "photos")
    assert (r.added, r.removed, r.embedded, read_here) == (1, 1, 0, [str(renamed)])
    consistent(ix)


def test_a_copy_of_a_photo_indexed_under_another_root_is_not_embedded_again(ix: Index, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "a")
    ix.add(tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.copy(files[2], tmp_path / "b" / "same.jpg")
    save(photo(320, 240, seed=99), tmp_path / "b" / "other.jpg", quality=90)
    r = ix.add(tmp_path / "b")
    assert (r.added, r.embedded) == (2, 1)  # the copy took the stored vector, found by its hash
    copy, original = ix.catalogue.lookup_path(str(tmp_path / "b" / "same.jpg")), ix.catalogue.lookup_path(str(files[2]))
    assert np.array_equal(copy[1], original[1]) and copy[0].content_hash == original[0].content_hash
    consistent(ix)


def test_deleted_files_are_removed(ix: Index, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "photos")
    ix.add(tmp_path / "photos")
    files[3].unlink()
    r = ix.add(tmp_path / "photos")
    assert (r.removed, r.unchanged) == (1, 3)
    assert ix.catalogue.count_images() == 3
    consistent(ix)


def test_missing_root_changes_nothing(ix: Index, tmp_path: Path) -> None:
    make_tree(tmp_path / "photos")
    ix.add(tmp_path / "photos")
    shutil.rmtree(tmp_path / "photos")
    with pytest.raises(PathNotFoundError, match="does not exist"):
        ix.add(tmp_path / "photos")
    assert ix.catalogue.count_images() == 4


def test_empty_root_changes_nothing_and_says_so(ix: Index, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "photos")
    ix.add(tmp_path / "photos")
    for f in files:
        f.unlink()  # e.g. an unmounted drive's empty mount point
    r = ix.add(tmp_path / "photos")
    assert r.removed == 0 and ix.catalogue.count_images() == 4
    assert any("kept" in w for w in r.warnings)


def test_several_roots_and_sweeping_only_given_roots(ix: Index, tmp_path: Path) -> None:
    make_tree(tmp_path / "a", n=2, seed=0)
    b = make_tree(tmp_path / "b", n=2, seed=10)
    ix.add(tmp_path / "a", tmp_path / "b")
    assert ix.catalogue.count_images() == 4
    b[0].unlink()
    r = ix.add(tmp_path / "a")  # b is not walked: nothing under it is swept
    assert r.removed == 0 and ix.catalogue.count_images() == 4
    r = ix.add(tmp_path / "b")
    assert r.removed == 1


def test_failures_recorded_and_cleared_when_fixed(ix: Index, tmp_path: Path) -> None:
    make_tree(tmp_path / "photos", n=2)
    bad = tmp_path / "photos" / "bad.jpg"
    bad.write_text("this is not an image")
    (tmp_path / "photos" / "notes.txt").write_text("ignored quietly")
    r = ix.add(tmp_path / "photos")
    assert (r.added, r.failed) == (2, 1)
    [f] = ix.failures()
    assert (f.path, f.error) == (str(bad), "not-an-image")
    assert "supported" in f.message
    r = ix.add(tmp_path / "photos")  # unchanged failure: not retried, still reported
    assert (r.failed, r.unchanged) == (1, 2)
    bad.write_bytes(jpeg_bytes(photo(200, 200, seed=50)))
    r = ix.add(tmp_path / "photos")
    assert (r.added, r.failed) == (1, 0)
    assert ix.failures() == []


def test_hidden_folders_and_symlinks(ix: Index, tmp_path: Path) -> None:
    make_tree(tmp_path / "photos", n=1)
    make_tree(tmp_path / "photos" / ".thumbnails", n=1, seed=5)
    make_tree(tmp_path / "elsewhere", n=1, seed=7)
    (tmp_path / "photos" / "link").symlink_to(tmp_path / "elsewhere")
    r = ix.add(tmp_path / "photos")
    assert r.added == 1
    r = ix.add(tmp_path / "photos", follow_symlinks=True)
    assert r.added == 1 and ix.catalogue.count_images() == 2


def test_another_model_is_refused(index_dir: Path, tiny_model: str, other_model: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "photos", n=2)
    with Index(index_dir, model=tiny_model, device="cpu") as ix:
        ix.add(tmp_path / "photos")
    save(photo(300, 200, seed=77), tmp_path / "photos" / "new.jpg")
    with Index(index_dir, model=other_model, device="cpu") as ix:
        with pytest.raises(ModelMismatchError) as err:
            ix.add(tmp_path / "photos")
        assert tiny_model in str(err.value) and "--index" in str(err.value)
        assert ix.catalogue.count_images() == 2
        with pytest.raises(ModelMismatchError):
            ix.search(tmp_path / "photos" / "new.jpg")


def test_index_made_from_local_dir_reopens_with_its_model(index_dir: Path, tiny_model: str, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "photos", n=2)
    with Index(index_dir, model=tiny_model, device="cpu") as ix:
        ix.add(tmp_path / "photos")
    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg_bytes(Image.open(files[0]).resize((160, 120)), quality=80))
    with Index(index_dir, device="cpu") as ix:  # no model named: the index's own
        assert ix.search(query, k=1)[0].path == str(files[0])


def test_interrupted_run_keeps_finished_work(index_dir: Path, tiny_model: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "photos", n=6)
    ix = Index(index_dir, model=tiny_model, device="cpu", workers=1, batch_size=2)
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ix.add(tmp_path / "photos", progress=progress)
    kept = ix.catalogue.count_images()
    assert kept >= 2  # embedded batches are kept; decoded images still waiting for the model are not
    r = ix.add(tmp_path / "photos")
    assert r.added == 6 - kept and r.unchanged == kept
    consistent(ix)


def test_mixed_folder_of_generated_images(ix: Index, tmp_path: Path) -> None:
    import io

    import numpy as np

    from .images import with_exif_orientation

    root = tmp_path / "mixed"
    save(photo(1600, 1200, seed=1), root / "big.jpg", quality=90)
    save(photo(90, 60, seed=2), root / "tiny.jpg")
    rgba = photo(300, 300, seed=3).convert("RGBA")
    rgba.putalpha(128)
    save(rgba, root / "alpha.png")
    (root / "rotated.jpg").write_bytes(with_exif_orientation(photo(400, 300, seed=4), 6))
    save(photo(300, 200, seed=5).convert("CMYK"), root / "cmyk.jpg")
    save(Image.fromarray((np.arange(256 * 256, dtype=np.uint32).reshape(256, 256) % 65536).astype(np.uint16)), root / "deep.png")
    save(photo(200, 200, seed=6).convert("P"), root / "anim.gif")
    save(photo(200, 200, seed=7), root / "page.tiff")
    buf = io.BytesIO()
    photo(300, 200, seed=8).save(buf, "JPEG")
    (root / "corrupt.jpg").write_bytes(buf.getvalue()[:400])
    (root / "text.jpg").write_text("not an image at all")
    r = ix.add(root)
    assert (r.added, r.failed) == (8, 2)
    assert {f.path.rsplit("/", 1)[1]: f.error for f in ix.failures()} == {"corrupt.jpg": "corrupt", "text.jpg": "not-an-image"}
    rows = ix.catalogue.rows_by_id(ix.catalogue.all_ids())
    sizes = {Path(r["path"]).name: (r["width"], r["height"], r["format"]) for r in rows.values()}
    assert sizes["rotated.jpg"] == (400, 300, "JPEG") and sizes["big.jpg"] == (1600, 1200, "JPEG")
    consistent(ix)


def test_query_by_indexed_file_never_loads_the_model(index_dir: Path, tiny_model: str, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "photos")
    with Index(index_dir, model=tiny_model, device="cpu") as ix:
        ix.add(tmp_path / "photos")

    with Index(index_dir, embedder=Boom()) as ix:  # type: ignore[arg-type]
        hits = ix.search(files[0], k=10)
        assert len(hits) == 3 and files[0] not in [Path(h.path) for h in hits]
        copy = tmp_path / "elsewhere.jpg"
        shutil.copy(files[1], copy)  # same content, not indexed under this path: stored vector, kept in results
        assert ix.search(copy, k=1)[0].path == str(files[1])


def test_reader_sees_new_rows_before_the_next_generation(index_dir: Path, tiny_model: str, tmp_path: Path) -> None:
    """A server's Index picks up rows a running `index` committed, without a rebuild or a restart."""
    from dinosearch.store.catalogue import ImageRow

    files = make_tree(tmp_path / "photos", n=3)
    with Index(index_dir, model=tiny_model, device="cpu") as writer:
        writer.add(tmp_path / "photos")
    reader = Index(index_dir, model=tiny_model, device="cpu")
    assert reader.refresh().count == 3
    generation = reader.refresh().generation
    found = reader.catalogue.lookup_path(str(files[0]))
    # A chunk committed mid-run: a copy of files[0]'s vector under a new path, no FAISS file yet.
    reader.catalogue.write([ImageRow(str(tmp_path / "photos" / "new.jpg"), str(tmp_path / "photos"), 1, 1, "x", found[1].tobytes())], [])
    loaded = reader.refresh()
    assert loaded.generation == generation and loaded.count == 4 and not loaded.rebuilt
    hits = reader.search(files[0], k=1)
    assert hits[0].path == str(tmp_path / "photos" / "new.jpg") and hits[0].score == pytest.approx(1.0, abs=1e-5)
    reader.catalogue.remove([str(tmp_path / "photos" / "new.jpg")])
    assert reader.search(files[0], k=1)[0].path != str(tmp_path / "photos" / "new.jpg")  # deleted rows never shown
    assert reader.file_of(hits[0].id) is None and reader.file_of(found[0].id)["path"] == str(files[0])
    reader.close()


def test_model_folder_named_another_way_is_the_same_model(index_dir: Path, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "photos", n=2)
    with Index(index_dir, model=tiny_model, device="cpu") as ix:
        ix.add(tmp_path / "photos")
        assert ix.fingerprint.model == os.path.realpath(tiny_model)
    monkeypatch.chdir(Path(tiny_model).parent)
    relative = os.path.join(".", Path(tiny_model).name, "")

    with Index(index_dir, model=relative, embedder=Boom()) as ix:  # type: ignore[arg-type]
        assert ix.add(tmp_path / "photos").unchanged == 2


def test_model_threads_fewer_only_where_they_embed_faster() -> None:
    """On the CPU, a model whose threads mostly wait (CPU / wall x threads below BUSY) is timed for a
    batch on the cores the decoders leave, and the faster per image is kept, then checked again
    later; a model that keeps its threads busy is never slowed by a probe. Restored at the end."""
    import torch

    from dinosearch.index import _ModelThreads

    class CpuModel:
        device, backend = "cpu", "torch"

    def batch(threads: _ModelThreads, per_image: dict[int, float], busy: float) -> None:
        n = torch.get_num_threads()
        threads.batch_done(16 * per_image[n], busy * 16 * per_image[n] * n, 16)

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        workers = (os.cpu_count() or 1) - 1  # leaves 1 core: 4 or 1 threads
        light = {4: 0.008, 1: 0.002}  # seconds per image: its threads wait for the decoders
        threads = _ModelThreads(CpuModel(), workers=workers)
        assert (threads.high, threads.low) == (4, 1)
        batch(threads, light, 0.5)  # warm-up: not judged
        assert torch.get_num_threads() == 4
        batch(threads, light, 0.5)  # mostly waiting: the next batch is timed on 1 thread
        assert torch.get_num_threads() == 1
        batch(threads, light, 0.9)  # faster: kept
        for _ in range(threads.EVERY - 1):
            batch(threads, light, 0.9)
            assert torch.get_num_threads() == 1
        batch(threads, light, 0.9)  # time to check: all threads again for a batch ...
        assert torch.get_num_threads() == 4
        batch(threads, {4: 0.001, 1: 0.002}, 0.5)  # ... mostly waiting, so 1 thread is timed ...
        assert torch.get_num_threads() == 1
        batch(threads, {4: 0.001, 1: 0.002}, 0.9)  # ... and is slower now: all threads it is
        assert torch.get_num_threads() == 4
        threads.restore()

        heavy = {4: 0.1, 1: 0.35}  # keeps its threads busy: never probed
        threads = _ModelThreads(CpuModel(), workers=workers)
        for _ in range(3 * threads.EVERY):
            batch(threads, heavy, 0.95)
            assert torch.get_num_threads() == 4
        batch(threads, heavy, 0.5)  # the host got busy: timed on 1 thread ...
        assert torch.get_num_threads() == 1
        batch(threads, heavy, 0.9)  # ... which is slower: all threads, and no probe for a while
        for _ in range(threads.RETRY - 1):
            batch(threads, heavy, 0.5)
            assert torch.get_num_threads() == 4
        batch(threads, heavy, 0.5)
        assert torch.get_num_threads() == 1  # probed again
        threads.restore()

        class GpuModel:
            device, backend = "cuda", "torch"

        other = _ModelThreads(GpuModel(), workers=workers)
        for _ in range(3):
            other.batch_done(1.0, 0.1, 16)
        assert torch.get_num_threads() == 4  # not its business
    finally:
        torch.set_num_threads(saved)
