"""Section `raw`: the model alone on preprocessed tensors, fp32 and bf16 autocast (fp16 too on CUDA)."""

from __future__ import annotations

import time
from typing import Any, Callable

from tests.bench import sysmon
from tests.bench.core import Bench, Table, emulated_bf16, quiet_transformers, spread, summary


def run(bench: Bench, t: Table) -> None:
    import torch
    from transformers import AutoModel

    quiet_transformers()
    dev = bench.device
    bs = bench.a.batch
    net = AutoModel.from_pretrained(str(bench.model())).eval().to(dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(bs, 3, 224, 224, generator=gen).to(dev)
    precisions = ["fp32", "fp16", "bf16"] if dev == "cuda" else ["fp32", "bf16"]
    iters = max(1, round(bench.a.n / bs)) if dev == "cpu" else max(20, bench.a.n // bs)
    t.note(f"ViT-S/14 random weights, {dev}, batch {bs}, {iters} batch(es) per repeat, "
           f"attn={getattr(net.config, '_attn_implementation', '?')}; torch threads {torch.get_num_threads()}")
    res: dict[str, Any] = {}

    def once(prec: str, images: int | None = None) -> None:
        """One forward of the batch (or of its first `images`), fp32 or under autocast to `prec`."""
        px = x if images is None else x[:images]
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)
        with torch.inference_mode():
            if dtype is None:
                net(pixel_values=px).pooler_output
            else:
                with torch.autocast(device_type=dev, dtype=dtype):
                    net(pixel_values=px).pooler_output

    slow_bf16 = emulated_bf16(dev)
    if slow_bf16:
        t.note("this CPU has no AVX512_BF16/AMX: bf16 is emulated (slow); it gets 1 batch, 1 repeat, to keep the run short")
    gpu_utils: dict[str, Any] = {}
    for prec in precisions:
        try:
            s, util = _rates(bench, once, prec, iters, emulated=slow_bf16 and prec == "bf16")
            if util is not None:
                gpu_utils[prec] = util
            res[prec] = s
            t.add(f"raw {prec}{' autocast' if prec != 'fp32' else ''}", s["median"], "img/s", spread(s, 1), digits=1)
        except Exception as exc:  # noqa: BLE001 - e.g. bf16 unsupported here
            res[prec] = {"error": f"{type(exc).__name__}: {exc}"}
            t.add(f"raw {prec}", None, "img/s", "", f"error: {type(exc).__name__}: {str(exc)[:80]}")
    _best_and_utilisation(t, res, gpu_utils)
    bench.results["sections"]["raw"] = {**bench.results["sections"].get("raw", {}), **res, "batch": bs, "iters": iters}
    del net
    if dev == "cuda":
        torch.cuda.empty_cache()


def _rates(bench: Bench, once: Callable[..., None], prec: str, iters: int, *,
           emulated: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """img/s of `once(prec)` over the repeats after a warm-up (and the GPU utilisation meanwhile on CUDA)."""
    import torch

    dev, bs = bench.device, bench.a.batch
    n_iter = 1 if emulated else iters
    if emulated:
        once(prec, 2)  # warm-up on 2 images: a full emulated batch costs tens of seconds
    elif dev == "cpu":
        once(prec)  # warm-up (oneDNN primitives, allocator, caches)
    else:
        for _ in range(3):
            once(prec)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        once(prec)
        torch.cuda.synchronize()
        # Enough batches for ~2 s per repeat, so the utilisation sampler sees the steady state.
        n_iter = max(iters, min(2000, int(2.0 / max(time.perf_counter() - t0, 1e-4)) + 1))
    rates = []
    sampler = sysmon.GpuSampler().start() if dev == "cuda" else None
    for _ in range(1 if emulated else bench.a.repeats):
        t0 = time.perf_counter()
        for _ in range(n_iter):
            once(prec)
        if dev == "cuda":
            torch.cuda.synchronize()
        rates.append(n_iter * bs / (time.perf_counter() - t0))
    util = sampler.stop() if sampler is not None else None
    s = summary(rates)
    s["batches_per_repeat"] = n_iter
    return s, util


def _best_and_utilisation(t: Table, res: dict[str, Any], gpu_utils: dict[str, Any]) -> None:
    ok = {p: s for p, s in res.items() if s.get("median")}
    if ok:
        best = max(ok, key=lambda p: ok[p]["median"])
        res["best"] = best
        res["raw_img_s"] = ok[best]["median"]
        t.add(f"=> raw (fastest: {best})", ok[best]["median"], "img/s", digits=1)
    for prec, g in gpu_utils.items():
        if "util_mean" in g:
            t.add(f"  GPU utilisation during raw {prec} (mean)", g["util_mean"], "%", "",
                  f"median {g['util_median']:.0f}%, max memory {g.get('mem_used_max_mib')} MiB", digits=0)
        else:
            t.note(f"GPU utilisation during raw {prec}: {g.get('error')}")
    if gpu_utils:
        res["gpu_util"] = gpu_utils
