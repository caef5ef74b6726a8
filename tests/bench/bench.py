"""`make bench`: how fast dinosearch indexes, against the model alone and a naive pipeline, in one run.

    python -m tests.bench.bench                 # CPU, 64 photos, 3 repeats (a few minutes on 2 cores)
    python -m tests.bench.bench --quick         # 16 photos, 2 repeats: a smoke run
    python -m tests.bench.bench --only raw,e2e  # some sections (raw naive e2e pipeline fidelity fast reindex startup memory)
    python -m tests.bench.bench --gpu           # CUDA: 512 photos, batch 128, fp16/bf16, GPU utilisation
    python -m tests.bench.bench --json out.json # also write every figure as JSON

Sections (all medians of --repeats runs, printed with their min..max):
  raw       the model alone on preprocessed tensors, fp32 and bf16 autocast (fp16 too on CUDA)
  naive     sequential Pillow full decode + transformers AutoImageProcessor + fp32 forward
  e2e       dinosearch.api.Index(fresh dir, model=...).add(photos) in a fresh process: the product path;
            on CPU the raw model is timed again just before each repeat, and e2e / raw is judged pair by pair
  pipeline  does the pipeline feed the model: with the tiny model, Index.add end to end over dinosearch's
            decode workers alone on the same files (640x480 and 12 MP JPEGs), and the indexing process's
            own CPU per image, the model excluded (--gpu: the ViT-S model on CUDA, all cores decoding)
  fidelity  the product's vectors vs AutoImageProcessor + Dinov2Model.pooler_output on the full decode
  fast      the faster CPU path end to end (--backend onnxruntime --precision int8): img/s, its model
            alone timed before each repeat, the stored vectors vs the fp32 reference (CPU only)
  reindex   `dinosearch index` on an unchanged tree of small files, beyond `dinosearch --help` start-up
  startup   `dinosearch --help`, `stats`, `query <indexed image>` wall time; torch must not be imported
  memory    peak and start/middle/end RSS of indexing (the e2e runs and the first index of the tree)

GPU mode, for a lent CUDA machine (`python3 -m tests.bench.bench --gpu [--json $OUT/bench.json]`): raw, naive,
e2e, pipeline, fidelity and memory on device cuda, N=512, batch 128, fp32/fp16/bf16, GPU utilisation sampled with
nvidia-smi every 200 ms; no new section or repeat starts after --deadline (480 s by default in this mode)
and every child run is cut at it, so one 10-minute command always prints. Generating 512 photos takes
about a minute on 16 cores the first time. The e2e section needs dinosearch's own dependencies
(faiss-cpu, SQLAlchemy, Alembic + Mako): the `hardware` block lists any that are missing.

Inputs are generated once and cached in .bench/ (photos, a small-file tree, random-weight models,
the tree's first index). The machines are shared and noisy: read ratios measured side by side in
one run, not absolute figures from different runs. Nothing here asserts; PASS/MISS are information.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tests.bench import (sec_e2e, sec_fast, sec_fidelity, sec_hardware, sec_memory, sec_naive, sec_pipeline, sec_raw,
                         sec_reindex, sec_startup)
from tests.bench import sysmon
from tests.bench.core import (FAST_BACKEND, FAST_PRECISION, T_COS_FAST, T_E2E_IMG_S, T_E2E_OVER_NAIVE, T_E2E_OVER_RAW,
                              T_QUERY, T_REINDEX_PER_10K, T_STARTUP, T_TOPK_FAST, Bench, verdict)

# Every section, in the order it runs: each module's run(bench, table) fills the section's table.
RUNS = {
    "raw": sec_raw.run,
    "naive": sec_naive.run,
    "e2e": sec_e2e.run,
    "pipeline": sec_pipeline.run,
    "fidelity": sec_fidelity.run,
    "fast": sec_fast.run,
    "reindex": sec_reindex.run,
    "startup": sec_startup.run,
    "memory": sec_memory.run,
}
SECTIONS = tuple(RUNS)
GPU_SECTIONS = ("raw", "naive", "e2e", "pipeline", "fidelity", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="smoke run: N=16, 2 repeats, 3 start-up repeats")
    p.add_argument("--gpu", action="store_true", help="CUDA mode: N=512, batch 128, fp16/bf16, GPU utilisation")
    p.add_argument("--n", type=int, help="photos to index (default 64; --quick 16; --gpu 512)")
    p.add_argument("--repeats", type=int, help="repeats per measurement, medians reported (default 3; --quick 2)")
    p.add_argument("--only", action="append", metavar="SECTIONS",
                   help=f"comma-separated sections to run (repeatable): {', '.join(SECTIONS)}")
    p.add_argument("--json", metavar="OUT", help="write all results to this JSON file")
    p.add_argument("--batch", type=int, help="batch for the raw model (default 32 CPU, 128 GPU) and the GPU e2e run")
    p.add_argument("--workers", type=int, help="decode workers for the e2e run (default: the product's)")
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads in the e2e process (default: torch's)")
    p.add_argument("--backend", default="torch", choices=("torch", "compile", "openvino", "onnxruntime"),
                   help="the e2e run's --backend (default torch)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                   help="the e2e run's --precision (default auto)")
    p.add_argument("--naive-n", type=int, help="photos for the naive pipeline (default min(N, 64))")
    p.add_argument("--naive-batch", type=int, default=8, help="naive pipeline batch (default 8)")
    p.add_argument("--fid-n", type=int, help="photos for the fidelity check (default min(N, 64))")
    p.add_argument("--pipeline-n", type=int, help="at most this many photos per set in the pipeline section (default 600 / 120)")
    p.add_argument("--tree-n", type=int, default=10_000, help="small files for re-index/start-up (default 10000)")
    p.add_argument("--startup-repeats", type=int, help="runs per start-up command (default 5; --quick 3)")
    p.add_argument("--rebuild-tree-index", action="store_true", help="re-measure the first index of the tree")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds any one child run may take (default 600)")
    p.add_argument("--deadline", type=float, help="seconds after which no new section or repeat starts "
                   "(for a machine lent for a fixed time; child runs are also cut at it)")
    p.add_argument("--keep", action="store_true", help="keep this run's scratch indexes under .bench/tmp/")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    a = p.parse_args(argv)
    a.n = a.n or (512 if a.gpu else 16 if a.quick else 64)
    a.repeats = a.repeats or (2 if a.quick else 3)
    a.batch = a.batch or (128 if a.gpu else 32)
    a.naive_n = min(a.naive_n or 64, a.n)
    a.fid_n = min(a.fid_n or 64, a.n)
    a.startup_repeats = a.startup_repeats or (3 if a.quick else 5)
    if a.deadline is None and a.gpu:
        a.deadline = 480.0  # a lent GPU machine runs one command for at most 10 minutes
    if a.only:
        a.sections = [s.strip() for item in a.only for s in item.split(",") if s.strip()]
        unknown = [s for s in a.sections if s not in SECTIONS]
        if unknown:
            p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    else:
        a.sections = list(GPU_SECTIONS if a.gpu else SECTIONS)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    started = time.perf_counter()
    b = Bench(a)
    try:
        sec_hardware.run(b)
        if a.gpu and not b.results["hardware"].get("cuda_available"):
            print("\n--gpu: torch sees no CUDA device; nothing to measure on the GPU")
            return 2
        # Inputs first (cached): generating them while torch is busy would skew nothing, but keep it apart.
        if any(s in a.sections for s in ("naive", "e2e", "fidelity", "memory")):
            b.photos()
        b.model()
        order = [s for s in SECTIONS if s in a.sections]
        for name in order:
            b.section(name, RUNS[name])
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        b.results["hardware"]["loadavg_end"] = sysmon.loadavg() if "hardware" in b.results else None
        b.results["total_seconds"] = round(time.perf_counter() - started, 1)
        b.close()
        print(f"\n(total {b.results['total_seconds']:.0f} s; load average at the end {sysmon.loadavg()})")
        if a.json:
            b.save_json()
            print(f"results written to {a.json}")
        _summary(b)
    return 0


def _summary(b: Bench) -> None:
    """The headline figures and verdicts, together."""
    s = b.results["sections"]
    lines = []
    ratios = (s.get("e2e") or {}).get("ratios") or {}
    e2e = ((s.get("e2e") or {}).get("img_s") or {}).get("median")
    if e2e is not None:
        lines.append(f"  dinosearch e2e {e2e:.1f} img/s  {verdict(e2e, T_E2E_IMG_S)}")
    if "e2e_over_raw_paired" in ratios:
        v = ratios["e2e_over_raw_paired"]
        lines.append(f"  dinosearch/raw {v:.2f} pair by pair  {verdict(v, T_E2E_OVER_RAW)} (medians of the sections: {ratios['e2e_over_raw']:.2f})")
    elif "e2e_over_raw" in ratios:
        lines.append(f"  dinosearch/raw {ratios['e2e_over_raw']:.2f}  {verdict(ratios['e2e_over_raw'], T_E2E_OVER_RAW)}")
    if "e2e_over_naive" in ratios:
        lines.append(f"  dinosearch/naive {ratios['e2e_over_naive']:.2f}  {verdict(ratios['e2e_over_naive'], T_E2E_OVER_NAIVE)}")
    for name, m in ((s.get("fidelity") or {}).get("rows") or {}).items():
        lines.append(f"  fidelity {name}: mean cos {m['mean_cos']:.5f}  {verdict(m['mean_cos'], m['target_mean_cos'])}")
    fast = s.get("fast") or {}
    if (fast.get("img_s") or {}).get("median") is not None:
        v = fast["img_s"]["median"]
        line = f"  fast path ({FAST_BACKEND} {FAST_PRECISION}) e2e {v:.1f} img/s  {verdict(v, T_E2E_IMG_S)}"
        if fast.get("over_default_e2e"):
            line += f"; {fast['over_default_e2e']:.2f}x the default path"
        lines.append(line)
        if fast.get("fidelity"):
            m = fast["fidelity"]
            lines.append(f"  fast path fidelity: mean cos {m['mean_cos']:.5f} {verdict(m['mean_cos'], T_COS_FAST)}, "
                         f"top-{m['k']} overlap {m['topk_overlap']:.3f} {verdict(m['topk_overlap'], T_TOPK_FAST)}")
    r = s.get("reindex") or {}
    if r.get("per_10k_beyond_startup_s") is not None:
        lines.append(f"  re-index per 10k {r['per_10k_beyond_startup_s']:.2f} s  {verdict(r['per_10k_beyond_startup_s'], T_REINDEX_PER_10K, higher=False)}"
                     f"; torch imported: {r.get('torch_imported')}")
    for name, c in ((s.get("startup") or {}).get("cases") or {}).items():
        if isinstance(c, dict) and "seconds" in c and c["seconds"].get("median") is not None:
            target = T_QUERY if "query" in name else T_STARTUP
            lines.append(f"  {name} {c['seconds']['median']:.2f} s  {verdict(c['seconds']['median'], target, higher=False)}")
    errors = [k for k, v in s.items() if isinstance(v, dict) and v.get("error")]
    if errors:
        lines.append(f"  sections with errors: {', '.join(errors)} (-v for tracebacks)")
    if lines:
        print("\n== summary")
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
