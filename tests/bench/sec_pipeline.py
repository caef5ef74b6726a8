"""Section `pipeline`: does the indexing pipeline feed the model?

With a model that costs almost nothing (the tiny random DINOv2 of the tests), `Index.add` end to end
should run as fast as dinosearch's decode workers alone on the same files with the same worker count:
pipeline efficiency = e2e img/s / decode-alone img/s, one pair per repeat, each in fresh processes
(tests.bench._pipeline_child), on 640x480 and 12 MP JPEGs. Also: the indexing process's own CPU per
image, the model's forward pass excluded, in the steady state (first file done to last) and over the
whole run.

With --gpu the model is the ViT-S/14-shaped one on CUDA and the workers are all the cores: the same
ratio is then end to end over the decode capacity of the machine's cores.
"""

from __future__ import annotations

import os
import statistics

from tests.bench import data as D
from tests.bench.core import T_PIPELINE_EFFICIENCY, T_PIPELINE_EFFICIENCY_GPU, T_PIPELINE_OWN_CPU_MS, Bench, Table, log, spread, summary, verdict

# (label, width, height, photos): enough photos that the run's fixed costs (spawning the decode
# workers, the walk, the final vector-index write) are a small part of it.
SETS = (("640x480 JPEG", 640, 480, 600), ("12 MP JPEG", D.PHOTO_W, D.PHOTO_H, 120))


def run(bench: Bench, t: Table) -> None:
    gpu = bench.a.gpu
    model = str(bench.model() if gpu else D.ensure_model("tiny"))
    workers = bench.a.workers or os.cpu_count() or 1
    target = T_PIPELINE_EFFICIENCY_GPU if gpu else T_PIPELINE_EFFICIENCY
    t.note(f"model: {'ViT-S/14 shape on ' + bench.device if gpu else 'the tiny test DINOv2 (almost free)'}; "
           f"{workers} decode workers; {bench.a.repeats} pairs per set, decode alone then end to end")
    for label, width, height, n in SETS:
        n = min(n, bench.a.pipeline_n) if bench.a.pipeline_n else n
        folder = D.ensure_photo_set(n, width=width, height=height)
        args = {"model": model, "workers": workers, "folder": str(folder), "device": bench.device,
                "batch_size": bench.a.batch if gpu else None}
        pairs = []
        for r in range(bench.a.repeats):
            if bench.time_left() <= 0:
                break
            log(f"pipeline {label} repeat {r + 1}")
            pairs.append(tuple(bench.child(f"pipeline-{mode}", module="tests.bench._pipeline_child", mode=mode, **args)
                               for mode in ("decode", "e2e")))
        good = [(d, e) for d, e in pairs if d.get("ok") and e.get("ok")]
        for d, e in pairs:
            for res in (d, e):
                if not res.get("ok"):
                    t.note(f"ERROR in a {label} run: {res.get('error')}")
        if not good:
            continue
        dec = summary([d["img_s"] for d, _ in good])
        e2e = summary([e["img_s"] for _, e in good])
        eff = [e["img_s"] / d["img_s"] for d, e in good]
        own = summary([e["own_cpu_ms_per_image"] for _, e in good])
        steady = summary([e["own_cpu_ms_per_image_steady"] for _, e in good])
        model_ms = summary([e["model_cpu_ms_per_image"] for _, e in good])
        t.add(f"{label} ({n}): decode workers alone", dec["median"], "img/s", spread(dec), digits=1)
        t.add("  dinosearch end to end", e2e["median"], "img/s", spread(e2e), digits=1)
        t.add("  pipeline efficiency (e2e / decode), pair by pair", statistics.median(eff), "x",
              " ".join(f"{v:.2f}" for v in eff), verdict(statistics.median(eff), target))
        t.add("  indexing process CPU per image, model excluded", steady["median"], "ms", spread(steady),
              verdict(steady["median"], T_PIPELINE_OWN_CPU_MS, higher=False))
        t.add("    the same over the whole run (walk, spawns, FAISS)", own["median"], "ms", spread(own))
        t.add("  the model's CPU per image (info)", model_ms["median"], "ms", spread(model_ms))
        decode_ms = statistics.median(d["decode_cpu_ms_per_image"] for d, _ in good)
        main_ms = statistics.median(e["cpu_ms_per_image"] for _, e in good)
        if workers >= (os.cpu_count() or 1):
            # Every core decodes in the baseline: the indexing process's CPU (the model's included) can
            # only come out of the decoders' share.
            t.note(f"why: per image the decoders use {decode_ms:.1f} ms of CPU and the indexing process {main_ms:.1f} ms "
                   f"(the model's forward pass included); on {os.cpu_count()} cores all decoding in the baseline, end to "
                   f"end can reach about {decode_ms / (decode_ms + main_ms):.2f} of it")
        threads: dict[str, int] = {}
        for _, e in good:
            for k, v in e["batches_by_torch_threads"].items():
                threads[k] = threads.get(k, 0) + v
        t.note("model batches by torch's thread count: " + ", ".join(f"{v} on {k}" for k, v in sorted(threads.items())))
        bad = [e for _, e in good if e["added"] != n or e["failed"]]
        if bad:
            t.note(f"WARNING: a run indexed {bad[0]['added']} of {n} photos ({bad[0]['failed']} failed)")
        bench.put("pipeline", label, {"decode_cpu_ms": decode_ms, "decode_img_s": dec, "e2e_img_s": e2e, "efficiency": eff,
                                      "own_cpu_ms": own, "own_cpu_ms_steady": steady, "model_cpu_ms": model_ms, "runs": pairs})
