"""Duplicates benchmark: pair precision/recall on a generated set, and grouping speed at 100k / 1M vectors.

    python -m tests.bench.duplicates_bench [--only quality,speed] [--sizes 100000,1000000] [--json out.json]

Quality: originals (the sample catalogue and generated photos), copies derived from each (resize,
JPEG q40, crop 90 %, 3 degree rotation, brightness, a screenshot-like border, EXIF-rotated, a byte
copy), a "burst" shot of each (another crop of the same scene), and unrelated distractors, indexed
with a random-weights ViT-S/14. A pair counts when both images land in one group. Truth: exact = byte
copies; near = an original and its copies; similar = near plus the burst. Real weights will differ.

Speed: synthetic unit vectors (384-d, clustered around 2,048 subjects, 1 % of rows planted as copies
at cosine ~0.97), generated chunk by chunk as SQLite would hand them over, grouped by the product's code in a child process; time, peak
RSS of that process, and the recall of the planted pairs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench.data import REPO, ensure_model, scratch_dir
from tests.bench.sysmon import cpu_model, peak_rss_self_mib, usable_cpus

DIM = 384
CHUNK = 50_000
PLANTED_PER_CHUNK = 250
CENTRES = 2048  # subjects the synthetic collection clusters around  # pairs: rows (2j, 2j+1) of each chunk, j < this


def _log(msg: str) -> None:
    print(f"  [dups] {msg}", file=sys.stderr, flush=True)


# -- quality -------------------------------------------------------------------------------------------
def _variants(im: Any) -> dict[str, bytes]:
    """Derived copies of one upright RGB image, as file bytes."""
    from PIL import Image, ImageEnhance, ImageOps

    def jpeg(x: Any, q: int = 90, **kw: Any) -> bytes:
        buf = io.BytesIO()
        x.save(buf, "JPEG", quality=q, **kw)
        return buf.getvalue()

    w, h = im.size
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; a viewer (and dinosearch) turns it upright
    return {
        "resize": jpeg(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "q40": jpeg(im, 40),
        "crop90": jpeg(im.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
        "rot3": jpeg(im.rotate(3, resample=Image.Resampling.BICUBIC)),
        "bright": jpeg(ImageEnhance.Brightness(im).enhance(1.2)),
        "border": jpeg(ImageOps.expand(im, border=(0, h // 12, 0, h // 8), fill=(32, 32, 36))),
        "exif": jpeg(im.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()),
    }


def make_quality_set(folder: Path, *, originals: int = 24, distractors: int = 48) -> dict[str, tuple[str, str]]:
    """Write the set; returns file name -> (family, kind) with kind original/copy/bytecopy/burst/distractor."""
    from PIL import Image

    from tests.images import photo

    samples = sorted((REPO / "data" / "samples").glob("*.jpg"))
    sources = [Image.open(p).convert("RGB") for p in samples[: originals // 2]]
    sources += [photo(640, 480, seed=1000 + i) for i in range(originals - len(sources))]
    truth: dict[str, tuple[str, str]] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(sources):
        fam = f"f{i:03d}"
        w, h = im.size
        im.save(folder / f"{fam}-original.jpg", quality=92)
        truth[f"{fam}-original.jpg"] = (fam, "original")
        (folder / f"{fam}-bytecopy.jpg").write_bytes((folder / f"{fam}-original.jpg").read_bytes())
        truth[f"{fam}-bytecopy.jpg"] = (fam, "bytecopy")
        for kind, data in _variants(im).items():
            (folder / f"{fam}-{kind}.jpg").write_bytes(data)
            truth[f"{fam}-{kind}.jpg"] = (fam, "copy")
        # A burst: the same scene, framed differently (a 70 % window off to one side).
        im.crop((0, h * 3 // 10, w * 7 // 10, h)).resize((w, h)).save(folder / f"{fam}-burst.jpg", quality=90)
        truth[f"{fam}-burst.jpg"] = (fam, "burst")
    for j in range(distractors):
        photo(640, 480, seed=5000 + j).save(folder / f"x{j:03d}.jpg", quality=90)
        truth[f"x{j:03d}.jpg"] = (f"x{j:03d}", "distractor")
    return truth


def _true_pairs(truth: dict[str, tuple[str, str]], level: str) -> set[frozenset[str]]:
    by_family: dict[str, list[str]] = {}
    for name, (fam, kind) in truth.items():
        if kind == "distractor" or (level == "exact" and kind not in ("original", "bytecopy")):
            continue
        if level == "near" and kind == "burst":
            continue
        by_family.setdefault(fam, []).append(name)
    return {frozenset(p) for names in by_family.values() for p in combinations(names, 2)}


def quality(model: str) -> dict[str, Any]:
    from dinosearch.api import Index
    from dinosearch.duplicates import LEVELS

    work = scratch_dir() / "dups-quality"
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    truth = make_quality_set(work / "photos")
    _log(f"indexing {len(truth)} generated images with a random ViT-S/14 ...")
    out: dict[str, Any] = {"images": len(truth), "levels": {}}
    with Index(work / "index", model=model) as ix:
        t = time.perf_counter()
        ix.add(work / "photos")
        out["index_seconds"] = round(time.perf_counter() - t, 1)
        for level in ("exact", "near", "similar"):
            t = time.perf_counter()
            groups = ix.duplicates(level=level)
            seconds = time.perf_counter() - t
            found = {frozenset((os.path.basename(a.path), os.path.basename(b.path))) for g in groups for a, b in combinations(g.members, 2)}
            real = _true_pairs(truth, level)
            hit = len(found & real)
            out["levels"][level] = {
                "threshold": LEVELS[level], "groups": len(groups), "pairs_found": len(found), "true_pairs": len(real),
                "precision": round(hit / len(found), 3) if found else None, "recall": round(hit / len(real), 3) if real else None,
                "seconds": round(seconds, 3),
            }
            _log(f"{level}: {out['levels'][level]}")
    return out


# -- speed ----------------------------------------------------------------------------------------------
def synthetic_chunks(n: int, *, seed: int = 0):  # noqa: ANN201
    """() -> iterator of (ids, (m, DIM) float32 unit rows), regenerated the same on every call.

    Rows lie around CENTRES random directions (cosine ~0.6 to their centre, ~0.36 between two rows of
    one centre, ~0 across centres), as embeddings of a photo collection cluster by subject; in each
    chunk, rows 2j+1 are copies of rows 2j (cosine ~0.97).
    """
    centres = np.random.default_rng(seed).standard_normal((CENTRES, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def chunks():  # noqa: ANN202
        for c, start in enumerate(range(0, n, CHUNK)):
            m = min(CHUNK, n - start)
            rng = np.random.default_rng(seed * 1_000_003 + c + 1)
            v = centres[rng.integers(0, CENTRES, m)] + rng.standard_normal((m, DIM), dtype=np.float32) * np.float32(1.33 / DIM**0.5)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            p = min(PLANTED_PER_CHUNK, m // 2)
            v[1 : 2 * p : 2] = v[0 : 2 * p : 2] + rng.standard_normal((p, DIM), dtype=np.float32) * np.float32(0.25 / DIM**0.5)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            yield np.arange(start + 1, start + m + 1, dtype=np.int64), v

    return chunks


def speed_child(n: int, threshold: float) -> dict[str, Any]:
    """Group n synthetic vectors with the product's code; run in its own process for a clean peak RSS."""
    from dinosearch.duplicates import KeepRule, star_groups
    from dinosearch.neighbours import build_search_index, similar_pairs

    chunks = synthetic_chunks(n)
    c0 = time.process_time()
    t0 = time.perf_counter()
    index = build_search_index(chunks, count=n, dim=DIM)
    t1 = time.perf_counter()
    a, b, s = similar_pairs(index, chunks, threshold=threshold)
    t2 = time.perf_counter()
    ids = np.unique(np.concatenate([a, b])).tolist()
    facts = {i: {"path": f"/p/{i:09d}.jpg", "root": "/p", "width": 100, "height": 100, "size": i, "mtime_ns": 0} for i in ids}
    groups = star_groups((a, b, s), facts, KeepRule.parse("largest"))
    t3 = time.perf_counter()
    planted = {(start + 2 * j + 1, start + 2 * j + 2) for start in range(0, n, CHUNK) for j in range(min(PLANTED_PER_CHUNK, min(CHUNK, n - start) // 2))}
    found = set(zip(a.tolist(), b.tolist()))
    return {
        "vectors": n, "index": type(index).__name__, "build_s": round(t1 - t0, 1), "search_s": round(t2 - t1, 1),
        "group_s": round(t3 - t2, 2), "total_s": round(t3 - t0, 1), "cpu_s": round(time.process_time() - c0, 1), "pairs": len(found), "groups": len(groups),
        "planted_recall": round(len(planted & found) / len(planted), 4), "peak_rss_mib": peak_rss_self_mib(),
    }


def speed(sizes: list[int], threshold: float) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        _log(f"grouping {n:,} synthetic vectors in a child process ...")
        proc = subprocess.run(
            [sys.executable, "-m", "tests.bench.duplicates_bench", "--child", str(n), "--threshold", str(threshold)],
            capture_output=True, text=True, cwd=REPO,
        )
        if proc.returncode != 0:
            raise SystemExit(f"the {n} run failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        _log(str(rows[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="quality,speed", help="comma-separated sections: quality, speed")
    ap.add_argument("--sizes", default="100000,1000000", help="vector counts for the speed section")
    ap.add_argument("--threshold", type=float, default=0.93, help="cosine for the speed section (the near default)")
    ap.add_argument("--model", default=None, help="a checkpoint folder for the quality section [default: random ViT-S/14]")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(speed_child(args.child, args.threshold)))
        return
    only = set(args.only.split(","))
    out: dict[str, Any] = {"cpu": cpu_model(), "cpus": usable_cpus()}
    if "quality" in only:
        out["quality"] = quality(args.model or str(ensure_model("vit-s14")))
    if "speed" in only:
        out["speed"] = speed([int(x) for x in args.sizes.split(",")], args.threshold)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def report(out: dict[str, Any]) -> None:
    print(f"\nduplicates on {out['cpus']} x {out['cpu']}")
    if "quality" in out:
        q = out["quality"]
        print(f"quality: {q['images']} generated images (random-weights ViT-S/14: real weights will differ)")
        print(f"  {'level':<8} {'cosine':>6} {'groups':>6} {'pairs':>6} {'true':>6} {'precision':>9} {'recall':>6}")
        for level, r in q["levels"].items():
            print(f"  {level:<8} {r['threshold']:>6} {r['groups']:>6} {r['pairs_found']:>6} {r['true_pairs']:>6} {str(r['precision']):>9} {str(r['recall']):>6}")
    for r in out.get("speed", []):
        print(f"speed: {r['vectors']:>9,} vectors ({r['index']}): build {r['build_s']} s + search {r['search_s']} s + group "
              f"{r['group_s']} s = {r['total_s']} s wall ({r['cpu_s']} CPU-s), peak RSS {r['peak_rss_mib']} MiB, planted pairs found {r['planted_recall']}")


if __name__ == "__main__":
    main()
