"""Section `naive`: sequential Pillow full decode + transformers AutoImageProcessor + fp32 forward."""

from __future__ import annotations

import time

from tests.bench.core import Bench, Table, spread, summary
from tests.bench.reference import hf, hf_embed


def run(bench: Bench, t: Table) -> None:
    dev = bench.device
    paths = bench.photos()[: bench.a.naive_n]
    proc, net = hf(bench, dev)
    t.note(f"{len(paths)} photos, Pillow full decode + {type(proc).__name__} + fp32 forward on {dev}, "
           f"batches of {bench.a.naive_batch}, sequential; model load not timed")
    hf_embed(proc, net, dev, paths[:1], 1)  # warm-up
    rates = []
    for r in range(bench.a.repeats):
        t0 = time.perf_counter()
        vecs = hf_embed(proc, net, dev, paths, bench.a.naive_batch)
        rates.append(len(paths) / (time.perf_counter() - t0))
        if r == 0 and dev == "cpu":
            bench.ref.update({str(p): v for p, v in zip(paths, vecs)})
    s = summary(rates)
    t.add("naive pipeline", s["median"], "img/s", spread(s, 2))
    bench.put("naive", "img_s", s)
    bench.put("naive", "n", len(paths))
    bench.put("naive", "processor", type(proc).__name__)
