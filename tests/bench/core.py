"""What every benchmark section shares: the run's context (`Bench`), its result table, the figures'
formatting and the targets they are judged against."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from tests.bench import data as D
from tests.bench import sysmon

# The targets.
T_E2E_OVER_RAW = 0.9
T_E2E_OVER_NAIVE = 2.5
T_E2E_IMG_S = 25.0
T_COS_DEFAULT = 0.999
T_COS_FAST = 0.99
T_TOPK_FAST = 0.95
# The faster CPU path the "fast" section runs end to end (opt-in in the product).
FAST_BACKEND, FAST_PRECISION = "onnxruntime", "int8"
T_REINDEX_PER_10K = 1.0
T_PIPELINE_EFFICIENCY = 0.9  # e2e with the tiny model / the decode workers alone, same files and workers
T_PIPELINE_EFFICIENCY_GPU = 0.8  # on a GPU machine: e2e (ViT-S, CUDA) / the decode capacity of its cores
T_PIPELINE_OWN_CPU_MS = 1.0  # the indexing process's CPU per image, the model's forward pass excluded
T_STARTUP = 0.5
T_QUERY = 1.5

# `python -c WRAP ARGS...` runs `dinosearch ARGS...` exactly as `python -m dinosearch` does, and on exit
# writes which heavy modules were imported to $BENCH_MODULES_OUT (atexit also runs after typer's exit).
WRAP = r"""
import atexit, json, os, runpy, sys
def _bench_report():
    try:
        with open(os.environ["BENCH_MODULES_OUT"], "w") as f:
            json.dump({m: m in sys.modules for m in ("torch", "transformers", "faiss", "sqlalchemy", "alembic", "PIL")}, f)
    except Exception:
        pass
atexit.register(_bench_report)
sys.argv = ["dinosearch"] + sys.argv[1:]
runpy.run_module("dinosearch", run_name="__main__", alter_sys=True)
"""


# -- small helpers --------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": [round(v, 4) for v in vals],
    }


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def spread(s: dict[str, Any], digits: int = 2) -> str:
    if not s or s.get("n", 0) < 2:
        return ""
    return f"{s['min']:.{digits}f}..{s['max']:.{digits}f}"


def verdict(value: float | None, target: float, *, higher: bool = True) -> str:
    """PASS/MISS and by how much, relative to the target."""
    if value is None:
        return "n/a"
    ok = value >= target if higher else value <= target
    rel = (value / target - 1.0) * 100.0 if target else 0.0
    if higher:
        return f"{'PASS' if ok else 'MISS'} ({rel:+.0f}% vs >= {target:g})"
    return f"{'PASS' if ok else 'MISS'} ({rel:+.0f}% vs <= {target:g})"


def emulated_bf16(device: str) -> bool:
    """True on a CPU without native bf16 (AVX512_BF16/AMX), where bf16 is emulated and slow."""
    return device == "cpu" and not ({"avx512_bf16", "amx_bf16"} & set(sysmon.cpu_flags()))


def quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


class Table:
    """Rows of: what | median | unit | min..max | target/verdict | note."""

    def __init__(self, title: str):
        self.title = title
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, what: str, value: Any = None, unit: str = "", rng: str = "", verdict_: str = "", digits: int = 2) -> None:
        self.rows.append((what, fmt(value, digits), unit, rng, verdict_))

    def note(self, text: str) -> None:
        self.rows.append((f"  {text}", "", "", "", ""))

    def print(self) -> None:
        print(f"\n== {self.title}")
        if not self.rows:
            return
        w0 = max(len(r[0]) for r in self.rows if r[1] or r[2] or r[3] or r[4]) if any(r[1] for r in self.rows) else 30
        w0 = min(max(w0, 20), 52)
        w1 = max([len(r[1]) for r in self.rows] + [6])
        w2 = max([len(r[2]) for r in self.rows] + [4])
        w3 = max([len(r[3]) for r in self.rows] + [0])
        for what, val, unit, rng, ver in self.rows:
            if not (val or unit or rng or ver):
                print(what)
                continue
            line = f"  {what:<{w0}} {val:>{w1}} {unit:<{w2}}"
            if w3:
                line += f"  {rng:<{w3}}"
            if ver:
                line += f"  {ver}"
            print(line.rstrip())
        sys.stdout.flush()


# -- the run --------------------------------------------------------------------------------------
class Bench:
    """One run: its arguments, results and scratch directory, the inputs, and what sections share
    (the reference vectors, the e2e runs and index, the small-file tree's index, the model probes)."""

    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.started = time.perf_counter()
        self.device = "cuda" if args.gpu else "cpu"
        self.results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "sections": {}}
        self.tables: list[Table] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="run-", dir=D.scratch_dir()))
        self._photos: list[Path] | None = None
        self.set_dir: Path | None = None
        self._model: Path | None = None
        self.e2e_results: list[dict[str, Any]] | None = None
        self.e2e_index: Path | None = None
        self.ref: dict[str, Any] = {}  # path -> reference vector (fp32, CPU)
        self.tree_ix: tuple[Path, Path, Path] | None = None
        self.tree_built = False
        self.probe_net: Any = None
        self.probe_forwards: dict[tuple[str, str], Any] = {}  # (backend, precision) -> dinosearch.accel.Forward

    def close(self) -> None:
        if not self.a.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # inputs
    def photos(self) -> list[Path]:
        if self.set_dir is None:
            self.set_dir = D.ensure_photo_set(self.a.n)
            self._photos = sorted(self.set_dir.glob("*.jpg"))
        assert self._photos is not None
        return self._photos

    def model(self) -> Path:
        if self._model is None:
            self._model = D.ensure_model("vit-s14")
        return self._model

    # helpers
    def child(self, name: str, *, module: str = "tests.bench._child", **kw: Any) -> dict[str, Any]:
        """One run of `module` (by default `tests.bench._child`, an indexing run) in a fresh process with
        `kw` as its JSON arguments; returns its JSON (or {"ok": False, "error": ...})."""
        out = self.tmp / f"{name}.json"
        out.unlink(missing_ok=True)
        args = {"out": str(out), **kw}
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        timeout = max(10.0, min(self.a.timeout, self.time_left()))
        try:
            p = subprocess.run(
                [sys.executable, "-m", module, json.dumps(args)],
                cwd=D.REPO, env=env, capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        try:
            res = json.loads(out.read_text())
        except (OSError, ValueError):
            res = {"ok": False, "error": f"exit {p.returncode}, no result; stderr: {p.stderr.strip()[-1500:]}"}
        if not res.get("ok"):
            res.setdefault("stderr", p.stderr.strip()[-1500:])
        return res

    def cli(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """`dinosearch ARGS` in a fresh interpreter: wall seconds, exit code, stdout, imported modules."""
        mod_out = self.tmp / "modules.json"
        mod_out.unlink(missing_ok=True)
        env = {**os.environ, "BENCH_MODULES_OUT": str(mod_out), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("DINOSEARCH_MODEL", None)
        t = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-c", WRAP, *args], cwd=D.REPO, env=env,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"seconds": None, "rc": None, "stdout": "", "stderr": f"timed out after {timeout} s", "modules": {}}
        seconds = time.perf_counter() - t
        try:
            modules = json.loads(mod_out.read_text())
        except (OSError, ValueError):
            modules = {}
        return {"seconds": seconds, "rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "modules": modules}

    def time_left(self) -> float:
        if not self.a.deadline:
            return float("inf")
        return self.a.deadline - (time.perf_counter() - self.started)

    def section(self, name: str, fn: Callable[[Bench, Table], None]) -> None:
        """Runs `fn(self, table)` as section `name`, prints its table; a failure is reported, not raised."""
        table = Table(name)
        t = time.perf_counter()
        if self.time_left() <= 0:
            table.note(f"skipped: the --deadline of {self.a.deadline:.0f} s has passed")
            self.put(name, "skipped", "deadline")
            table.print()
            return
        log(f"section {name} ...")
        try:
            fn(self, table)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a section that fails is reported, the others still run
            import traceback

            table.note(f"ERROR: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
            self.results["sections"].setdefault(name, {})["error"] = traceback.format_exc()[-3000:]
            if self.a.verbose:
                traceback.print_exc()
        self.results["sections"].setdefault(name, {})["section_seconds"] = round(time.perf_counter() - t, 1)
        table.print()
        self.tables.append(table)
        self.save_json()

    def save_json(self) -> None:
        """Written after every section, so a run cut short still leaves what it measured."""
        if self.a.json:
            try:
                Path(self.a.json).write_text(json.dumps(self.results, indent=2, default=str))
            except OSError as exc:
                log(f"cannot write {self.a.json}: {exc}")

    def put(self, section: str, key: str, value: Any) -> None:
        self.results["sections"].setdefault(section, {})[key] = value
