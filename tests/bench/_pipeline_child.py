"""One pipeline measurement in a fresh process: `python -m tests.bench._pipeline_child '<json args>'`.

mode "decode": dinosearch's decode workers alone (workers.DecodePool, the product's pool, with the
model's preprocessing) on the files, fed from a thread as an index run feeds them; the workers are
started and ready before the clock starts, as they are through most of a long run.
mode "e2e": `Index(fresh dir, model=...).add(folder)`, the model loaded before the clock starts (its
load is not the pipeline's); the run's process CPU is split into the model's (the main thread's CPU
inside `embed` plus torch's own threads' CPU over those calls, read from /proc) and the rest: the
indexing process's own work per image.

Results go to args["out"] as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    args = json.loads(sys.argv[1])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        result = {"ok": True, **(decode_alone(args) if args["mode"] == "decode" else end_to_end(args))}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints it
        import traceback

        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    Path(args["out"]).write_text(json.dumps(result))


def _index(args: dict, directory: str):
    from dinosearch.api import Index

    return Index(directory, model=args["model"], device=args.get("device", "cpu"), workers=args["workers"],
                 batch_size=args.get("batch_size"), precision=args.get("precision", "auto"))


def decode_alone(args: dict) -> dict:
    from dinosearch.workers import DecodeDone, DecodePool

    paths = sorted(str(p) for p in Path(args["folder"]).glob("*.jpg"))
    with tempfile.TemporaryDirectory() as d, _index(args, d) as ix:
        pre = ix.embedder().preprocess
    with DecodePool(pre, workers=args["workers"]) as pool:
        for i in range(args["workers"]):  # every worker started and warm
            pool.submit(-1 - i, paths[i % len(paths)])
        for _ in range(args["workers"]):
            pool.results.get()
        pids = [w.proc.pid for w in pool._workers]
        cpu0 = sum(_process_cpu(pid) for pid in pids)
        t = time.perf_counter()

        def feed() -> None:
            for i, p in enumerate(paths):
                pool.submit(i, p)

        threading.Thread(target=feed, daemon=True).start()
        ok = sum(isinstance(pool.results.get(), DecodeDone) for _ in paths)
        seconds = time.perf_counter() - t
        cpu = sum(_process_cpu(pid) for pid in pids) - cpu0
    return {"img_s": len(paths) / seconds, "seconds": seconds, "n": len(paths), "decoded": ok,
            "decode_cpu_ms_per_image": cpu / len(paths) * 1000}


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from /proc."""
    return _stat_cpu(f"/proc/{pid}/stat")


def _stat_cpu(stat_path: str) -> float:
    """CPU seconds (utime + stime, fields 14 and 15) of a /proc stat file."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_to_end(args: dict) -> dict:
    n = len(list(Path(args["folder"]).glob("*.jpg")))
    with tempfile.TemporaryDirectory() as d, _index(args, d) as ix:
        embedder = ix.embedder()
        threads: dict[int, int] = {}
        model_cpu = _time_model(embedder, threads)
        marks: list[tuple[int, float, float]] = []  # (files done, process CPU, model CPU) as the run goes

        def progress(done: int, total: int) -> None:
            marks.append((done, time.process_time(), model_cpu[0]))

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        report = ix.add(args["folder"], progress=progress)
        seconds = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    # Steady state: from the first file done to the last, without the run's fixed costs (the walk,
    # spawning the decoders, importing FAISS and writing the vector index at the end).
    (d0, c0, m0), (d1, c1, m1) = marks[0], marks[-1]
    return {
        "img_s": n / seconds, "seconds": seconds, "n": n, "added": report.added, "failed": report.failed,
        "cpu_ms_per_image": cpu / n * 1000, "model_cpu_ms_per_image": model_cpu[0] / n * 1000,
        "own_cpu_ms_per_image": (cpu - model_cpu[0]) / n * 1000,
        "own_cpu_ms_per_image_steady": ((c1 - c0) - (m1 - m0)) / max(1, d1 - d0) * 1000,
        "batches_by_torch_threads": threads,
    }


def _time_model(embedder, threads: dict[int, int]) -> list[float]:
    """Wraps embedder.embed: the returned list's one value grows by the CPU seconds each call costs;
    `threads` counts the calls by torch's thread count."""
    spent = [0.0]
    real = embedder.embed

    def timed(pixels):
        torch = sys.modules.get("torch")
        if torch is not None:
            n = torch.get_num_threads()
            threads[n] = threads.get(n, 0) + 1
        main0, native0 = time.thread_time(), _native_threads_cpu()
        try:
            return real(pixels)
        finally:
            spent[0] += time.thread_time() - main0 + _native_threads_cpu() - native0

    embedder.embed = timed
    return spent


def _native_threads_cpu() -> float:
    """CPU seconds of this process's threads that Python did not start (torch's intra-op pool)."""
    mine = {t.native_id for t in threading.enumerate()}
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) in mine:
            continue
        try:
            total += _stat_cpu(f"/proc/self/task/{tid}/stat")
        except OSError:  # the thread ended meanwhile
            continue
    return total


if __name__ == "__main__":
    main()
