"""Scale benchmark (`make bench-scale`): N synthetic clustered unit vectors inserted as real catalogue rows,
then the vector index built, searched, updated in place and filtered, against exact search in the same run;
then the product's own processes on that index: `dinosearch query --id` in a fresh process (cold), and
`dinosearch serve` (its RSS, and `/api/images/{id}/similar` under an open-loop load on loopback).

    python -m tests.bench.scale_bench --n 1000000 [--dim 384] [--dir /tmp/scale-index] [--keep]

A benchmark, not a test: it prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from dinosearch.search import search
from dinosearch.store import vectorindex as vectors
from dinosearch.records import ModelFingerprint
from dinosearch.store.catalogue import Catalogue, _bump
from dinosearch.store.layout import MODEL_KEY
from dinosearch.store.recall import exact_search, recall_at
from dinosearch.store.schema import images


FLAT_MAX = 2_000_000  # above this, no in-memory exact index to time (10M float32 vectors: 15 GB); recall is
# still measured against exact search, streamed from SQLite


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    v = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim) * 4
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def insert_rows(cat: Catalogue, n: int, dim: int, start: int, rng: np.random.Generator, centres: np.ndarray) -> None:
    """Real rows (path, hash, vector, metadata), in one transaction per 50k, as SQLAlchemy Core executemany."""
    now = time.time()
    for lo in range(start, start + n, 50_000):
        hi = min(lo + 50_000, start + n)
        vecs = clustered(hi - lo, dim, rng, centres)
        rows = [
            {"path": f"/photos/{i // 1000}/p{i}.jpg".encode(), "root": b"/photos", "size": 1000 + i, "mtime_ns": i,
             "content_hash": f"{i:064x}", "vector": v.astype("<f4").tobytes(),
             "meta_json": json.dumps({"shop": f"s{i % 100}"}), "indexed_at": now}
            for i, v in zip(range(lo, hi), vecs)
        ]
        with cat.engine.begin() as conn:
            conn.execute(insert(images), rows)
            _bump(conn)


class Figures(dict):
    """The run's figures, each printed as soon as it is measured (a 10M run takes long: what finished shows)."""

    def __init__(self, **first: object):
        super().__init__()
        self.update(first)

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        print(f"{key:>24}: {round(value, 4) if isinstance(value, float) else value}", flush=True)

    def update(self, other: dict[str, object]) -> None:  # type: ignore[override]
        for key, value in other.items():
            self[key] = value


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def p50_ms(fn, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cold_query_s(index_dir: Path, image_id: int, repeat: int = 3) -> float:
    """Median wall seconds of `dinosearch query --id` in a fresh process (the files in the page cache)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dinosearch", "query", "--id", str(image_id), "--index", str(index_dir),
                        "--json", "-k", "10"], check=True, capture_output=True, env=ENV)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rss_mb(pid: int) -> float:
    """Resident set of a process and its children (server workers), MiB, from /proc."""
    total = 0
    pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children (server workers), from /proc."""
    pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    ticks = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def settle(pid: int, timeout: float = 90.0) -> None:
    """Wait until the server is idle (its model loaded in the background): the load measures steady state."""
    end = time.perf_counter() + timeout
    last = cpu_s(pid)
    while time.perf_counter() < end:
        time.sleep(0.5)
        now = cpu_s(pid)
        if now - last < 0.05:
            return
        last = now


def serve_load(index_dir: Path, ids: list[int], rate: float, seconds: float, workers: int) -> dict[str, float]:
    """`dinosearch serve` on loopback; `rate` similar-image requests per second for `seconds`, sent on
    schedule whatever the answers (open loop), once the server is idle after its start (the model loads in
    the background); latency counts from each request's scheduled time."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "dinosearch", "serve", "--index", str(index_dir), "--port", str(port),
                               "--workers", str(workers)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        t = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/images/{ids[0]}/similar?k=10", timeout=30).read()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - t > 120:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        ready_s = time.perf_counter() - t
        settle(server.pid)
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()

        def one(image_id: int, due: float) -> None:
            try:
                urllib.request.urlopen(f"{base}/api/images/{image_id}/similar?k=10", timeout=30).read()
                with lock:
                    latencies.append(time.perf_counter() - due)
            except OSError:
                with lock:
                    errors[0] += 1

        n = int(rate * seconds)
        start = time.perf_counter() + 0.1
        with ThreadPoolExecutor(64) as pool:
            for i in range(n):
                due = start + i / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                pool.submit(one, ids[i % len(ids)], due)
        took = time.perf_counter() - start
        lat = sorted(latencies)
        return {"serve_ready_s": ready_s, "serve_rss_mb": rss_mb(server.pid), "similar_rate_asked": rate,
                "similar_answered_per_s": len(lat) / took, "similar_errors": errors[0],
                "similar_p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
                "similar_p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000 if lat else None}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="with --dir: keep the rows a --keep run left there (N of them)")
    ap.add_argument("--rate", type=float, default=100.0, help="similar-image requests per second on serve (default 100)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of that load (default 20)")
    ap.add_argument("--serve-workers", type=int, default=1, help="dinosearch serve --workers (default 1)")
    args = ap.parse_args()
    n, dim = args.n, args.dim
    base = args.dir or Path(tempfile.mkdtemp(prefix="dinosearch-scale-"))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(16, n // 1000), dim)).astype(np.float32)
    out = Figures(n=n, dim=dim)
    cat = Catalogue(base / "index")
    try:
        if args.reuse and cat.count_images() == n:
            out["insert_rows_s"] = "reused"  # the rows of an earlier run kept with --keep
        else:
            out["insert_rows_s"], _ = timed(lambda: insert_rows(cat, n, dim, 0, rng, centres))
        # A fingerprint, as a model would record, so that the CLI and the server open the index.
        cat.set_settings({MODEL_KEY: ModelFingerprint("synthetic", "synthetic", dim, "synthetic").to_dict()})
        vi = vectors.VectorIndex(cat)
        out["build_from_sqlite_s"], _ = timed(lambda: vi.sync(dim, force=True, requested="auto"))
        state = cat.get_setting(vectors.GENERATION_KEY)
        out.update({k: state.get(k) for k in ("type", "nlist", "nprobe", "recall", "code_size", "bytes")})
        out["load_mmap_s"], loaded = timed(lambda: vectors.load(cat, dim, mmap=True))
        qids, queries = cat.vectors_by_id(rng.choice(cat.all_ids(), 200, replace=False))
        out["search_p50_ms"] = p50_ms(lambda q: vectors.search(loaded, q[None], 10), queries)
        if n <= FLAT_MAX:
            flat = vectors.LoadedVectors(vectors.build(cat, dim, requested="flat"), 0, False)
            out["flat_search_p50_ms"] = p50_ms(lambda q: vectors.search(flat, q[None], 10), queries[:50])
            del flat
        _, truth = exact_search(cat, queries, 11)
        found = vectors.search(loaded, queries, 11)[1]
        out["recall_at_10_vs_flat"] = recall_at(found[:, 1:], truth[:, 1:])
        allowed_q = lambda q: search(cat, loaded, q, k=10, where={"shop": "s7"})  # noqa: E731 - 1 % of rows
        out["filtered_1pct_p50_ms"] = p50_ms(allowed_q, queries[:50])
        # Add 1,000 rows, then remove 1,000, each synced in place.
        base_version = cat.version()
        insert_rows(cat, 1000, dim, n, rng, centres)
        new = cat.all_ids()[-1000:]
        out["add_1000_sync_s"], notes = timed(
            lambda: vi.sync(dim, force=True, changes=vectors.Changes(base_version, tuple(new.tolist()), ())))
        base_version = cat.version()
        gone = cat.all_ids()[:1000]
        cat.remove([f"/photos/{i // 1000}/p{i}.jpg" for i in range(1000)])
        out["remove_1000_sync_s"], _ = timed(
            lambda: vi.sync(dim, force=True, changes=vectors.Changes(base_version, (), tuple(gone.tolist()))))
        out["in_place_warnings"] = notes
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        del loaded
        some = [int(i) for i in rng.choice(cat.all_ids(), 500, replace=False)]
        cat.close()
        out["cold_cli_query_s"] = cold_query_s(base / "index", some[0])
        out.update(serve_load(base / "index", some, args.rate, args.seconds, args.serve_workers))
    finally:
        cat.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
