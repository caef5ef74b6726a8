"""What the benchmark runs on, and samplers of memory (RSS) and GPU utilisation. Never raises, never hangs."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


# -- hardware -------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The ISA extensions that decide CPU inference speed (AVX-512, bf16, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def gpu_names() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15,
        )
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


# -- memory ---------------------------------------------------------------------------------------
def _status_kb(pid: int | str, field: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status in KiB (0 where unknown). VmHWM is the peak RSS of the
    process's own address space: unlike ru_maxrss it does not inherit the parent's size across
    fork+exec, so a small child of a big process is not reported as big."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def peak_rss_self_mib() -> float | None:
    kb = _status_kb("self", "VmHWM")
    return round(kb / 1024, 1) if kb else None


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return kids


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    stack = _children(pid)
    seen: set[int] = set()
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        out.append(c)
        stack.extend(_children(c))
    return out


def tree_rss_kb(pid: int) -> tuple[int, int, int]:
    """(RSS of pid, summed RSS of its descendants, number of descendants), in KiB (0 where unknown)."""
    kids = descendants(pid)
    return _rss_kb(pid), sum(_rss_kb(c) for c in kids), len(kids)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each thread of `pid`, keyed "name/tid", and of its
    descendant processes, keyed "children" (summed). Empty where /proc is not readable."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def cpu(stat_path: str) -> tuple[str, float] | None:
        try:
            with open(stat_path) as f:
                text = f.read()
        except OSError:
            return None
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        return name, (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    out: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        got = cpu(f"/proc/{pid}/task/{tid}/stat")
        if got:
            out[f"{got[0]}/{tid}"] = got[1]
    out["children"] = sum((got or ("", 0.0))[1] for got in (cpu(f"/proc/{c}/stat") for c in descendants(pid)))
    return out


class RssSampler:
    """Samples (seconds, own RSS KiB, descendants' RSS KiB) of a process every `interval` seconds."""

    def __init__(self, pid: int | None = None, interval: float = 0.1):
        self.pid = pid or os.getpid()
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self.child_hwm_kb: dict[int, int] = {}  # descendant pid -> its peak RSS (VmHWM) when last seen
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def start(self) -> "RssSampler":
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            own = _rss_kb(self.pid)
            kids = 0
            for c in descendants(self.pid):
                kids += _rss_kb(c)
                hwm = _status_kb(c, "VmHWM")
                if hwm:
                    self.child_hwm_kb[c] = max(hwm, self.child_hwm_kb.get(c, 0))
            if own:
                self.samples.append((time.monotonic() - self._t0, own, kids))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        out = summarise_rss(self.samples)
        if self.child_hwm_kb:
            out["peak_child_mib"] = round(max(self.child_hwm_kb.values()) / 1024, 1)
            out["children_seen"] = len(self.child_hwm_kb)
        return out


def summarise_rss(samples: list[tuple[float, int, int]]) -> dict[str, Any]:
    """RSS (MiB) at the start, middle and end of a run, and its peak: own and own + descendants."""
    if not samples:
        return {}

    def at(frac: float) -> tuple[float, int, int]:
        end = samples[-1][0]
        return min(samples, key=lambda s: abs(s[0] - frac * end))

    mib = lambda kb: round(kb / 1024, 1)  # noqa: E731
    out: dict[str, Any] = {"n_samples": len(samples), "duration_s": round(samples[-1][0], 2)}
    for name, frac in (("start", 0.0), ("p10", 0.1), ("mid", 0.5), ("p90", 0.9), ("end", 1.0)):
        s = at(frac)
        out[name] = {"own_mib": mib(s[1]), "total_mib": mib(s[1] + s[2])}
    out["peak_own_mib"] = mib(max(s[1] for s in samples))
    out["peak_total_mib"] = mib(max(s[1] + s[2] for s in samples))
    return out


# -- GPU ------------------------------------------------------------------------------------------
class GpuSampler:
    """`nvidia-smi ... -lms 200` in the background; utilisation % and memory while it runs.

    A no-op where there is no nvidia-smi. stop() always returns, killing the sampler if it must.
    """

    def __init__(self, interval_ms: int = 200):
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float, float]] = []  # (t, util %, memory used MiB)
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> "GpuSampler":
        exe = shutil.which("nvidia-smi")
        if not exe:
            self.error = "no nvidia-smi"
            return self
        try:
            self._proc = subprocess.Popen(
                [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", str(self.interval_ms)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        except OSError as exc:
            self.error = f"nvidia-smi failed to start: {exc}"
            return self
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._read, name="bench-gpu", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                util = float(parts[0])
                mem = float(parts[1]) if len(parts) > 1 else float("nan")
            except (ValueError, IndexError):
                continue
            self.samples.append((time.monotonic() - self._t0, util, mem))

    def stop(self) -> dict[str, Any]:
        if self._proc is not None:
            try:
                self._proc.terminate()
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                try:
                    self._proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=3)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"error": self.error or "no samples"}
        utils = [s[1] for s in self.samples]
        mems = [s[2] for s in self.samples if s[2] == s[2]]
        return {
            "n_samples": len(utils),
            "util_mean": round(statistics.fmean(utils), 1),
            "util_median": round(statistics.median(utils), 1),
            "util_max": round(max(utils), 1),
            "util_zero_frac": round(sum(u == 0 for u in utils) / len(utils), 2),
            "mem_used_max_mib": round(max(mems), 0) if mems else None,
        }
