"""One indexing run in a fresh process: `python -m tests.bench._child '<json args>'`.

A fresh process per run gives each repeat a cold index, clean peak-RSS figures (its own and its
decode workers') and no state shared with the benchmark. torch and transformers are imported
before the clock starts (their import time is reported apart); the timed part is exactly
`Index(dir, model=...).add(data)` + `close()`, the product's own path. Results go to args["out"].
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def main() -> None:
    args = json.loads(sys.argv[1])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    result: dict = {"ok": False}
    try:
        result = run(args)
        result["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints it
        import traceback

        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    with open(args["out"], "w") as f:
        json.dump(result, f)


def run(args: dict) -> dict:
    from tests.bench.sysmon import GpuSampler, RssSampler, peak_rss_self_mib

    t = time.perf_counter()
    if args.get("torch_threads"):
        import torch

        torch.set_num_threads(int(args["torch_threads"]))
    if args.get("preload", True):
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoImageProcessor, AutoModel  # noqa: F401
    from dinosearch.api import Index

    import_s = time.perf_counter() - t
    rss = RssSampler(interval=args.get("rss_interval", 0.1)).start()
    gpu = GpuSampler().start() if args.get("device") == "cuda" else None
    marks: list[tuple[float, int]] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)  # imports done: what follows is the run's own CPU
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        marks.append((time.perf_counter() - t0, done))

    try:
        ix = Index(
            args["index"],
            model=args["model"],
            device=args.get("device", "auto"),
            precision=args.get("precision", "auto"),
            backend=args.get("backend", "torch"),
            batch_size=args.get("batch_size"),
            workers=args.get("workers"),
        )
        try:
            t_open = time.perf_counter() - t0
            report = ix.add(*args["paths"], progress=progress)
            t_added = time.perf_counter() - t0
            fp = ix.fingerprint
            emb = ix.model.loaded
        finally:
            ix.close()
        seconds = time.perf_counter() - t0
    finally:
        gpu_summary = gpu.stop() if gpu is not None else None
        rss_summary = rss.stop()
    self_ru = resource.getrusage(resource.RUSAGE_SELF)
    kids_ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    steady = None
    if len(marks) >= 4:
        # Throughput once the pipeline is full: from the first finished image to the last.
        (ta, da), (tb, db) = marks[0], marks[-1]
        if tb > ta:
            steady = (db - da) / (tb - ta)
    return {
        "seconds": seconds,
        "open_s": t_open,
        "add_s": t_added - t_open,
        "first_item_s": marks[0][0] if marks else None,
        "last_item_s": marks[-1][0] if marks else None,
        "steady_img_s": steady,
        "import_s": import_s,
        "report": report.to_dict(),
        "report_images_per_second": report.images_per_second,
        "embedded": getattr(report, "embedded", None),
        "precision": fp.precision if fp else None,
        "batch_size": getattr(emb, "batch_size", None),
        "device": getattr(emb, "device", None),
        "torch_threads": _torch_threads(),
        # Peak RSS of this process's own address space (VmHWM). ru_maxrss is kept for reference only:
        # on Linux it carries over the parent's RSS across fork+exec (vfork), so a child started by a
        # big process, or a decode worker spawned by this one, reports the parent's size.
        "peak_rss_self_mib": peak_rss_self_mib(),
        "ru_maxrss_self_mib": _ru_mib(self_ru.ru_maxrss),
        "ru_maxrss_children_mib": _ru_mib(kids_ru.ru_maxrss),
        "cpu_self_s": self_ru.ru_utime + self_ru.ru_stime,
        "cpu_run_s": self_ru.ru_utime + self_ru.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
        "cpu_children_s": kids_ru.ru_utime + kids_ru.ru_stime,
        "rss": rss_summary,
        "gpu": gpu_summary,
    }


def _ru_mib(v: int) -> float:
    return round(v / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


if __name__ == "__main__":
    main()
