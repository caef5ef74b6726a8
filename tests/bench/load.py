"""Open-loop load on `dinosearch serve` over loopback: p50/p99 at a fixed arrival rate, then a burst.

    python -m tests.bench.load [--shape vit-s14|tiny] [--rate 4] [--seconds 15] [--burst 16]

Starts a real server process on 127.0.0.1 over a small generated catalogue, sends uploads that are not
in the index (so every one goes through decode + the model), and reports latency percentiles and the
status counts. Open loop: request i is due at t0 + i/rate whether or not earlier ones have answered,
and its latency counts from when it was due (no coordinated omission). Request counts are bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

MAX_REQUESTS = 1000  # a benchmark, not a flood: never more than this per run


def _log(msg: str) -> None:
    print(f"  [load] {msg}", file=sys.stderr, flush=True)


def build_index(directory: Path, model: str, n: int) -> Path:
    from dinosearch.api import Index
    from tests.images import photo, save

    images, index = directory / "images", directory / "index"
    if (index / "catalogue.sqlite3").exists():
        return index
    for i in range(n):
        save(photo(320, 240, seed=i), images / f"{i:05d}.jpg", quality=90)
    _log(f"indexing {n} images with {Path(model).name} ...")
    with Index(index, model=model, device="cpu") as ix:
        ix.add(images)
    return index


def queries(n: int) -> list[bytes]:
    """Distinct uploads, none of them indexed: 1024x768 JPEGs, a typical resized phone photo."""
    from tests.images import jpeg_bytes, photo

    return [jpeg_bytes(photo(1024, 768, seed=100_000 + i), quality=85) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, queue_size: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinosearch", "serve", "--index", str(index), "--host", "127.0.0.1",
         "--port", str(port), "--queue-size", str(queue_size)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    return proc


def wait_ready(url: str, proc: subprocess.Popen, sample: bytes, timeout: float = 300) -> float:
    """Until the model answers one upload (the model loads in the background after start-up)."""
    import httpx

    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=120) as c:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                r = c.post("/api/search", files={"image": ("warm.jpg", sample, "image/jpeg")}, data={"k": "10"})
                if r.status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if time.monotonic() - started > timeout:
                raise SystemExit("the server did not become ready")
            time.sleep(0.2)


def fire(url: str, bodies: list[bytes], due: list[float], k: int) -> list[tuple[float, int]]:
    """Send body i at monotonic time due[i], each on its own thread; (latency from due, status) per request."""
    import httpx

    out: list[tuple[float, int]] = [(0.0, 0)] * len(bodies)
    client = httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=len(bodies)))

    def one(i: int) -> None:
        delay = due[i] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            r = client.post("/api/search", files={"image": (f"q{i}.jpg", bodies[i], "image/jpeg")}, data={"k": str(k)})
            status = r.status_code
        except httpx.HTTPError:
            status = -1
        out[i] = (time.monotonic() - due[i], status)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    return out


def summarise(name: str, results: list[tuple[float, int]], seconds: float) -> dict:
    ok = sorted(lat for lat, status in results if status == 200)
    statuses = Counter(status for _, status in results)

    def pct(p: float) -> float | None:
        if not ok:
            return None
        return ok[min(len(ok) - 1, max(0, round(p / 100 * len(ok) + 0.5) - 1))] * 1000

    return {
        "phase": name,
        "requests": len(results),
        "ok": len(ok),
        "statuses": dict(sorted(statuses.items())),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": ok[-1] * 1000 if ok else None,
        "mean_ms": statistics.fmean(ok) * 1000 if ok else None,
        "achieved_rps": len(ok) / seconds if seconds > 0 else None,
    }


def cpu_by_thread(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each thread ("name/tid") spent between two `sysmon.thread_cpu_seconds` snapshots,
    busiest first (the model thread and torch's OpenMP threads lead; "children" is the decode process)."""
    out = Counter({key: seconds - before.get(key, 0.0) for key, seconds in after.items()})
    return {key: round(v, 2) for key, v in out.most_common() if v > 0.005}


def one_run(args: argparse.Namespace, index: Path, bodies: list[bytes], steady: int) -> dict:
    """A fresh server: ready, the steady phase, the burst; latencies and where the server's CPU went."""
    from tests.bench import sysmon

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(index, port, args.queue_size)
    run: dict = {"loadavg_start": sysmon.loadavg()}
    try:
        run["ready_s"] = round(wait_ready(url, proc, bodies[-1]), 2)
        _log(f"server ready in {run['ready_s']} s; {steady} requests at {args.rate}/s ...")
        cpu_before = sysmon.thread_cpu_seconds(proc.pid)
        t0 = time.monotonic() + 0.5
        due = [t0 + i / args.rate for i in range(steady)]
        run["steady"] = summarise("steady", fire(url, bodies[:steady], due, args.k), args.seconds)
        cpu_steady = sysmon.thread_cpu_seconds(proc.pid)
        time.sleep(2)  # let the queue drain before the burst
        _log(f"burst of {args.burst} ...")
        t1 = time.monotonic() + 0.2
        burst = fire(url, bodies[steady : steady + args.burst], [t1] * args.burst, args.k)
        run["burst"] = summarise("burst", burst, max(lat for lat, _ in burst) or 1.0)
        # Where the server's CPU went in the steady phase: the model thread and its torch threads,
        # the event loop, the worker threads (hash lookup, search), the decode process ("children").
        run["steady_cpu_s"] = cpu_by_thread(cpu_before, cpu_steady)
        run["loadavg_end"] = sysmon.loadavg()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="vit-s14", choices=["vit-s14", "tiny"], help="random DINOv2 shape")
    ap.add_argument("--catalogue", type=int, default=200, help="images in the index")
    ap.add_argument("--rate", type=float, default=4.0, help="arrivals per second in the steady phase")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of the steady phase")
    ap.add_argument("--burst", type=int, default=16, help="requests sent at once in the burst phase")
    ap.add_argument("--queue-size", type=int, default=32, help="the server's --queue-size")
    ap.add_argument("--runs", type=int, default=1, help="repeat the whole run (a fresh server each time)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    steady = int(args.rate * args.seconds)
    if steady + args.burst > MAX_REQUESTS:
        raise SystemExit(f"at most {MAX_REQUESTS} requests per run; lower --rate, --seconds or --burst")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tests.bench.data import BENCH_DIR, ensure_model

    model = str(ensure_model(args.shape))
    index = build_index(BENCH_DIR / f"load-{args.shape}-{args.catalogue}", model, args.catalogue)
    bodies = queries(steady + args.burst + 1)
    report: dict = {"shape": args.shape, "catalogue": args.catalogue, "cpus": os.cpu_count(), "runs": []}
    for i in range(args.runs):
        _log(f"run {i + 1} of {args.runs}")
        report["runs"].append(one_run(args, index, bodies, steady))
        if not args.json:
            print_run(i + 1, report["runs"][-1], first=i == 0, report=report)
    p50s = [r["steady"]["p50_ms"] for r in report["runs"] if r["steady"]["p50_ms"] is not None]
    if len(p50s) > 1:
        report["steady_p50_spread"] = round(max(p50s) / min(p50s), 2)
    if args.json:
        print(json.dumps(report))
    elif len(p50s) > 1:
        print(f"steady p50 over {len(p50s)} runs: {', '.join(f'{v:.0f}' for v in p50s)} ms (max/min {report['steady_p50_spread']})")


def print_run(n: int, run: dict, *, first: bool, report: dict) -> None:
    if first:
        print(f"dinosearch serve, {report['shape']} random weights, {report['catalogue']} images, {report['cpus']} CPUs, loopback")
    print(f"run {n}: ready after {run['ready_s']} s (model load + first upload); load average {run['loadavg_start']} -> {run['loadavg_end']}")
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    for phase in ("steady", "burst"):
        s = run[phase]
        print(
            f"  {phase:>7}: {s['requests']} requests, {s['ok']} ok, statuses {s['statuses']}; "
            f"p50 {fmt(s['p50_ms'])} ms, p99 {fmt(s['p99_ms'])} ms, max {fmt(s['max_ms'])} ms"
        )
    ok = max(1, run["steady"]["ok"])
    top = list(run["steady_cpu_s"].items())[:5]
    print("  steady CPU per request: " + ", ".join(f"{name} {1000 * v / ok:.0f} ms" for name, v in top))


if __name__ == "__main__":
    main()
