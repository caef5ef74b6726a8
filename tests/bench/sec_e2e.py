"""Section `e2e`: dinosearch.api.Index(fresh dir, model=...).add(photos) in a fresh process, the product
path; on CPU the raw model is timed again just before each repeat, and e2e / raw is judged pair by pair."""

from __future__ import annotations

import statistics
import sys
from typing import Any

from tests.bench.core import T_E2E_IMG_S, T_E2E_OVER_NAIVE, T_E2E_OVER_RAW, Bench, Table, spread, summary, verdict
from tests.bench.indexing import cpu_per_photo, e2e_runs


def run(bench: Bench, t: Table) -> None:
    n = len(bench.photos())
    runs = e2e_runs(bench)
    good = [r for r in runs if r.get("ok") and not r.get("cold")]
    for r in runs:
        if not r.get("ok"):
            t.note(f"ERROR in a run: {r.get('error')}")
            if r.get("traceback") and bench.a.verbose:
                print(r["traceback"], file=sys.stderr)
    if not good:
        return
    first = good[0]
    t.note(f"{n} photos; device {first.get('device')}, precision {first.get('precision')}, batch {first.get('batch_size')}, "
           f"workers {bench.a.workers or 'default'}, torch threads {first.get('torch_threads')}; "
           f"imports before the clock: {first.get('import_s', 0):.1f} s")
    for r in good:
        rp = r.get("report") or {}
        if rp.get("added") != n or rp.get("failed"):
            t.note(f"WARNING: a run indexed {rp.get('added')} of {n} photos ({rp.get('failed')} failed): {rp}")
            break
    e2e = summary([r["img_s"] for r in good])
    rep = summary([r["report_images_per_second"] for r in good])
    steady = summary([r["steady_img_s"] for r in good if r.get("steady_img_s")])
    secs = summary([r["seconds"] for r in good])
    t.add("dinosearch end to end (N / wall of Index+add)", e2e["median"], "img/s", spread(e2e), verdict(e2e["median"], T_E2E_IMG_S))
    t.add("  wall seconds", secs["median"], "s", spread(secs))
    t.add("  report.images_per_second (product's own)", rep["median"], "img/s", spread(rep))
    t.add("  steady state (first to last image)", steady["median"], "img/s", spread(steady))
    t.add("  Index() open + migrate", summary([r["open_s"] for r in good])["median"], "s")
    t.add("  time to first image (model load, workers)", summary([r["first_item_s"] for r in good if r.get("first_item_s")])["median"], "s")
    model_ms, decode_ms = cpu_per_photo(t, good, n)
    ratios = _ratios(bench, t, good, e2e["median"])
    _why(bench, t, good, model_ms, decode_ms)
    _gpu_utilisation(bench, t, good)
    bench.put("e2e", "img_s", e2e)
    bench.put("e2e", "report_img_s", rep)
    bench.put("e2e", "steady_img_s", steady)
    bench.put("e2e", "ratios", ratios)
    bench.put("e2e", "runs", runs)


def raw_img_s(bench: Bench) -> tuple[float | None, float | None]:
    raw = bench.results["sections"].get("raw", {})
    return raw.get("raw_img_s"), (raw.get("fp32") or {}).get("median")


def _ratios(bench: Bench, t: Table, good: list[dict[str, Any]], e2e: float) -> dict[str, Any]:
    """dinosearch over the raw model (pair by pair where probed) and over the naive pipeline."""
    raw_best, raw_fp32 = raw_img_s(bench)
    naive = (bench.results["sections"].get("naive", {}).get("img_s") or {}).get("median")
    ratios: dict[str, Any] = {}
    paired = [r["img_s"] / r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")]
    if raw_best and paired:
        # The verdict goes to the paired ratio: each e2e repeat over the raw model timed just before it.
        best = bench.results["sections"]["raw"].get("best")
        ratios["e2e_over_raw_paired"] = statistics.median(paired)
        ratios["e2e_over_raw"] = e2e / raw_best
        probes = summary([r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")])
        t.add(f"  raw ({best}) timed just before each e2e repeat", probes["median"], "img/s", spread(probes), digits=1)
        t.add(f"dinosearch / raw ({best}), pair by pair", ratios["e2e_over_raw_paired"], "x",
              " ".join(f"{v:.2f}" for v in paired), verdict(ratios["e2e_over_raw_paired"], T_E2E_OVER_RAW))
        t.add(f"dinosearch / raw ({best}), medians of the two sections", ratios["e2e_over_raw"], "x", "", "(info)")
    elif raw_best:
        ratios["e2e_over_raw"] = e2e / raw_best
        t.add(f"dinosearch / raw ({bench.results['sections']['raw'].get('best')})", ratios["e2e_over_raw"], "x", "",
              verdict(ratios["e2e_over_raw"], T_E2E_OVER_RAW))
        if raw_fp32 and raw_fp32 != raw_best:
            ratios["e2e_over_raw_fp32"] = e2e / raw_fp32
            t.add("dinosearch / raw fp32 (info)", ratios["e2e_over_raw_fp32"], "x")
    else:
        t.note("dinosearch / raw: run the raw section too (--only raw,e2e)")
    if naive:
        ratios["e2e_over_naive"] = e2e / naive
        t.add("dinosearch / naive", ratios["e2e_over_naive"], "x", "", verdict(ratios["e2e_over_naive"], T_E2E_OVER_NAIVE))
    else:
        t.note("dinosearch / naive: run the naive section too (--only naive,e2e)")
    return ratios


def _why(bench: Bench, t: Table, good: list[dict[str, Any]], model_ms: float, decode_ms: float) -> None:
    """Why a target is missed, from this run's own figures."""
    if not bench.a.gpu and model_ms and decode_ms:
        ceiling = model_ms / (model_ms + decode_ms)
        bench.put("e2e", "cpu_share_ceiling", ceiling)
        t.note(f"why: per photo the decode workers use {decode_ms:.0f} ms of CPU beside the indexing process's {model_ms:.0f} ms "
               f"(nearly all of it the model); sharing the cores, end to end can reach about {ceiling:.2f} x a model "
               "that has them to itself")
    raw_best = raw_img_s(bench)[0]
    probe = statistics.median([r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")] or [raw_best or 0])
    if probe and probe < T_E2E_IMG_S:
        t.note(f"why: the model alone runs at {probe:.1f} img/s here, below the {T_E2E_IMG_S:g} img/s target; "
               "only a faster model path (the fast section; bf16 on a CPU with native bf16; a GPU) can reach it")


def _gpu_utilisation(bench: Bench, t: Table, good: list[dict[str, Any]]) -> None:
    gpu = [r["gpu"] for r in good if r.get("gpu") and "util_mean" in r["gpu"]]
    if gpu:
        t.add("GPU utilisation while indexing (mean)", statistics.median(g["util_mean"] for g in gpu), "%", "",
              f"median {statistics.median(g['util_median'] for g in gpu):.0f}%, idle samples "
              f"{statistics.median(g['util_zero_frac'] for g in gpu) * 100:.0f}%", digits=0)
    elif bench.a.gpu:
        t.note(f"GPU utilisation: {next((r['gpu'] for r in good if r.get('gpu')), {}).get('error', 'not sampled')}")
