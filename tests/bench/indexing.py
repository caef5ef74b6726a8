"""Indexing the photo set in fresh processes, each repeat paired with the model alone timed just
before it; shared by the e2e, fidelity, fast and memory sections."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from tests.bench.core import Bench, Table, log, quiet_transformers, summary


def e2e_runs(bench: Bench, repeats: int | None = None) -> list[dict[str, Any]]:
    """The default path's runs (the e2e section's), made once per run of the benchmark."""
    if bench.e2e_results is None:
        a = bench.a
        extra: dict[str, Any] = {}
        if a.gpu:
            extra.update(device="cuda", batch_size=a.batch)
        if a.backend != "torch":
            extra["backend"] = a.backend
        if a.precision != "auto":
            extra["precision"] = a.precision
        # A backend that converts the model first gets one cold run more, which the figures leave out.
        converts = a.backend == "onnxruntime"
        bench.e2e_results, bench.e2e_index = index_runs(
            bench, "e2e", extra, lambda: raw_probe(bench), (repeats or a.repeats) + converts, keep_cache=converts
        )
    return bench.e2e_results


def index_runs(bench: Bench, tag: str, extra: dict[str, Any], probe: Callable[[], float | None],
               repeats: int, *, keep_cache: bool = False) -> tuple[list[dict[str, Any]], Path | None]:
    """`repeats` indexing runs of the photo set, each in a fresh process with `extra` Index arguments
    and after `probe()` (the raw model's img/s, for pairing). Returns the runs and the last good
    run's index (the fidelity checks read its vectors); the other indexes are removed.
    `keep_cache`: each run after the first starts with the previous index's cache/ (the converted
    model), as every run after a user's first does; the first run is marked "cold"."""
    bench.photos()
    runs: list[dict[str, Any]] = []
    last: Path | None = None
    for r in range(repeats):
        if r and bench.time_left() <= 0:
            log(f"{tag}: --deadline passed, no more repeats")
            break
        ix = bench.tmp / f"{tag}-index-{r}"
        shutil.rmtree(ix, ignore_errors=True)
        kw: dict[str, Any] = dict(index=str(ix), model=str(bench.model()), paths=[str(bench.set_dir)], **extra)
        if bench.a.workers:
            kw["workers"] = bench.a.workers
        if bench.a.torch_threads:
            kw["torch_threads"] = bench.a.torch_threads
        if keep_cache and last is not None and (last / "cache").is_dir():
            shutil.copytree(last / "cache", ix / "cache")
        probe_img_s = probe()
        log(f"{tag} repeat {r + 1}: Index(...).add({len(bench.photos())} photos) in a fresh process")
        res = bench.child(f"{tag}-{r}", **kw)
        res["raw_probe_img_s"] = probe_img_s
        res["cold"] = keep_cache and last is None
        if res.get("ok"):
            res["img_s"] = len(bench.photos()) / res["seconds"]
            if last is not None:
                shutil.rmtree(last, ignore_errors=True)
            last = ix
        else:
            shutil.rmtree(ix, ignore_errors=True)
        runs.append(res)
    return runs, last


def raw_probe(bench: Bench) -> float | None:
    """The raw model's img/s (the raw section's fastest precision, same batch) measured right before
    an e2e repeat: on a shared machine whose load drifts, e2e / raw is fairest pair by pair."""
    raw = bench.results["sections"].get("raw", {})
    if bench.a.gpu or not raw.get("best"):
        return None
    return probe(bench, "torch", raw["best"])


def probe(bench: Bench, backend: str, precision: str) -> float:
    """img/s of the model alone through dinosearch.accel's forward for (backend, precision), on the
    CPU, the raw section's batch; the forward is built once and kept for the next repeat."""
    import torch
    from transformers import AutoModel

    from dinosearch.accel import build_forward

    if (backend, precision) not in bench.probe_forwards:
        if bench.probe_net is None:
            quiet_transformers()
            bench.probe_net = AutoModel.from_pretrained(str(bench.model())).eval()
        bench.probe_forwards[backend, precision] = build_forward(bench.probe_net, backend=backend, precision=precision)
    forward = bench.probe_forwards[backend, precision]
    bs = bench.a.batch
    x = torch.randn(bs, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    iters = max(1, round(bench.a.n / bs))
    forward.run(x[:2])  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        forward.run(x)
    return iters * bs / (time.perf_counter() - t0)


def cpu_per_photo(t: Table, runs: list[dict[str, Any]], n: int) -> tuple[float, float]:
    """CPU time of the runs themselves (imports excluded) per photo, median: (indexing process,
    decode workers) in ms, also added to `t`: where the cores went."""
    process = summary([r["cpu_run_s"] / n * 1000 for r in runs])["median"]
    workers = summary([r["cpu_children_s"] / n * 1000 for r in runs])["median"]
    t.add("  CPU per photo: indexing process / decode workers", process, "ms", "", f"{workers:.0f} ms", digits=0)
    return process, workers
