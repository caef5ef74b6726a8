"""Inference backends: one forward function for a loaded transformers `Dinov2Model`.

`build_forward(net, backend=..., precision=..., device=...)` returns a `Forward` whose `run` maps
normalised pixels, a float32 (n, 3, h, w) tensor on the model's device, to the (n, dim) CLS token
(`pooler_output`, the layer-normed CLS token) before L2 normalisation.

- "torch": eager PyTorch, with autocast for bf16/fp16 (the reference; any device).
- "compile": `torch.compile` (inductor), bf16/fp16 through autocast. The batch dimension is compiled
  dynamic once, so a short last batch does not recompile; the first call pays the compilation.
- "openvino": the model converted with `openvino.convert_model` and compiled for the CPU, with
  INFERENCE_PRECISION_HINT set explicitly (OpenVINO otherwise picks bf16 by itself on CPUs that have
  it). Dynamic batch, static height and width. CPU only, fp32 or bf16.

A backend whose package is missing is a ModelLoadError that says what to install; nothing ever
falls back to another backend. `Forward.precision` is the precision actually in effect: OpenVINO runs
fp32 when bf16 is asked for on a CPU without native bf16, and says so.

torch is imported by the caller; everything else is imported only when its backend is built.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch

BACKENDS = ("torch", "compile", "openvino")
INSTALL_HINT = {
    "openvino": "pip install 'dinosearch[openvino]' (or: pip install 'openvino>=2024.0')",
}


@dataclass(frozen=True)
class Forward:
    run: Callable[["torch.Tensor"], "torch.Tensor"]
    backend: str
    precision: str  # in effect: fp32, bf16 or fp16

    @property
    def label(self) -> str:
        """What the index fingerprint records: "bf16" for eager torch (as before), else "openvino-bf16"..."""
        return self.precision if self.backend == "torch" else f"{self.backend}-{self.precision}"


def native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512_BF16 or AMX); emulated bf16 is slow."""
    import torch

    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a private probe: absent or failing means "don't know" = no
            pass
    return False


def check_backend(backend: str, device: str, precision: str) -> None:
    """Reject impossible combinations before anything is loaded ("auto" precision is always possible)."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend == "openvino":
        if device != "cpu":
            raise ModelLoadError(f"--backend openvino runs on the CPU only, not {device}; use --device cpu or --backend torch")
        if precision not in ("auto", "fp32", "bf16"):
            raise ModelLoadError(f"--backend openvino runs fp32 or bf16, not {precision}; use --precision fp32 or bf16")


def build_forward(
    net: Any,
    *,
    backend: str = "torch",
    precision: str = "fp32",
    device: str = "cpu",
    image_size: tuple[int, int] = (224, 224),
) -> Forward:
    """A forward function for `net` (an eval-mode Dinov2Model already on `device`)."""
    check_backend(backend, device, precision)
    if backend == "openvino":
        return _openvino(net, precision, image_size)
    if backend == "compile":
        return _compiled(net, precision, device)
    return _eager(net, precision, device)


def _autocast_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def _eager(net: Any, precision: str, device: str) -> Forward:
    import torch

    dtype = _autocast_dtype(precision)

    def run(x: "torch.Tensor") -> "torch.Tensor":
        with torch.inference_mode():
            if dtype is None:
                return net(pixel_values=x).pooler_output
            with torch.autocast(device_type=device, dtype=dtype):
                return net(pixel_values=x).pooler_output

    return Forward(run, "torch", precision)


def _compiled(net: Any, precision: str, device: str) -> Forward:
    import torch

    if device == "cpu" and not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")):
        raise ModelLoadError("--backend compile needs a C++ compiler on the CPU (e.g. apt install g++); or use --backend torch")
    dtype = _autocast_dtype(precision)
    compiled = torch.compile(net)
    lock = threading.Lock()

    def run(x: "torch.Tensor") -> "torch.Tensor":
        n = x.shape[0]
        if n == 1:  # batch 1 would be specialised and compiled again: run it as 2 rows
            x = torch.cat([x, x])
        # Batch marked dynamic: one compilation serves every batch size >= 2 (the short last batch too).
        torch._dynamo.mark_dynamic(x, 0)
        with lock, torch.inference_mode():
            try:
                if dtype is None:
                    out = compiled(pixel_values=x).pooler_output
                else:
                    with torch.autocast(device_type=device, dtype=dtype):
                        out = compiled(pixel_values=x).pooler_output
            except torch._dynamo.exc.TorchDynamoException as exc:  # compilation failed: pages of text
                raise ModelLoadError(f"torch.compile failed ({_first_line(exc)}); use --backend torch") from exc
        return out[:n]

    return Forward(run, "compile", precision)


def _openvino(net: Any, precision: str, image_size: tuple[int, int]) -> Forward:
    import numpy as np
    import torch

    ov = _import_openvino()

    class PoolerOutput(torch.nn.Module):
        def __init__(self, model: Any):
            super().__init__()
            self.model = model

        def forward(self, pixel_values: "torch.Tensor") -> "torch.Tensor":
            return self.model(pixel_values=pixel_values).pooler_output

    h, w = image_size
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent branches
            # Traced here rather than by convert_model, to skip the trace check: 3 more forward passes
            # that tripled the conversion time. Batch 2, not 1, so no size-1 broadcasting is baked in.
            traced = torch.jit.trace(
                PoolerOutput(net).eval(), example_inputs=(torch.zeros(2, 3, h, w),), check_trace=False, strict=False
            )
            model = ov.convert_model(traced, input=[ov.PartialShape([-1, 3, h, w])])
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads()),
        }
        compiled = ov.Core().compile_model(model, "CPU", config)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - conversion errors are pages long
        raise ModelLoadError(f"OpenVINO could not convert or compile the model ({_first_line(exc)}); use --backend torch") from None
    # What the plugin settled on (an ov.Type): bf16 only where the CPU has it, whatever was asked.
    effective = "bf16" if compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "fp32"
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def run(x: "torch.Tensor") -> "torch.Tensor":
        pixels = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        with lock:
            # share_outputs=False: a copy, since the request reuses its output buffer
            out = request.infer({0: pixels}, share_inputs=True, share_outputs=False)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    return Forward(run, "openvino", effective)


def _import_openvino() -> Any:
    """`import openvino`, with its usage telemetry off.

    openvino's converter (imported by `import openvino` itself) sends usage events to Google Analytics
    unless the user opted out, each from a forked process waiting up to 3 s. A local-first tool must
    not phone home: with `openvino_telemetry` unimportable, openvino uses its own no-op stub (its
    documented path when that package is absent). Only this import is affected.
    """
    import sys

    blocked = "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules
    if blocked:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment] - makes the import fail
    try:
        import openvino as ov
    except ImportError:
        raise ModelLoadError(f"--backend openvino needs the openvino package: {INSTALL_HINT['openvino']}") from None
    finally:
        if blocked:
            sys.modules.pop("openvino_telemetry", None)
    return ov


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
