"""Ray vs the local path: `dinosearch index --ray` on a local Ray cluster against `index` on the same files.

    python -m tests.bench.ray_bench                       # 48 12-MP JPEGs, ViT-S/14 shape, 2 CPUs
    python -m tests.bench.ray_bench --n 512 --num-cpus 16 --small   # a GPU box: also ~0.5 MP product shots
    python -m tests.bench.ray_bench --shape tiny --small --no-photos --n 400  # the driver's CPU per photo

Each run is `dinosearch index --json` in a fresh process, alternately (local, Ray, local, Ray ...), into
a fresh index with the same random-weight model; its wall time includes start-up and loading the model
(the Ray path: in its actor). The Ray cluster is started once by this script, not timed, and the Ray
runs join it with `--ray ADDRESS`. Prints img/s per run, their
medians, the ratio Ray / local (target >= 0.8), and, where nvidia-smi exists, the GPU's busy %.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
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
    """`dinosearch index` in a fresh process (as users run it: imports and the model load count, for
    the Ray path in its actor), into a fresh index."""
    index = scratch_dir() / f"ray-bench-{'ray' if ray else 'local'}"
    shutil.rmtree(index, ignore_errors=True)
    cmd = [sys.executable, "-m", "dinosearch", "index", str(photos), "--index", str(index), "--model", str(model),
           "--device", device, "--json", *(["--workers", str(workers)] if workers else []), *(["--ray", ray] if ray else [])]
    gpu = GpuSampler().start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    util = gpu.stop()
    shutil.rmtree(index, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"dinosearch index failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    report = json.loads(proc.stdout)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"img_s": report["added"] / wall, "added": report["added"], "failed": report["failed"],
            "gpu_util": util.get("util_mean"), "cpu_ms": 1000 * cpu / max(1, report["added"])}


def compare(label: str, photos: Path, model: Path, args: argparse.Namespace) -> None:
    runs: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    for i in range(args.repeats):
        for kind in ("local", "ray"):
            r = one_run(photos, model, ray=args.address if kind == "ray" else None,
                        workers=None if kind == "ray" else args.num_cpus, device=args.device)
            runs[kind].append(r)
            gpu = f", GPU busy {r['gpu_util']:.0f} %" if r.get("gpu_util") is not None else ""
            # CPU per photo of the `index` process and its children: locally the decode workers too;
            # with --ray the driver alone (the cluster's workers are not its children), which bounds
            # what one driver can feed: 1000 / cpu_ms photos/s.
            print(f"  {label} {kind:>5} run {i + 1}: {r['img_s']:.2f} img/s ({r['added']} added, {r['failed']} failed, "
                  f"index process tree {r['cpu_ms']:.1f} CPU-ms/photo{gpu})", flush=True)
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
    ap.add_argument("--no-photos", action="store_true", help="leave out the 12 MP JPEGs (with --small)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    print(f"ray bench: {cpu_model()}, load {loadavg()}, ray {ray.__version__}, {args.num_cpus} CPUs, model {args.shape}", flush=True)
    model = ensure_model(args.shape)
    sets = ([] if args.no_photos else [("12 MP JPEG", ensure_photo_set(args.n))]) + (
        [("0.5 MP JPEG", small_set(args.n))] if args.small else [])
    t = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    args.address = ray.get_runtime_context().gcs_address  # the index runs join this cluster
    print(f"  local Ray cluster started in {time.perf_counter() - t:.1f} s (not timed below)", flush=True)
    try:
        for label, photos in sets:
            compare(label, photos, model, args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
