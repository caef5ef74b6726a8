"""The `hardware` block printed before the sections: CPU, GPU, library versions, missing modules, mode."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from tests.bench import data as D
from tests.bench import sysmon
from tests.bench.core import Bench


def run(bench: Bench) -> None:
    """Not a table section: it records `results["hardware"]` and prints its own block."""
    info = _collect()
    bench.results["hardware"] = info
    _print(info, bench)


def _collect() -> dict[str, Any]:
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
    _torch_info(info)
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
    return info


def _torch_info(info: dict[str, Any]) -> None:
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


def _print(info: dict[str, Any], bench: Bench) -> None:
    a = bench.a
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
    if info["missing_modules"]:
        print(f"  missing    {', '.join(info['missing_modules'])}: sections that need them are reported as errors")
    mode = f"{'GPU (cuda)' if a.gpu else 'CPU'}; N={a.n} photos {D.PHOTO_W}x{D.PHOTO_H}, repeats={a.repeats}"
    print(f"  mode       {mode}")
    sys.stdout.flush()
