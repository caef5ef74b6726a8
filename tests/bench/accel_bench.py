"""Inference backends side by side: speed, first-call cost and fidelity against eager torch fp32.

    .venv/bin/python -m tests.bench.accel_bench [--batches 16 32] [--reps 5] [--images 200]
        [--variants torch-fp32 torch-bf16 compile-bf16 openvino-bf16 openvino-fp32 onnxruntime-int8] [--json out.json]

All variants run in one process on the same inputs, and the timed runs go round-robin (one run of
each variant, then the next round), so drift in a shared machine's load hits every variant alike;
each figure is the median of --reps runs after a warm-up. The model is the random-weight ViT-S/14
from dinosearch.devmodel (the compute of dinov2-small): speed carries over to the real weights,
fidelity only roughly (real activations have other ranges, so real-weight fidelity must be checked
again with real weights). Inputs are photo-like 640x480 JPEGs from tests/images.py, decoded and
preprocessed by the product's own decode(). A figure, never an assertion.

torch.compile's first call is measured cold (a fresh inductor cache) unless --warm-cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

DEFAULT_VARIANTS = ["torch-fp32", "torch-bf16", "compile-bf16", "openvino-bf16", "openvino-fp32", "onnxruntime-int8"]
REFERENCE = "torch-fp32"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--reps", type=int, default=5, help="timed runs per variant and batch size (median)")
    ap.add_argument("--images", type=int, default=200, help="inputs for the fidelity figures")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="BACKEND-PRECISION, e.g. compile-fp32")
    ap.add_argument("--threads", type=int, default=None, help="torch/OpenVINO threads (default: usable CPUs)")
    ap.add_argument("--model", default=None, help="a DINOv2 checkpoint dir (default: random ViT-S/14, cached)")
    ap.add_argument("--warm-cache", action="store_true", help="keep torch.compile's on-disk cache (default: cold)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="accel-bench-inductor-")
    variants = list(dict.fromkeys([REFERENCE, *args.variants]))

    from . import sysmon

    threads = args.threads or sysmon.usable_cpus()
    t = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from dinosearch.accel import native_bf16
    from dinosearch.embed import Dinov2Embedder

    import_s = time.perf_counter() - t
    model = args.model or str(_model())
    env = {
        "cpu": sysmon.cpu_model(),
        "flags": sysmon.cpu_flags(),
        "native_bf16": native_bf16(),
        "threads": threads,
        "torch": torch.__version__,
        "openvino": _version("openvino"),
        "loadavg_start": sysmon.loadavg(),
        "model": model,
    }
    _say(f"cpu: {env['cpu']} | flags: {' '.join(env['flags'])} | native bf16: {env['native_bf16']} | threads {threads}")
    _say(f"torch {env['torch']} | openvino {env['openvino']} | import {import_s:.1f} s | load {env['loadavg_start']}")

    # -- load every variant, time the load and the first call -------------------------------------
    embedders: dict[str, Any] = {}
    setup: dict[str, dict[str, Any]] = {}
    first_batch = None
    for name in variants:
        backend, precision = name.split("-", 1)
        t = time.perf_counter()
        try:
            e = Dinov2Embedder(model, device="cpu", precision=precision, backend=backend)
        except Exception as exc:  # noqa: BLE001 - a missing backend is reported, the rest still runs
            _say(f"{name}: cannot load ({exc})")
            setup[name] = {"error": str(exc)}
            continue
        load_s = time.perf_counter() - t
        if first_batch is None:
            first_batch = _inputs(e.preprocess, max(args.batches), seed=10_000)
        t = time.perf_counter()
        e.embed(first_batch[: args.batches[0]])
        first_s = time.perf_counter() - t
        for b in args.batches[1:]:  # a first call at every other size too (recompiles, if any, happen here)
            t = time.perf_counter()
            e.embed(first_batch[:b])
            setup.setdefault(name, {})[f"first_call_b{b}_s"] = round(time.perf_counter() - t, 2)
        embedders[name] = e
        setup.setdefault(name, {}).update(
            {"load_s": round(load_s, 2), "first_call_s": round(first_s, 2), "in_effect": e.fingerprint.precision}
        )
        _say(f"{name}: load {load_s:.1f} s, first call (batch {args.batches[0]}) {first_s:.1f} s, records {e.fingerprint.precision!r}")
    if REFERENCE not in embedders:
        _say("the reference torch-fp32 did not load")
        return 1

    # -- fidelity on the same decoded inputs ----------------------------------------------------------
    pixels = _inputs(embedders[REFERENCE].preprocess, args.images, seed=0)
    vectors: dict[str, np.ndarray] = {}
    for name, e in embedders.items():
        t = time.perf_counter()
        vectors[name] = np.concatenate([e.embed(pixels[i : i + 16]) for i in range(0, len(pixels), 16)])
        _say(f"{name}: embedded {len(pixels)} fidelity inputs in {time.perf_counter() - t:.1f} s")
    fidelity = {name: _fidelity(vectors[REFERENCE], v) for name, v in vectors.items()}

    # -- speed, round-robin -----------------------------------------------------------------------
    runs: dict[tuple[str, int], list[float]] = {(n, b): [] for n in embedders for b in args.batches}
    for rep in range(args.reps):
        for b in args.batches:
            batch = first_batch[:b]
            for name, e in embedders.items():
                t = time.perf_counter()
                e.embed(batch)
                runs[(name, b)].append(b / (time.perf_counter() - t))
        _say(f"round {rep + 1}/{args.reps} done (load {sysmon.loadavg()})")
    env["loadavg_end"] = sysmon.loadavg()

    # -- report -----------------------------------------------------------------------------------
    rows = []
    for name in variants:
        row: dict[str, Any] = {"variant": name, **setup.get(name, {})}
        if name in embedders:
            for b in args.batches:
                row[f"img_s_b{b}"] = round(statistics.median(runs[(name, b)]), 2)
                row[f"img_s_b{b}_runs"] = [round(x, 2) for x in runs[(name, b)]]
            row.update(fidelity[name])
        rows.append(row)
    _print_table(rows, args.batches, env)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows, "images": len(pixels), "reps": args.reps}, f, indent=2)
    return 0


def _model():
    from .data import ensure_model

    return ensure_model("vit-s14")


def _inputs(pre: Any, n: int, *, seed: int) -> Any:
    """n photo-like 640x480 JPEGs (different seeds) through the product's decode()."""
    import numpy as np

    from dinosearch.decode import decode

    from ..images import jpeg_bytes, photo

    return np.stack([decode(jpeg_bytes(photo(640, 480, seed=seed + i)), pre).pixels for i in range(n)])


def _fidelity(ref: Any, vec: Any, k: int = 10) -> dict[str, float]:
    """Cosine to the reference vector of the same input, and how many of each input's k nearest
    neighbours (among the other inputs) the reference and the variant agree on."""
    import numpy as np

    cos = np.sum(ref * vec, axis=1)

    def knn(v: Any) -> Any:
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    a, b = knn(ref), knn(vec)
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(a, b)])
    return {
        "cos_mean": round(float(cos.mean()), 6),
        "cos_min": round(float(cos.min()), 6),
        "top10_overlap_mean": round(float(overlap.mean()), 4),
        "top10_overlap_min": round(float(overlap.min()), 2),
        "top1_agree": round(float((a[:, 0] == b[:, 0]).mean()), 4),
    }


def _print_table(rows: list[dict[str, Any]], batches: list[int], env: dict[str, Any]) -> None:
    head = ["variant", "records", *[f"img/s b{b}" for b in batches], "load s", "1st call s", "cos mean", "cos min", "top10 mean", "top10 min"]
    print()
    print(f"# {env['cpu']}, {env['threads']} threads, native bf16: {env['native_bf16']}, "
          f"torch {env['torch']}, openvino {env['openvino']}; load avg {env['loadavg_start']} -> {env['loadavg_end']}")
    print("# RANDOM WEIGHTS (ViT-S/14 shape): speed is real, fidelity is indicative only")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | cannot load: {r['error']} |")
            continue
        cells = [r["variant"], r["in_effect"], *[f"{r[f'img_s_b{b}']:.1f}" for b in batches], f"{r['load_s']:.1f}",
                 f"{r['first_call_s']:.1f}", f"{r['cos_mean']:.5f}", f"{r['cos_min']:.5f}",
                 f"{r['top10_overlap_mean']:.3f}", f"{r['top10_overlap_min']:.1f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    sys.stdout.flush()


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _say(msg: str) -> None:
    print(f"  [accel] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
