"""The file-facing half of `make bench-scale`: `dinosearch index` over a tree of N real (tiny) JPEG files
that an index already holds, then 1,000 photos added to it and 1,000 removed, each a fresh CLI process.

The model is devmodel's "wide" one (ViT-S/14's 384 dimensions, one layer), so rows have the real size.
Indexing N real files through the model first would take hours at this size, so the tree's rows are
inserted as an index run writes them (the path, root, size and mtime_ns of the file on disk, its real
content hash, a random unit vector of the model's dimension) after a real run on a few of the files has
recorded the model's fingerprint. Every run timed below is the product's own command.

"Beyond embedding": adding 1,000 photos is timed into the N-row index and (median of three) into empty
ones (same files, same model, same workers); the difference is what the collection's size costs.

    python -m tests.bench.scale_files --files 1000000 [--dir /tmp/scale-files] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import insert

from dinosearch.devmodel import save_random_dinov2
from dinosearch.read import content_hash
from dinosearch.store.catalogue import Catalogue, _bump
from dinosearch.store.layout import MODEL_KEY
from dinosearch.store.rows import path_key
from dinosearch.store.schema import images
from dinosearch.store.vectorindex import VectorIndex

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
PER_FOLDER = 1000


def tiny_jpeg(rng: np.random.Generator, side: int = 8) -> bytes:
    """A distinct 8x8 JPEG (~0.6 kB): random pixels, so every file has its own content hash."""
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_tree(root: Path, n: int, rng: np.random.Generator, *, start: int = 0) -> list[Path]:
    paths = []
    for i in range(start, start + n):
        folder = root / f"f{i // PER_FOLDER:05d}"
        if i % PER_FOLDER == 0 or i == start:
            folder.mkdir(parents=True, exist_ok=True)
        p = folder / f"p{i:08d}.jpg"
        p.write_bytes(tiny_jpeg(rng))
        paths.append(p)
    return paths


def insert_as_indexed(cat: Catalogue, files: list[Path], root: Path, dim: int, rng: np.random.Generator) -> None:
    """Rows as an index run writes them, for files on disk, 50k per transaction."""
    now = time.time()
    root_key = path_key(str(root))
    for lo in range(0, len(files), 50_000):
        part = files[lo : lo + 50_000]
        vecs = rng.normal(size=(len(part), dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        rows = []
        for p, v in zip(part, vecs):
            st = p.stat()
            rows.append({"path": path_key(str(p)), "root": root_key, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                         "content_hash": content_hash(p.read_bytes()), "width": 8, "height": 8, "format": "JPEG",
                         "vector": v.astype("<f4").tobytes(), "indexed_at": now})
        with cat.engine.begin() as conn:
            conn.execute(insert(images), rows)
            _bump(conn)


def index_run(index_dir: Path, model: Path, *paths: Path) -> dict[str, float]:
    """`dinosearch index --json` in a fresh process: its report, wall seconds and peak RSS (MiB).

    The peak is the child's own VmHWM, polled: its rusage would count this process's memory too (a
    vfork'd child inherits the parent's high-water mark until exec)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dinosearch", "index", *map(str, paths), "--index", str(index_dir),
                                 "--model", str(model), "--json"], env=ENV, stdout=out, stderr=err)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _hwm_kb(proc.pid))
            time.sleep(0.05)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"dinosearch index failed ({proc.returncode}): {err.read().decode()[-2000:]}")
        report = json.loads(out.read().decode().strip().splitlines()[-1])
    return {"wall_s": wall, "rss_mb": peak / 1024, **{k: report[k] for k in ("added", "removed", "unchanged", "seconds")}}


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass  # exited meanwhile
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="dinosearch-scale-files-"))
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"files": args.files}
    try:
        model = save_random_dinov2(base / "model", shape="wide")  # rows of ViT-S/14's size
        root = base / "photos"
        t = time.perf_counter()
        files = write_tree(root, args.files, rng)
        out["write_files_s"] = time.perf_counter() - t
        index_dir = base / "index"
        # A real run on the first folder records the model's fingerprint and its dimension.
        first = index_run(index_dir, model, files[0].parent)
        cat = Catalogue(index_dir)
        dim = int(cat.get_setting(MODEL_KEY)["dim"])
        t = time.perf_counter()
        insert_as_indexed(cat, files[first["added"]:], root, dim, rng)
        out["insert_rows_s"] = time.perf_counter() - t
        t = time.perf_counter()
        VectorIndex(cat).sync(dim, force=True, requested="auto")
        out["build_vectors_s"] = time.perf_counter() - t
        cat.close()
        unchanged = index_run(index_dir, model, root)
        out.update({"unchanged_wall_s": unchanged["wall_s"], "unchanged_rss_mb": unchanged["rss_mb"],
                    "unchanged_count": unchanged["unchanged"]})
        # 1,000 new photos: into an empty index (the embedding cost), then into the N-row one.
        write_tree(base / "new-photos", 1000, rng, start=args.files)
        # Median of three fresh indexes: a first run's wall time varies by seconds on a busy host.
        alone_runs = [index_run(base / f"index-alone-{i}", model, base / "new-photos") for i in range(3)]
        alone = sorted(alone_runs, key=lambda r: r["wall_s"])[1]
        moved = root / "new"
        shutil.move(str(base / "new-photos"), moved)
        added = index_run(index_dir, model, root)
        out.update({"add_1000_alone_wall_s": alone["wall_s"],
                    "add_1000_alone_runs_s": [round(r["wall_s"], 2) for r in alone_runs], "add_1000_wall_s": added["wall_s"],
                    "add_1000_beyond_embedding_s": added["wall_s"] - alone["wall_s"], "add_1000_rss_mb": added["rss_mb"],
                    "added": added["added"]})
        shutil.rmtree(moved)
        removed = index_run(index_dir, model, root)
        out.update({"remove_1000_wall_s": removed["wall_s"], "remove_1000_rss_mb": removed["rss_mb"],
                    "removed": removed["removed"]})
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    for key, value in out.items():
        print(f"{key:>28}: {round(value, 3) if isinstance(value, float) else value}")


if __name__ == "__main__":
    main()
