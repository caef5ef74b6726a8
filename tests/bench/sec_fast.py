"""Section `fast`: the faster CPU path end to end (--backend onnxruntime --precision int8): img/s, its
model alone timed before each repeat, the stored vectors vs the fp32 reference (CPU only)."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from tests.bench.core import (FAST_BACKEND, FAST_PRECISION, T_COS_FAST, T_E2E_IMG_S, T_TOPK_FAST, Bench, Table,
                              spread, summary, verdict)
from tests.bench.indexing import cpu_per_photo, index_runs, probe
from tests.bench.reference import compare, reference, stored_vectors


def run(bench: Bench, t: Table) -> None:
    import importlib.util

    if bench.a.gpu:
        t.note("CPU only")
        return
    if not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx")):
        t.note("skipped: onnxruntime is not installed (pip install 'dinosearch[onnxruntime]')")
        return
    n = len(bench.photos())
    # One cold run (the index converts the model), then --repeats runs that find it in the cache.
    runs, last = index_runs(bench, "fast", dict(backend=FAST_BACKEND, precision=FAST_PRECISION), lambda: _fast_probe(bench),
                            bench.a.repeats + 1, keep_cache=True)
    for r in runs:
        if not r.get("ok"):
            t.note(f"ERROR in a run: {r.get('error')}")
    cold = [r for r in runs if r.get("ok") and r.get("cold")]
    good = [r for r in runs if r.get("ok") and not r.get("cold")]
    if not good:
        return
    t.note(f"{n} photos through Index(backend={FAST_BACKEND!r}, precision={FAST_PRECISION!r}): ONNX Runtime, "
           f"weights int8, activations quantised per batch; batch {good[0].get('batch_size')}. "
           f"{len(good)} runs with the converted model in the index's cache, after one cold run")
    e2e = summary([r["img_s"] for r in good])
    steady = summary([r["steady_img_s"] for r in good if r.get("steady_img_s")])
    t.add(f"dinosearch end to end, --backend {FAST_BACKEND} --precision {FAST_PRECISION}", e2e["median"], "img/s",
          spread(e2e), verdict(e2e["median"], T_E2E_IMG_S))
    t.add("  steady state (first to last image)", steady["median"], "img/s", spread(steady))
    t.add("  time to first image (model load from the cache, workers)",
          summary([r["first_item_s"] for r in good if r.get("first_item_s")])["median"], "s")
    if cold:
        t.add("  cold run (exports + quantises the model first): time to first image", cold[0].get("first_item_s"), "s",
              "", f"{cold[0]['img_s']:.2f} img/s over {n} photos", digits=1)
    cpu_per_photo(t, good, n)
    res: dict[str, Any] = {"img_s": e2e, "steady_img_s": steady, "runs": runs}
    probes = _against_model_and_default(bench, t, res, good, e2e["median"])
    if last is not None:
        _fidelity(bench, t, res, last)
    probe_img_s = statistics.median(probes) if probes else None
    if probe_img_s and probe_img_s < T_E2E_IMG_S:
        t.note(f"why: the int8 model alone runs at {probe_img_s:.1f} img/s on this CPU, below the {T_E2E_IMG_S:g} img/s "
               "target, so end to end cannot reach it here")
    bench.results["sections"]["fast"] = {**bench.results["sections"].get("fast", {}), **res}


def _fast_probe(bench: Bench) -> float | None:
    """The fast path's model alone, timed right before each of its end-to-end repeats, as
    raw_probe is for the default path."""
    return probe(bench, FAST_BACKEND, FAST_PRECISION)


def _against_model_and_default(bench: Bench, t: Table, res: dict[str, Any], good: list[dict[str, Any]],
                               e2e: float) -> list[float]:
    """End to end over its model alone (pair by pair) and over the e2e section's default path;
    returns the model-alone probes."""
    probes = [r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")]
    if probes:
        ps = summary(probes)
        paired = [r["img_s"] / r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")]
        res["raw_img_s"], res["e2e_over_raw_paired"] = ps, statistics.median(paired)
        t.add(f"  its model alone ({FAST_PRECISION}, batch {bench.a.batch}), timed just before each repeat", ps["median"],
              "img/s", spread(ps), digits=1)
        t.add("  end to end / its model alone, pair by pair", res["e2e_over_raw_paired"], "x",
              " ".join(f"{v:.2f}" for v in paired), "(info)")
    default = ((bench.results["sections"].get("e2e") or {}).get("img_s") or {}).get("median")
    if default:
        res["over_default_e2e"] = e2e / default
        t.add("  speed-up over the default path (e2e section, this run)", res["over_default_e2e"], "x")
    return probes


def _fidelity(bench: Bench, t: Table, res: dict[str, Any], last: Path) -> None:
    """The last run's stored vectors vs the fp32 reference; the index is removed afterwards."""
    paths = bench.photos()[: bench.a.fid_n]
    ref = reference(bench, paths)
    prec, got = stored_vectors(last, paths, ref.shape[1])
    m = compare(ref, got)
    res["fidelity"] = {**m, "precision": prec}
    t.add(f"  stored vectors ({prec}) vs the fp32 reference: mean cos", m["mean_cos"], "", f"min {m['min_cos']:.5f}",
          verdict(m["mean_cos"], T_COS_FAST), digits=5)
    t.add(f"  top-{m['k']} neighbours shared with the reference", m["topk_overlap"], "", "",
          verdict(m["topk_overlap"], T_TOPK_FAST), digits=3)
    shutil.rmtree(last, ignore_errors=True)
