"""Ray vs the local path: `dinosearch index --ray` on a local Ray cluster against `index` on the same files.

    python -m tests.bench.ray_bench                       # 48 12-MP JPEGs, ViT-S/14 shape, 2 CPUs
    python -m tests.bench.ray_bench --n 512 --num-cpus 16 --small   # a GPU box: also ~0.5 MP product shots

Both paths run in this process, alternately (local, Ray, local, Ray ...), each into a fresh index with
the same random-weight model; a run's wall time includes loading the model (the Ray path: in its actor).
The Ray cluster is started once, before the first run, and not timed. Prints img/s per run, their
medians, the ratio Ray / local (target >= 0.8), and, where nvidia-smi exists, the GPU's busy %.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

from .data import BENCH_DIR, ensure_model, ensure_photo_set, scratch_dir
from .sysmon import GpuSampler, cpu_model, loadavg

SMALL_W, SMALL_H = 816, 612  # ~0.5 MP, a product shot


def small_set(n: int) -> Path:
    """n ~0.5 MP photo-like JPEGs (quality 90), cached."""
    import numpy as np
    from PIL import Image

    from .data import photo_pixels

    d = BENCH_DIR / "sets" / f"small-{SMALL_W}x{SMALL_H}-n{n}"
    if d.is_dir() and len(list(d.iterdir())) == n:
        return d
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.ascontiguousarray(photo_pixels(i, SMALL_W, SMALL_H)), "RGB").save(d / f"p{i:05d}.jpg", "JPEG", quality=90)
    return d


def one_run(photos: Path, model: Path, *, ray: str | None, workers: int | None, device: str) -> dict[str, float]:
    from dinosearch import Index

    index = scratch_dir() / f"ray-bench-{'ray' if ray else 'local'}"
    shutil.rmtree(index, ignore_errors=True)
    gpu = GpuSampler().start()
    t = time.perf_counter()
    with Index(index, model=str(model), workers=workers, device=device) as ix:
        report = ix.add(photos, ray=ray)
    wall = time.perf_counter() - t
    util = gpu.stop()
    shutil.rmtree(index, ignore_errors=True)
    return {"img_s": report.added / wall, "added": report.added, "failed": report.failed, "gpu_util": util.get("util_mean")}


def compare(label: str, photos: Path, model: Path, args: argparse.Namespace) -> None:
    runs: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    for i in range(args.repeats):
        for kind in ("local", "ray"):
            r = one_run(photos, model, ray="auto" if kind == "ray" else None, workers=args.num_cpus, device=args.device)
            runs[kind].append(r)
            gpu = f", GPU busy {r['gpu_util']:.0f} %" if r.get("gpu_util") is not None else ""
            print(f"  {label} {kind:>5} run {i + 1}: {r['img_s']:.2f} img/s ({r['added']} added, {r['failed']} failed{gpu})", flush=True)
    local = statistics.median(r["img_s"] for r in runs["local"])
    ray = statistics.median(r["img_s"] for r in runs["ray"])
    pairs = [b["img_s"] / a["img_s"] for a, b in zip(runs["local"], runs["ray"])]
    verdict = "ok" if ray / local >= 0.8 else "BELOW TARGET"
    print(f"{label}: local {local:.2f} img/s, ray {ray:.2f} img/s, ray/local {ray / local:.2f} "
          f"(pair by pair {' '.join(f'{p:.2f}' for p in pairs)}; target >= 0.8: {verdict})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="photos per run")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster, and local decode workers")
    ap.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local Ray cluster [default: Ray's count]")
    ap.add_argument("--shape", default="vit-s14", help="random DINOv2 shape (devmodel.SHAPES)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="also ~0.5 MP product-style JPEGs")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    print(f"ray bench: {cpu_model()}, load {loadavg()}, ray {ray.__version__}, {args.num_cpus} CPUs, model {args.shape}", flush=True)
    model = ensure_model(args.shape)
    sets = [("12 MP JPEG", ensure_photo_set(args.n))] + ([("0.5 MP JPEG", small_set(args.n))] if args.small else [])
    t = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    print(f"  local Ray cluster started in {time.perf_counter() - t:.1f} s (not timed below)", flush=True)
    try:
        for label, photos in sets:
            compare(label, photos, model, args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
