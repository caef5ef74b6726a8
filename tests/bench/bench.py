"""`make bench`: how fast dinosearch indexes, against the model alone and a naive pipeline, in one run.

    python -m tests.bench.bench                 # CPU, 64 photos, 3 repeats (a few minutes on 2 cores)
    python -m tests.bench.bench --quick         # 16 photos, 2 repeats: a smoke run
    python -m tests.bench.bench --only raw,e2e  # some sections (raw naive e2e fidelity fast reindex startup memory)
    python -m tests.bench.bench --gpu           # CUDA: 512 photos, batch 128, fp16/bf16, GPU utilisation
    python -m tests.bench.bench --json out.json # also write every figure as JSON

Sections (all medians of --repeats runs, printed with their min..max):
  raw       the model alone on preprocessed tensors, fp32 and bf16 autocast (fp16 too on CUDA)
  naive     sequential Pillow full decode + transformers AutoImageProcessor + fp32 forward
  e2e       dinosearch.api.Index(fresh dir, model=...).add(photos) in a fresh process: the product path;
            on CPU the raw model is timed again just before each repeat, and e2e / raw is judged pair by pair
  fidelity  the product's vectors vs AutoImageProcessor + Dinov2Model.pooler_output on the full decode
  fast      the faster CPU path end to end (--backend onnxruntime --precision int8): img/s, its model
            alone timed before each repeat, the stored vectors vs the fp32 reference (CPU only)
  reindex   `dinosearch index` on an unchanged tree of small files, beyond `dinosearch --help` start-up
  startup   `dinosearch --help`, `stats`, `query <indexed image>` wall time; torch must not be imported
  memory    peak and start/middle/end RSS of indexing (the e2e runs and the first index of the tree)

GPU mode, for a lent CUDA machine (`python3 -m tests.bench.bench --gpu [--json $OUT/bench.json]`): raw, naive,
e2e, fidelity and memory on device cuda, N=512, batch 128, fp32/fp16/bf16, GPU utilisation sampled with
nvidia-smi every 200 ms; no new section or repeat starts after --deadline (480 s by default in this mode)
and every child run is cut at it, so one 10-minute command always prints. Generating 512 photos takes
about a minute on 16 cores the first time. The e2e section needs dinosearch's own dependencies
(faiss-cpu, SQLAlchemy, Alembic + Mako): the `hardware` block lists any that are missing.

Inputs are generated once and cached in .bench/ (photos, a small-file tree, random-weight models,
the tree's first index). The machines are shared and noisy: read ratios measured side by side in
one run, not absolute figures from different runs. Nothing here asserts; PASS/MISS are information.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

SECTIONS = ("raw", "naive", "e2e", "fidelity", "fast", "reindex", "startup", "memory")
GPU_SECTIONS = ("raw", "naive", "e2e", "fidelity", "memory")

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
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.started = time.perf_counter()
        self.device = "cuda" if args.gpu else "cpu"
        self.results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "sections": {}}
        self.tables: list[Table] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="run-", dir=D.scratch_dir()))
        self._photos: list[Path] | None = None
        self._set_dir: Path | None = None
        self._model: Path | None = None
        self._e2e_runs: list[dict[str, Any]] | None = None
        self._e2e_index: Path | None = None
        self._ref: dict[str, Any] = {}  # path -> reference vector (fp32, CPU)
        self._tree_ix: tuple[Path, Path, Path] | None = None
        self._tree_built = False
        self._probe_net: Any = None
        self._probe_forwards: dict[tuple[str, str], Any] = {}  # (backend, precision) -> dinosearch.accel.Forward

    def close(self) -> None:
        if not self.a.keep:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # inputs
    def photos(self) -> list[Path]:
        if self._set_dir is None:
            self._set_dir = D.ensure_photo_set(self.a.n)
            self._photos = sorted(self._set_dir.glob("*.jpg"))
        assert self._photos is not None
        return self._photos

    def model(self) -> Path:
        if self._model is None:
            self._model = D.ensure_model("vit-s14")
        return self._model

    # helpers
    def child(self, name: str, **kw: Any) -> dict[str, Any]:
        """One `tests.bench._child` indexing run; returns its JSON (or {"ok": False, "error": ...})."""
        out = self._tmp / f"{name}.json"
        out.unlink(missing_ok=True)
        args = {"out": str(out), **kw}
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        timeout = max(10.0, min(self.a.timeout, self.time_left()))
        try:
            p = subprocess.run(
                [sys.executable, "-m", "tests.bench._child", json.dumps(args)],
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
        mod_out = self._tmp / "modules.json"
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

    def section(self, name: str, fn: Callable[[Table], None]) -> None:
        table = Table(name)
        t = time.perf_counter()
        if self.time_left() <= 0:
            table.note(f"skipped: the --deadline of {self.a.deadline:.0f} s has passed")
            self.put(name, "skipped", "deadline")
            table.print()
            return
        log(f"section {name} ...")
        try:
            fn(table)
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

    # -- hardware ---------------------------------------------------------------------------------
    def hardware(self) -> None:
        import numpy
        import PIL

        info: dict[str, Any] = {
            "cpu": sysmon.cpu_model(),
            "cpu_flags": sysmon.cpu_flags(),
            "cpus_usable": sysmon.usable_cpus(),
            "cpu_count": os.cpu_count(),
            "mem_gb": round(sysmon.mem_total_gb() or 0, 1),
            "python": platform.python_version(),
            "numpy": numpy.__version__,
            "pillow": PIL.__version__,
            "loadavg_start": sysmon.loadavg(),
            "gpus": sysmon.gpu_names(),
        }
        try:
            import torch

            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
            info["torch_interop_threads"] = torch.get_num_interop_threads()
            info["cuda_available"] = torch.cuda.is_available()
            if torch.cuda.is_available():
                info["cuda_device"] = torch.cuda.get_device_name(0)
                info["cuda_bf16"] = torch.cuda.is_bf16_supported()
            try:
                info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            except Exception:  # noqa: BLE001
                pass
        except ImportError as exc:
            info["torch"] = f"missing ({exc})"
        try:
            import transformers

            info["transformers"] = transformers.__version__
        except ImportError as exc:
            info["transformers"] = f"missing ({exc})"
        missing = []
        for mod in ("faiss", "sqlalchemy", "alembic", "typer", "pillow_heif"):
            try:
                __import__(mod)
            except ImportError:
                missing.append(mod)
        info["missing_modules"] = missing
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            if os.environ.get(var):
                info[var] = os.environ[var]
        self.results["hardware"] = info
        print("== hardware")
        print(f"  cpu        {info['cpu']}  ({info['cpus_usable']} usable of {info['cpu_count']} cores; "
              f"{', '.join(info['cpu_flags']) or 'no avx flags seen'}; {info['mem_gb']} GB)")
        print(f"  torch      {info.get('torch')}  threads {info.get('torch_threads')} (interop {info.get('torch_interop_threads')})"
              f"  isa {info.get('torch_cpu_capability', '?')}")
        print(f"  libs       python {info['python']}, transformers {info.get('transformers')}, numpy {info['numpy']}, "
              f"pillow {info['pillow']}")
        if info["gpus"] or info.get("cuda_available"):
            print(f"  gpu        {'; '.join(info['gpus']) or info.get('cuda_device')}  bf16 {info.get('cuda_bf16')}")
        print(f"  load avg   {info['loadavg_start']} (start of run; others' load makes timings noisy)")
        if missing:
            print(f"  missing    {', '.join(missing)}: sections that need them are reported as errors")
        mode = f"{'GPU (cuda)' if self.a.gpu else 'CPU'}; N={self.a.n} photos {D.PHOTO_W}x{D.PHOTO_H}, repeats={self.a.repeats}"
        print(f"  mode       {mode}")
        sys.stdout.flush()

    # -- 1. raw model -----------------------------------------------------------------------------
    def raw(self, t: Table) -> None:
        import torch
        from transformers import AutoModel

        _quiet_transformers()
        dev = self.device
        bs = self.a.batch
        net = AutoModel.from_pretrained(str(self.model())).eval().to(dev)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(bs, 3, 224, 224, generator=gen).to(dev)
        precisions = ["fp32", "fp16", "bf16"] if dev == "cuda" else ["fp32", "bf16"]
        iters = max(1, round(self.a.n / bs)) if dev == "cpu" else max(20, self.a.n // bs)
        t.note(f"ViT-S/14 random weights, {dev}, batch {bs}, {iters} batch(es) per repeat, "
               f"attn={getattr(net.config, '_attn_implementation', '?')}; torch threads {torch.get_num_threads()}")
        res: dict[str, Any] = {}

        def once(prec: str) -> None:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)
            with torch.inference_mode():
                if dtype is None:
                    net(pixel_values=x).pooler_output
                else:
                    with torch.autocast(device_type=dev, dtype=dtype):
                        net(pixel_values=x).pooler_output

        def once_small(prec: str) -> None:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[prec]
            with torch.inference_mode(), torch.autocast(device_type=dev, dtype=dtype):
                net(pixel_values=x[:2]).pooler_output

        flags = set(sysmon.cpu_flags())
        slow_bf16 = dev == "cpu" and not ({"avx512_bf16", "amx_bf16"} & flags)
        if slow_bf16:
            t.note("this CPU has no AVX512_BF16/AMX: bf16 is emulated (slow); it gets 1 batch, 1 repeat, to keep the run short")
        gpu_utils: dict[str, Any] = {}
        for prec in precisions:
            try:
                emulated = slow_bf16 and prec == "bf16"
                n_iter = 1 if emulated else iters
                if emulated:
                    once_small(prec)  # warm-up on 2 images: a full emulated batch costs tens of seconds
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
                for _ in range(1 if emulated else self.a.repeats):
                    t0 = time.perf_counter()
                    for _ in range(n_iter):
                        once(prec)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    rates.append(n_iter * bs / (time.perf_counter() - t0))
                if sampler is not None:
                    gpu_utils[prec] = sampler.stop()
                s = summary(rates)
                s["batches_per_repeat"] = n_iter
                res[prec] = s
                t.add(f"raw {prec}{' autocast' if prec != 'fp32' else ''}", s["median"], "img/s", spread(s, 1), digits=1)
            except Exception as exc:  # noqa: BLE001 - e.g. bf16 unsupported here
                res[prec] = {"error": f"{type(exc).__name__}: {exc}"}
                t.add(f"raw {prec}", None, "img/s", "", f"error: {type(exc).__name__}: {str(exc)[:80]}")
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
        self.results["sections"]["raw"] = {**self.results["sections"].get("raw", {}), **res, "batch": bs, "iters": iters}
        del net
        if dev == "cuda":
            torch.cuda.empty_cache()

    # -- 2. naive ---------------------------------------------------------------------------------
    def _hf(self, dev: str) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, AutoModel

        _quiet_transformers()
        proc = AutoImageProcessor.from_pretrained(str(self.model()))
        net = AutoModel.from_pretrained(str(self.model())).eval().to(dev)
        return proc, net

    @staticmethod
    def _hf_embed(proc: Any, net: Any, dev: str, paths: list[Path], batch: int) -> Any:
        """Reference / naive path: full Pillow decode, AutoImageProcessor, fp32 pooler_output, L2-normalised."""
        import numpy as np
        import torch
        from PIL import Image

        out = []
        for i in range(0, len(paths), batch):
            ims = []
            for p in paths[i : i + batch]:
                with Image.open(p) as im:
                    ims.append(im.convert("RGB"))  # full-size decode (no draft)
            pv = proc(images=ims, return_tensors="pt")["pixel_values"].to(dev)
            with torch.inference_mode():
                v = net(pixel_values=pv).pooler_output
                v = torch.nn.functional.normalize(v.float(), dim=1)
            out.append(v.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def naive(self, t: Table) -> None:
        dev = self.device
        paths = self.photos()[: self.a.naive_n]
        proc, net = self._hf(dev)
        t.note(f"{len(paths)} photos, Pillow full decode + {type(proc).__name__} + fp32 forward on {dev}, "
               f"batches of {self.a.naive_batch}, sequential; model load not timed")
        self._hf_embed(proc, net, dev, paths[:1], 1)  # warm-up
        rates = []
        for r in range(self.a.repeats):
            t0 = time.perf_counter()
            vecs = self._hf_embed(proc, net, dev, paths, self.a.naive_batch)
            rates.append(len(paths) / (time.perf_counter() - t0))
            if r == 0 and dev == "cpu":
                self._ref.update({str(p): v for p, v in zip(paths, vecs)})
        s = summary(rates)
        t.add("naive pipeline", s["median"], "img/s", spread(s, 2))
        self.put("naive", "img_s", s)
        self.put("naive", "n", len(paths))
        self.put("naive", "processor", type(proc).__name__)

    # -- 3. dinosearch end to end -----------------------------------------------------------------
    def e2e_runs(self, repeats: int | None = None) -> list[dict[str, Any]]:
        if self._e2e_runs is None:
            extra: dict[str, Any] = {}
            if self.a.gpu:
                extra.update(device="cuda", batch_size=self.a.batch)
            if self.a.backend != "torch":
                extra["backend"] = self.a.backend
            if self.a.precision != "auto":
                extra["precision"] = self.a.precision
            # A backend that converts the model first gets one cold run more, which the figures leave out.
            converts = self.a.backend == "onnxruntime"
            self._e2e_runs, self._e2e_index = self._index_runs(
                "e2e", extra, self._raw_probe, (repeats or self.a.repeats) + converts, keep_cache=converts
            )
        return self._e2e_runs

    def _index_runs(self, tag: str, extra: dict[str, Any], probe: Callable[[], float | None],
                    repeats: int, *, keep_cache: bool = False) -> tuple[list[dict[str, Any]], Path | None]:
        """`repeats` indexing runs of the photo set, each in a fresh process with `extra` Index arguments
        and after `probe()` (the raw model's img/s, for pairing). Returns the runs and the last good
        run's index (the fidelity checks read its vectors); the other indexes are removed.
        `keep_cache`: each run after the first starts with the previous index's cache/ (the converted
        model), as every run after a user's first does; the first run is marked "cold"."""
        self.photos()
        runs: list[dict[str, Any]] = []
        last: Path | None = None
        for r in range(repeats):
            if r and self.time_left() <= 0:
                log(f"{tag}: --deadline passed, no more repeats")
                break
            ix = self._tmp / f"{tag}-index-{r}"
            shutil.rmtree(ix, ignore_errors=True)
            kw: dict[str, Any] = dict(index=str(ix), model=str(self.model()), paths=[str(self._set_dir)], **extra)
            if self.a.workers:
                kw["workers"] = self.a.workers
            if self.a.torch_threads:
                kw["torch_threads"] = self.a.torch_threads
            if keep_cache and last is not None and (last / "cache").is_dir():
                shutil.copytree(last / "cache", ix / "cache")
            raw_probe = probe()
            log(f"{tag} repeat {r + 1}: Index(...).add({len(self.photos())} photos) in a fresh process")
            res = self.child(f"{tag}-{r}", **kw)
            res["raw_probe_img_s"] = raw_probe
            res["cold"] = keep_cache and last is None
            if res.get("ok"):
                res["img_s"] = len(self.photos()) / res["seconds"]
                if last is not None:
                    shutil.rmtree(last, ignore_errors=True)
                last = ix
            else:
                shutil.rmtree(ix, ignore_errors=True)
            runs.append(res)
        return runs, last

    def _raw_probe(self) -> float | None:
        """The raw model's img/s (the raw section's fastest precision, same batch) measured right before
        an e2e repeat: on a shared machine whose load drifts, e2e / raw is fairest pair by pair."""
        raw = self.results["sections"].get("raw", {})
        if self.a.gpu or not raw.get("best"):
            return None
        return self._probe("torch", raw["best"])

    def _probe(self, backend: str, precision: str) -> float:
        """img/s of the model alone through dinosearch.accel's forward for (backend, precision), on the
        CPU, the raw section's batch; the forward is built once and kept for the next repeat."""
        import torch
        from transformers import AutoModel

        from dinosearch.accel import build_forward

        if (backend, precision) not in self._probe_forwards:
            if self._probe_net is None:
                _quiet_transformers()
                self._probe_net = AutoModel.from_pretrained(str(self.model())).eval()
            self._probe_forwards[backend, precision] = build_forward(self._probe_net, backend=backend, precision=precision)
        forward = self._probe_forwards[backend, precision]
        bs = self.a.batch
        x = torch.randn(bs, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        iters = max(1, round(self.a.n / bs))
        forward.run(x[:2])  # warm-up
        t0 = time.perf_counter()
        for _ in range(iters):
            forward.run(x)
        return iters * bs / (time.perf_counter() - t0)

    @staticmethod
    def _cpu_per_photo(t: Table, runs: list[dict[str, Any]], n: int) -> tuple[float, float]:
        """CPU time of the runs themselves (imports excluded) per photo, median: (indexing process,
        decode workers) in ms, also added to `t`: where the cores went."""
        process = summary([r["cpu_run_s"] / n * 1000 for r in runs])["median"]
        workers = summary([r["cpu_children_s"] / n * 1000 for r in runs])["median"]
        t.add("  CPU per photo: indexing process / decode workers", process, "ms", "", f"{workers:.0f} ms", digits=0)
        return process, workers

    def raw_img_s(self) -> tuple[float | None, float | None]:
        raw = self.results["sections"].get("raw", {})
        return raw.get("raw_img_s"), (raw.get("fp32") or {}).get("median")

    def e2e(self, t: Table) -> None:
        n = len(self.photos())
        runs = self.e2e_runs()
        good = [r for r in runs if r.get("ok") and not r.get("cold")]
        for r in runs:
            if not r.get("ok"):
                t.note(f"ERROR in a run: {r.get('error')}")
                if r.get("traceback") and self.a.verbose:
                    print(r["traceback"], file=sys.stderr)
        if not good:
            return
        first = good[0]
        t.note(f"{n} photos; device {first.get('device')}, precision {first.get('precision')}, batch {first.get('batch_size')}, "
               f"workers {self.a.workers or 'default'}, torch threads {first.get('torch_threads')}; "
               f"imports before the clock: {first.get('import_s', 0):.1f} s")
        for r in good:
            rp = r.get("report") or {}
            if rp.get("added") != n or rp.get("failed"):
                t.note(f"WARNING: a run indexed {rp.get('added')} of {n} photos ({rp.get('failed')} failed): {rp}")
                break
        e2e = summary([r["img_s"] for r in good])
        rep = summary([r["report_images_per_second"] for r in good])
        steady = summary([r["steady_img_s"] for r in good if r.get("steady_img_s")])
        secs = summary([r["seconds"] for r in good])
        t.add("dinosearch end to end (N / wall of Index+add)", e2e["median"], "img/s", spread(e2e), verdict(e2e["median"], T_E2E_IMG_S))
        t.add("  wall seconds", secs["median"], "s", spread(secs))
        t.add("  report.images_per_second (product's own)", rep["median"], "img/s", spread(rep))
        t.add("  steady state (first to last image)", steady["median"], "img/s", spread(steady))
        t.add("  Index() open + migrate", summary([r["open_s"] for r in good])["median"], "s")
        t.add("  time to first image (model load, workers)", summary([r["first_item_s"] for r in good if r.get("first_item_s")])["median"], "s")
        model_ms, decode_ms = self._cpu_per_photo(t, good, n)
        raw_best, raw_fp32 = self.raw_img_s()
        naive = (self.results["sections"].get("naive", {}).get("img_s") or {}).get("median")
        ratios: dict[str, Any] = {}
        paired = [r["img_s"] / r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")]
        if raw_best and paired:
            # The verdict goes to the paired ratio: each e2e repeat over the raw model timed just before it.
            best = self.results["sections"]["raw"].get("best")
            ratios["e2e_over_raw_paired"] = statistics.median(paired)
            ratios["e2e_over_raw"] = e2e["median"] / raw_best
            probes = summary([r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")])
            t.add(f"  raw ({best}) timed just before each e2e repeat", probes["median"], "img/s", spread(probes), digits=1)
            t.add(f"dinosearch / raw ({best}), pair by pair", ratios["e2e_over_raw_paired"], "x",
                  " ".join(f"{v:.2f}" for v in paired), verdict(ratios["e2e_over_raw_paired"], T_E2E_OVER_RAW))
            t.add(f"dinosearch / raw ({best}), medians of the two sections", ratios["e2e_over_raw"], "x", "", "(info)")
        elif raw_best:
            ratios["e2e_over_raw"] = e2e["median"] / raw_best
            t.add(f"dinosearch / raw ({self.results['sections']['raw'].get('best')})", ratios["e2e_over_raw"], "x", "",
                  verdict(ratios["e2e_over_raw"], T_E2E_OVER_RAW))
            if raw_fp32 and raw_fp32 != raw_best:
                ratios["e2e_over_raw_fp32"] = e2e["median"] / raw_fp32
                t.add("dinosearch / raw fp32 (info)", ratios["e2e_over_raw_fp32"], "x")
        else:
            t.note("dinosearch / raw: run the raw section too (--only raw,e2e)")
        if naive:
            ratios["e2e_over_naive"] = e2e["median"] / naive
            t.add("dinosearch / naive", ratios["e2e_over_naive"], "x", "", verdict(ratios["e2e_over_naive"], T_E2E_OVER_NAIVE))
        else:
            t.note("dinosearch / naive: run the naive section too (--only naive,e2e)")
        # Why a target is missed, from this run's own figures.
        if not self.a.gpu and model_ms and decode_ms:
            ceiling = model_ms / (model_ms + decode_ms)
            self.put("e2e", "cpu_share_ceiling", ceiling)
            t.note(f"why: per photo the decode workers use {decode_ms:.0f} ms of CPU beside the indexing process's {model_ms:.0f} ms "
                   f"(nearly all of it the model); sharing the cores, end to end can reach about {ceiling:.2f} x a model "
                   "that has them to itself")
        probe = statistics.median([r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")] or [raw_best or 0])
        if probe and probe < T_E2E_IMG_S:
            t.note(f"why: the model alone runs at {probe:.1f} img/s here, below the {T_E2E_IMG_S:g} img/s target; "
                   "only a faster model path (the fast section; bf16 on a CPU with native bf16; a GPU) can reach it")
        gpu = [r["gpu"] for r in good if r.get("gpu") and "util_mean" in r["gpu"]]
        if gpu:
            t.add("GPU utilisation while indexing (mean)", statistics.median(g["util_mean"] for g in gpu), "%", "",
                  f"median {statistics.median(g['util_median'] for g in gpu):.0f}%, idle samples "
                  f"{statistics.median(g['util_zero_frac'] for g in gpu) * 100:.0f}%", digits=0)
        elif self.a.gpu:
            t.note(f"GPU utilisation: {next((r['gpu'] for r in good if r.get('gpu')), {}).get('error', 'not sampled')}")
        self.put("e2e", "img_s", e2e)
        self.put("e2e", "report_img_s", rep)
        self.put("e2e", "steady_img_s", steady)
        self.put("e2e", "ratios", ratios)
        self.put("e2e", "runs", runs)

    # -- 4. fidelity ------------------------------------------------------------------------------
    def reference(self, paths: list[Path]) -> Any:
        import numpy as np

        todo = [p for p in paths if str(p) not in self._ref]
        if todo:
            log(f"reference vectors for {len(todo)} photos (full decode + AutoImageProcessor, fp32 on CPU)")
            proc, net = self._hf("cpu")
            vecs = self._hf_embed(proc, net, "cpu", todo, 8)
            self._ref.update({str(p): v for p, v in zip(todo, vecs)})
        return np.stack([self._ref[str(p)] for p in paths])

    @staticmethod
    def compare(ref: Any, got: Any, k: int = 10) -> dict[str, Any]:
        import numpy as np

        cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        k = max(1, min(k, len(ref) - 1))

        def knn(v: Any) -> Any:
            s = v @ v.T
            np.fill_diagonal(s, -np.inf)
            return np.argsort(-s, axis=1, kind="stable")[:, :k]

        a, b = knn(ref), knn(got)
        overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
        return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()), "topk_overlap": overlap, "k": k, "n": len(ref)}

    def fidelity(self, t: Table) -> None:
        import numpy as np

        paths = self.photos()[: self.a.fid_n]
        ref = self.reference(paths)
        off = ref @ ref.T
        np.fill_diagonal(off, np.nan)
        t.note(f"{len(paths)} photos vs reference (Pillow full decode + AutoImageProcessor + Dinov2Model fp32 pooler_output, CPU)")
        t.note(f"reference spread: pairwise cosine between different photos {np.nanmin(off):.4f}..{np.nanmax(off):.4f} "
               f"(random weights: neighbours are close calls)")
        rows: dict[str, Any] = {}
        # a. what the index stored (the product's default path, e2e run)
        if self._e2e_index is None:
            self.e2e_runs(repeats=1)
        if self._e2e_index is not None:
            prec, got = self._stored_vectors(self._e2e_index, paths, ref.shape[1])
            rows[f"index default ({prec}, {self.device})"] = (self.compare(ref, got), T_COS_DEFAULT if prec.endswith("fp32") else T_COS_FAST)
        else:
            t.note("no e2e index to read vectors from (the e2e run failed)")
        # b. fast paths through the product's decode + Dinov2Embedder
        fast = ["bf16"] if self.device == "cpu" else ["fp32", "fp16", "bf16"]
        emulated = self.device == "cpu" and not ({"avx512_bf16", "amx_bf16"} & set(sysmon.cpu_flags()))
        for prec in fast:
            sub = paths[:16] if emulated and prec == "bf16" else paths  # emulated bf16 is slow: fewer photos
            try:
                got = self._embedder_vectors(sub, prec)
                label = f"decode + Dinov2Embedder {prec} ({self.device}{f', {len(sub)} photos' if len(sub) < len(paths) else ''})"
                rows[label] = (self.compare(ref[: len(sub)], got), T_COS_DEFAULT if prec == "fp32" else T_COS_FAST)
            except Exception as exc:  # noqa: BLE001
                t.note(f"{prec}: error {type(exc).__name__}: {exc}")
        out = {}
        for name, (m, target) in rows.items():
            t.add(f"{name}: mean cos", m["mean_cos"], "", "", verdict(m["mean_cos"], target), digits=5)
            t.add(f"{name}: min cos", m["min_cos"], "", "", "", digits=5)
            t.add(f"{name}: top-{m['k']} overlap", m["topk_overlap"], "", "", "", digits=3)
            out[name] = {**m, "target_mean_cos": target}
        self.put("fidelity", "rows", out)

    @staticmethod
    def _stored_vectors(index_dir: Path, paths: list[Path], dim: int) -> tuple[str, Any]:
        """(the precision the index records, the vectors it stored for `paths`; zeros where missing)."""
        import numpy as np

        from dinosearch.api import Index

        with Index(index_dir, create=False) as ix:
            fp = ix.fingerprint
            got = []
            for p in paths:
                found = ix.catalogue.lookup_path(os.path.abspath(p))
                got.append(found[1] if found else np.zeros(dim, np.float32))
        return (fp.precision if fp else "?"), np.stack(got)

    def _embedder_vectors(self, paths: list[Path], precision: str) -> Any:
        import numpy as np

        from dinosearch.decode import decode
        from dinosearch.embed import Dinov2Embedder

        emb = Dinov2Embedder(str(self.model()), device=self.device, precision=precision)
        px = np.stack([decode(p.read_bytes(), emb.preprocess).pixels for p in paths])
        bs = emb.batch_size
        return np.concatenate([emb.embed(px[i : i + bs]) for i in range(0, len(px), bs)])

    # -- 5. the faster CPU path end to end --------------------------------------------------------
    def _fast_probe(self) -> float | None:
        """The fast path's model alone, timed right before each of its end-to-end repeats, as
        _raw_probe is for the default path."""
        return self._probe(FAST_BACKEND, FAST_PRECISION)

    def fast(self, t: Table) -> None:
        import importlib.util

        if self.a.gpu:
            t.note("CPU only")
            return
        if not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx")):
            t.note("skipped: onnxruntime is not installed (pip install 'dinosearch[onnxruntime]')")
            return
        n = len(self.photos())
        # One cold run (the index converts the model), then --repeats runs that find it in the cache.
        runs, last = self._index_runs("fast", dict(backend=FAST_BACKEND, precision=FAST_PRECISION), self._fast_probe,
                                      self.a.repeats + 1, keep_cache=True)
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
        self._cpu_per_photo(t, good, n)
        res: dict[str, Any] = {"img_s": e2e, "steady_img_s": steady, "runs": runs}
        probes = [r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")]
        if probes:
            ps = summary(probes)
            paired = [r["img_s"] / r["raw_probe_img_s"] for r in good if r.get("raw_probe_img_s")]
            res["raw_img_s"], res["e2e_over_raw_paired"] = ps, statistics.median(paired)
            t.add(f"  its model alone ({FAST_PRECISION}, batch {self.a.batch}), timed just before each repeat", ps["median"],
                  "img/s", spread(ps), digits=1)
            t.add("  end to end / its model alone, pair by pair", res["e2e_over_raw_paired"], "x",
                  " ".join(f"{v:.2f}" for v in paired), "(info)")
        default = ((self.results["sections"].get("e2e") or {}).get("img_s") or {}).get("median")
        if default:
            res["over_default_e2e"] = e2e["median"] / default
            t.add("  speed-up over the default path (e2e section, this run)", res["over_default_e2e"], "x")
        if last is not None:
            paths = self.photos()[: self.a.fid_n]
            ref = self.reference(paths)
            prec, got = self._stored_vectors(last, paths, ref.shape[1])
            m = self.compare(ref, got)
            res["fidelity"] = {**m, "precision": prec}
            t.add(f"  stored vectors ({prec}) vs the fp32 reference: mean cos", m["mean_cos"], "", f"min {m['min_cos']:.5f}",
                  verdict(m["mean_cos"], T_COS_FAST), digits=5)
            t.add(f"  top-{m['k']} neighbours shared with the reference", m["topk_overlap"], "", "",
                  verdict(m["topk_overlap"], T_TOPK_FAST), digits=3)
            shutil.rmtree(last, ignore_errors=True)
        probe = statistics.median(probes) if probes else None
        if probe and probe < T_E2E_IMG_S:
            t.note(f"why: the int8 model alone runs at {probe:.1f} img/s on this CPU, below the {T_E2E_IMG_S:g} img/s "
                   "target, so end to end cannot reach it here")
        self.results["sections"]["fast"] = {**self.results["sections"].get("fast", {}), **res}

    # -- 6./7. the small-file tree: re-index and start-up ---------------------------------------
    def tree_index(self) -> tuple[Path, Path, Path]:
        """(tree, its cached index, the tiny model); the first index is built once and cached."""
        if self._tree_ix is not None:
            return self._tree_ix
        tree = D.ensure_tree(self.a.tree_n)
        tiny = D.ensure_model("tiny")
        ix = D.BENCH_DIR / f"tree-{self.a.tree_n}-index"
        build_json = D.BENCH_DIR / f"tree-{self.a.tree_n}-index.build.json"
        for attempt in range(2):
            if self.a.rebuild_tree_index or attempt or not (ix / "catalogue.sqlite3").exists():
                shutil.rmtree(ix, ignore_errors=True)
                log(f"first index of {self.a.tree_n} files with the tiny model (cached in {ix}; a minute or two on 2 cores)")
                res = self.child("tree-build", index=str(ix), model=str(tiny), paths=[str(tree)], rss_interval=0.25)
                res["built_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
                build_json.write_text(json.dumps(res))
                self._tree_built = True
                if not res.get("ok"):
                    raise RuntimeError(f"first index of the tree failed: {res.get('error')}")
            # Warm-up, and a check that the cached index matches the tree and this code.
            w = self.cli("index", str(tree), "--index", str(ix), "--model", str(tiny), "--json", timeout=self.a.timeout)
            try:
                rep = json.loads(w["stdout"])
            except ValueError:
                rep = {}
            if w["rc"] == 0 and rep.get("unchanged") == self.a.tree_n and not rep.get("added") and not rep.get("updated"):
                break
            log(f"cached tree index unusable (rc {w['rc']}, {rep or w['stderr'].strip()[-300:]}); rebuilding")
        else:
            raise RuntimeError("the tree index could not be built")
        self._tree_ix = (tree, ix, tiny)
        return self._tree_ix

    def _time_cli(self, n: int, *args: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        runs = [self.cli(*args, timeout=self.a.timeout) for _ in range(n)]
        return summary([r["seconds"] for r in runs if r["rc"] == 0]), runs

    @staticmethod
    def _imported(runs: list[dict[str, Any]], mod: str) -> str:
        seen = {r["modules"].get(mod) for r in runs if r["modules"]}
        if not seen:
            return "unknown"
        return "yes" if True in seen else "no"

    def reindex(self, t: Table) -> None:
        tree, ix, tiny = self.tree_index()
        n_files = self.a.tree_n
        help_s, help_runs = self._time_cli(self.a.startup_repeats, "--help")
        re_s, re_runs = self._time_cli(self.a.repeats, "index", str(tree), "--index", str(ix), "--model", str(tiny), "--json")
        bad = [r for r in re_runs if r["rc"] != 0]
        reports = []
        for r in re_runs:
            try:
                reports.append(json.loads(r["stdout"]))
            except ValueError:
                pass
        t.note(f"{n_files} unchanged small JPEGs in {n_files // 100} folders, index built with the tiny model")
        t.add("`dinosearch --help` start-up", help_s["median"], "s", spread(help_s))
        t.add("`dinosearch index` unchanged tree", re_s["median"], "s", spread(re_s))
        if reports:
            t.add("  product's report.seconds", summary([r.get("seconds") for r in reports])["median"], "s")
            if any(r.get("unchanged") != n_files or r.get("added") or r.get("updated") for r in reports):
                t.note(f"WARNING: not all files were unchanged: {reports[0]}")
        per10k = None
        if re_s["median"] is not None and help_s["median"] is not None:
            per10k = (re_s["median"] - help_s["median"]) * 10_000 / n_files
            t.add("re-index per 10k files beyond start-up", per10k, "s", "", verdict(per10k, T_REINDEX_PER_10K, higher=False))
        torch_in = self._imported(re_runs, "torch")
        t.add("  torch imported by the unchanged re-index", torch_in, "", "", "PASS" if torch_in == "no" else "MISS")
        t.add("  transformers imported", self._imported(re_runs, "transformers"))
        if bad:
            t.note(f"ERROR: {len(bad)} run(s) failed: {bad[0]['stderr'].strip()[-300:]}")
        self.put("reindex", "files", n_files)
        self.put("reindex", "help_s", help_s)
        self.put("reindex", "reindex_s", re_s)
        self.put("reindex", "per_10k_beyond_startup_s", per10k)
        self.put("reindex", "torch_imported", torch_in)
        self.put("reindex", "reports", reports)

    def startup(self, t: Table) -> None:
        tree, ix, _ = self.tree_index()
        n = self.a.startup_repeats
        query_img = sorted((tree / "d000").glob("*.jpg"))[0]
        cases = [
            ("dinosearch --help", ("--help",), T_STARTUP),
            ("dinosearch stats", ("stats", "--index", str(ix)), T_STARTUP),
            ("dinosearch query <indexed image>", ("query", str(query_img), "--index", str(ix), "-k", "10"), T_QUERY),
        ]
        t.note(f"median of {n} fresh processes each; index of {self.a.tree_n} images; no model may be loaded")
        out: dict[str, Any] = {}
        for name, args, target in cases:
            s, runs = self._time_cli(n, *args)
            torch_in = self._imported(runs, "torch")
            ok = [r for r in runs if r["rc"] == 0]
            t.add(name, s["median"], "s", spread(s), verdict(s["median"], target, higher=False))
            t.add("  torch imported", torch_in, "", "", ("PASS" if torch_in == "no" else "MISS") if name != "dinosearch --help" else "")
            if len(ok) < len(runs):
                t.note(f"ERROR: exit {runs[0]['rc']}: {runs[0]['stderr'].strip()[-300:]}")
            out[name] = {"seconds": s, "torch_imported": torch_in, "modules": runs[0]["modules"] if runs else {}}
        # Where start-up time goes: import time (python -X importtime) of the commands that must be fast.
        for name, args, _ in cases[1:]:
            imp = self._importtime(args)
            if imp:
                total = sum(ms for _, ms in imp)
                t.note(f"`{name}` imports {total:.0f} ms in all; largest: " + ", ".join(f"{m} {ms:.0f}" for m, ms in imp[:6]))
                out[name]["imports_total_ms"] = round(total)
                out[name]["imports_ms"] = [(m, round(ms, 1)) for m, ms in imp[:15]]
        self.put("startup", "cases", out)

    def _importtime(self, args: tuple[str, ...]) -> list[tuple[str, float]]:
        env = {**os.environ, "BENCH_MODULES_OUT": os.devnull}
        try:
            p = subprocess.run([sys.executable, "-X", "importtime", "-c", WRAP, *args], cwd=D.REPO, env=env,
                               capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return []
        tops: dict[str, float] = {}
        for line in p.stderr.splitlines():
            # "import time:   self [us] | cumulative | imported package"; top-level = no indentation
            if not line.startswith("import time:") or "|" not in line:
                continue
            parts = line.split("|")
            name = parts[2].rstrip()
            if name.startswith(" " * 2) or not parts[1].strip().isdigit():
                continue
            tops[name.strip()] = tops.get(name.strip(), 0.0) + int(parts[1]) / 1000
        return sorted(tops.items(), key=lambda kv: -kv[1])

    # -- 7. memory --------------------------------------------------------------------------------
    def memory(self, t: Table) -> None:
        runs = [r for r in self.e2e_runs(repeats=1) if r.get("ok") and not r.get("cold")]
        if runs:
            peak_self = summary([r.get("peak_rss_self_mib") for r in runs])
            peak_kid = summary([(r.get("rss") or {}).get("peak_child_mib") for r in runs])
            peak_total = summary([(r.get("rss") or {}).get("peak_total_mib") for r in runs])
            t.note(f"e2e ({len(self.photos())} photos of {D.PHOTO_W}x{D.PHOTO_H}), median of {len(runs)} run(s); "
                   "peaks are VmHWM (ru_maxrss inherits the parent's size across fork+exec)")
            t.add("peak RSS, indexing process (VmHWM)", peak_self["median"], "MiB", spread(peak_self, 0), digits=0)
            t.add("peak RSS, largest decode worker (VmHWM)", peak_kid["median"], "MiB", spread(peak_kid, 0), digits=0)
            t.add("peak RSS, process + workers together (sampled)", peak_total["median"], "MiB", spread(peak_total, 0), digits=0)
            rss = runs[-1].get("rss") or {}
            if rss:
                t.add("  sampled total RSS start / mid / end", None, "", "",
                      f"{rss['start']['total_mib']:.0f} / {rss['mid']['total_mib']:.0f} / {rss['end']['total_mib']:.0f} MiB")
            self.put("memory", "e2e", {"peak_rss_self_mib": peak_self, "peak_child_mib": peak_kid, "peak_total_mib": peak_total,
                                        "rss_last_run": rss})
        build_json = D.BENCH_DIR / f"tree-{self.a.tree_n}-index.build.json"
        if not build_json.exists():
            self.tree_index()  # the flat-memory check: the first index of the tree, built (and cached) now
        if build_json.exists():
            b = json.loads(build_json.read_text())
            if b.get("ok") and b.get("rss"):
                rss = b["rss"]
                t.note(f"first index of the {self.a.tree_n}-file tree (tiny model), "
                       f"{'measured in this run' if self._tree_built else 'recorded ' + str(b.get('built_at')) + ' (cached; --rebuild-tree-index re-measures)'}")
                t.add("  wall / images per second", b["seconds"], "s", "", f"{b['report_images_per_second']:.0f} img/s", digits=1)
                t.add("  RSS own  p10 / mid / p90 / end", None, "", "",
                      " / ".join(f"{rss[k]['own_mib']:.0f}" for k in ("p10", "mid", "p90", "end")) + " MiB")
                t.add("  RSS total p10 / mid / p90 / end", None, "", "",
                      " / ".join(f"{rss[k]['total_mib']:.0f}" for k in ("p10", "mid", "p90", "end")) + " MiB")
                growth = rss["p90"]["own_mib"] - rss["p10"]["own_mib"]
                t.add("  growth of the indexer p10 -> p90", growth, "MiB", "", "flat" if abs(growth) < 50 else "GROWS", digits=0)
                t.add("  peak RSS indexer / largest worker (VmHWM)", b.get("peak_rss_self_mib"), "MiB", "",
                      f"{rss.get('peak_child_mib', '?')} MiB", digits=0)
                t.add("  CPU seconds: indexer / decode workers", b.get("cpu_self_s"), "s", "", f"{b.get('cpu_children_s', 0):.1f} s", digits=1)
                self.put("memory", "tree_first_index", {k: b.get(k) for k in ("seconds", "rss", "peak_rss_self_mib",
                                                                             "cpu_self_s", "cpu_children_s", "built_at", "report")})


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="smoke run: N=16, 2 repeats, 3 start-up repeats")
    p.add_argument("--gpu", action="store_true", help="CUDA mode: N=512, batch 128, fp16/bf16, GPU utilisation")
    p.add_argument("--n", type=int, help="photos to index (default 64; --quick 16; --gpu 512)")
    p.add_argument("--repeats", type=int, help="repeats per measurement, medians reported (default 3; --quick 2)")
    p.add_argument("--only", action="append", metavar="SECTIONS",
                   help=f"comma-separated sections to run (repeatable): {', '.join(SECTIONS)}")
    p.add_argument("--json", metavar="OUT", help="write all results to this JSON file")
    p.add_argument("--batch", type=int, help="batch for the raw model (default 32 CPU, 128 GPU) and the GPU e2e run")
    p.add_argument("--workers", type=int, help="decode workers for the e2e run (default: the product's)")
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads in the e2e process (default: torch's)")
    p.add_argument("--backend", default="torch", choices=("torch", "compile", "openvino", "onnxruntime"),
                   help="the e2e run's --backend (default torch)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                   help="the e2e run's --precision (default auto)")
    p.add_argument("--naive-n", type=int, help="photos for the naive pipeline (default min(N, 64))")
    p.add_argument("--naive-batch", type=int, default=8, help="naive pipeline batch (default 8)")
    p.add_argument("--fid-n", type=int, help="photos for the fidelity check (default min(N, 64))")
    p.add_argument("--tree-n", type=int, default=10_000, help="small files for re-index/start-up (default 10000)")
    p.add_argument("--startup-repeats", type=int, help="runs per start-up command (default 5; --quick 3)")
    p.add_argument("--rebuild-tree-index", action="store_true", help="re-measure the first index of the tree")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds any one child run may take (default 600)")
    p.add_argument("--deadline", type=float, help="seconds after which no new section or repeat starts "
                   "(for a machine lent for a fixed time; child runs are also cut at it)")
    p.add_argument("--keep", action="store_true", help="keep this run's scratch indexes under .bench/tmp/")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    a = p.parse_args(argv)
    a.n = a.n or (512 if a.gpu else 16 if a.quick else 64)
    a.repeats = a.repeats or (2 if a.quick else 3)
    a.batch = a.batch or (128 if a.gpu else 32)
    a.naive_n = min(a.naive_n or 64, a.n)
    a.fid_n = min(a.fid_n or 64, a.n)
    a.startup_repeats = a.startup_repeats or (3 if a.quick else 5)
    if a.deadline is None and a.gpu:
        a.deadline = 480.0  # a lent GPU machine runs one command for at most 10 minutes
    if a.only:
        a.sections = [s.strip() for item in a.only for s in item.split(",") if s.strip()]
        unknown = [s for s in a.sections if s not in SECTIONS]
        if unknown:
            p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    else:
        a.sections = list(GPU_SECTIONS if a.gpu else SECTIONS)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    started = time.perf_counter()
    b = Bench(a)
    try:
        b.hardware()
        if a.gpu and not b.results["hardware"].get("cuda_available"):
            print("\n--gpu: torch sees no CUDA device; nothing to measure on the GPU")
            return 2
        # Inputs first (cached): generating them while torch is busy would skew nothing, but keep it apart.
        if any(s in a.sections for s in ("naive", "e2e", "fidelity", "memory")):
            b.photos()
        b.model()
        order = [s for s in SECTIONS if s in a.sections]
        for name in order:
            b.section(name, getattr(b, name))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        b.results["hardware"]["loadavg_end"] = sysmon.loadavg() if "hardware" in b.results else None
        b.results["total_seconds"] = round(time.perf_counter() - started, 1)
        b.close()
        print(f"\n(total {b.results['total_seconds']:.0f} s; load average at the end {sysmon.loadavg()})")
        if a.json:
            b.save_json()
            print(f"results written to {a.json}")
        _summary(b)
    return 0


def _summary(b: Bench) -> None:
    """The headline figures and verdicts, together."""
    s = b.results["sections"]
    lines = []
    ratios = (s.get("e2e") or {}).get("ratios") or {}
    e2e = ((s.get("e2e") or {}).get("img_s") or {}).get("median")
    if e2e is not None:
        lines.append(f"  dinosearch e2e {e2e:.1f} img/s  {verdict(e2e, T_E2E_IMG_S)}")
    if "e2e_over_raw_paired" in ratios:
        v = ratios["e2e_over_raw_paired"]
        lines.append(f"  dinosearch/raw {v:.2f} pair by pair  {verdict(v, T_E2E_OVER_RAW)} (medians of the sections: {ratios['e2e_over_raw']:.2f})")
    elif "e2e_over_raw" in ratios:
        lines.append(f"  dinosearch/raw {ratios['e2e_over_raw']:.2f}  {verdict(ratios['e2e_over_raw'], T_E2E_OVER_RAW)}")
    if "e2e_over_naive" in ratios:
        lines.append(f"  dinosearch/naive {ratios['e2e_over_naive']:.2f}  {verdict(ratios['e2e_over_naive'], T_E2E_OVER_NAIVE)}")
    for name, m in ((s.get("fidelity") or {}).get("rows") or {}).items():
        lines.append(f"  fidelity {name}: mean cos {m['mean_cos']:.5f}  {verdict(m['mean_cos'], m['target_mean_cos'])}")
    fast = s.get("fast") or {}
    if (fast.get("img_s") or {}).get("median") is not None:
        v = fast["img_s"]["median"]
        line = f"  fast path ({FAST_BACKEND} {FAST_PRECISION}) e2e {v:.1f} img/s  {verdict(v, T_E2E_IMG_S)}"
        if fast.get("over_default_e2e"):
            line += f"; {fast['over_default_e2e']:.2f}x the default path"
        lines.append(line)
        if fast.get("fidelity"):
            m = fast["fidelity"]
            lines.append(f"  fast path fidelity: mean cos {m['mean_cos']:.5f} {verdict(m['mean_cos'], T_COS_FAST)}, "
                         f"top-{m['k']} overlap {m['topk_overlap']:.3f} {verdict(m['topk_overlap'], T_TOPK_FAST)}")
    r = s.get("reindex") or {}
    if r.get("per_10k_beyond_startup_s") is not None:
        lines.append(f"  re-index per 10k {r['per_10k_beyond_startup_s']:.2f} s  {verdict(r['per_10k_beyond_startup_s'], T_REINDEX_PER_10K, higher=False)}"
                     f"; torch imported: {r.get('torch_imported')}")
    for name, c in ((s.get("startup") or {}).get("cases") or {}).items():
        if isinstance(c, dict) and "seconds" in c and c["seconds"].get("median") is not None:
            target = T_QUERY if "query" in name else T_STARTUP
            lines.append(f"  {name} {c['seconds']['median']:.2f} s  {verdict(c['seconds']['median'], target, higher=False)}")
    errors = [k for k, v in s.items() if isinstance(v, dict) and v.get("error")]
    if errors:
        lines.append(f"  sections with errors: {', '.join(errors)} (-v for tracebacks)")
    if lines:
        print("\n== summary")
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
