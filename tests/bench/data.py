"""Benchmark inputs, generated deterministically and cached under .bench/ (gitignored).

- 12-megapixel photo-like JPEGs (4032x3024, quality 92, ~3 MB: smooth structure + gradient + grain),
  and the same kind at other sizes (640x480 for the pipeline section);
- a tree of small distinct JPEGs for the unchanged re-index and start-up checks;
- random-weight DINOv2 checkpoints (ViT-S/14 shape for timing, tiny for bulk indexing).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"

PHOTO_W, PHOTO_H, PHOTO_QUALITY = 4032, 3024, 92
PHOTO_VERSION = "v1"  # bump when the generator changes, so stale caches are not reused


def _log(msg: str) -> None:
    print(f"  [data] {msg}", file=sys.stderr, flush=True)


def photo_pixels(seed: int, width: int = PHOTO_W, height: int = PHOTO_H):
    """(height, width, 3) uint8: bicubic-upsampled random structure + a gradient + uniform grain (+-8)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    cells = int(rng.integers(24, 96))  # coarse-structure scale differs per image
    small = rng.integers(0, 256, size=(height // cells + 2, width // cells + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    angle = rng.uniform(0, 2 * np.pi)
    y = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    grad = (40 * (np.cos(angle) * x + np.sin(angle) * y)).astype(np.int16)[..., None]
    img = base + grad
    img += rng.integers(-8, 9, size=img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_photo(path: str, seed: int, width: int = PHOTO_W, height: int = PHOTO_H) -> int:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photo_pixels(seed, width, height), "RGB").save(buf, "JPEG", quality=PHOTO_QUALITY)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return len(buf.getvalue())


def photo_cache(width: int = PHOTO_W, height: int = PHOTO_H) -> Path:
    return BENCH_DIR / f"photos-{width}x{height}-q{PHOTO_QUALITY}-{PHOTO_VERSION}"


def ensure_photos(n: int, *, width: int = PHOTO_W, height: int = PHOTO_H, jobs: int | None = None) -> list[Path]:
    """The first n cached photos of this size (img_00000.jpg ...), generating any that are missing."""
    cache = photo_cache(width, height)
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / f"img_{i:05d}.jpg" for i in range(n)]
    missing = [(str(p), i) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(missing)))
        _log(f"generating {len(missing)} {width}x{height} JPEGs in {cache} with {jobs} process(es) (cached) ...")
        t = time.perf_counter()
        if jobs == 1:
            for p, i in missing:
                _write_photo(p, i, width, height)
        else:
            import multiprocessing

            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
                list(ex.map(_write_photo, [p for p, _ in missing], [i for _, i in missing],
                            [width] * len(missing), [height] * len(missing), chunksize=1))
        _log(f"generated in {time.perf_counter() - t:.1f} s")
    return paths


def ensure_photo_set(n: int, *, width: int = PHOTO_W, height: int = PHOTO_H) -> Path:
    """A folder holding exactly the first n photos of this size (hard links into the cache, or copies)."""
    paths = ensure_photos(n, width=width, height=height)
    size = "" if (width, height) == (PHOTO_W, PHOTO_H) else f"-{width}x{height}"
    d = BENCH_DIR / "sets" / f"photos-{PHOTO_VERSION}{size}-n{n}"
    want = {p.name for p in paths}
    if d.is_dir() and {p.name for p in d.iterdir()} == want:
        return d
    shutil.rmtree(d, ignore_errors=True)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in paths:
        try:
            os.link(p, tmp / p.name)
        except OSError:
            shutil.copy2(p, tmp / p.name)
    os.replace(tmp, d)
    return d


def ensure_tree(n_files: int, *, per_dir: int = 100) -> Path:
    """n_files distinct 8x8 JPEGs in folders of `per_dir` (d000/f00000.jpg ...), written once and cached."""
    import numpy as np
    from PIL import Image

    root = BENCH_DIR / f"tree-{n_files}"
    marker = root / ".complete"  # hidden: the walk skips it
    if marker.exists():
        return root
    _log(f"writing {n_files} small JPEGs to {root} (cached) ...")
    t = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(12345)
    for i in range(n_files):
        d = root / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        px = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(px, "RGB").save(d / f"f{i:05d}.jpg", "JPEG", quality=90)
    marker.write_text(str(n_files))
    _log(f"written in {time.perf_counter() - t:.1f} s")
    return root


def ensure_model(shape: str, *, seed: int = 0) -> Path:
    """A random-weight DINOv2 checkpoint from dinosearch.devmodel, saved once and cached."""
    d = BENCH_DIR / "models" / f"dinov2-{shape}-seed{seed}"
    if (d / "config.json").exists() and (d / "preprocessor_config.json").exists():
        return d
    from dinosearch.devmodel import save_random_dinov2

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    _log(f"saving a random {shape} DINOv2 to {d} (cached) ...")
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_random_dinov2(tmp, shape=shape, seed=seed)
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    return d


def scratch_dir() -> Path:
    d = BENCH_DIR / "tmp"
    d.mkdir(parents=True, exist_ok=True)
    return d
