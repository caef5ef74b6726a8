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
- "onnxruntime": the model exported to ONNX and run by ONNX Runtime on the CPU, fp32 or int8 (the
  linear layers' weights quantised per tensor, activations per batch: `quantize_dynamic`; the patch
  embedding and the first two layers stay fp32). int8 is the fast path on CPUs without native bf16
  (AVX2 laptops): ~1.5x eager fp32 for ViT-S, vectors at cosine ~0.9997 to fp32 (random weights).

A backend whose package is missing is a ModelLoadError that says what to install; nothing ever
falls back to another backend. `Forward.precision` is the precision actually in effect: OpenVINO runs
fp32 when bf16 is asked for on a CPU without native bf16, and says so.

torch is imported by the caller; everything else is imported only when its backend is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch

BACKENDS = ("torch", "compile", "openvino", "onnxruntime")
# The precisions each backend runs; "auto" is always accepted (resolved by dinosearch.embed).
PRECISIONS = {
    "torch": ("fp32", "bf16", "fp16"),
    "compile": ("fp32", "bf16", "fp16"),
    "openvino": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
}
ALL_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# What "auto" means where it is not the device's choice (dinosearch.embed.resolve_precision):
# onnxruntime's int8 changes the vectors a little, so it runs only when asked for.
AUTO_PRECISION = {"onnxruntime": "fp32"}
CPU_ONLY = ("openvino", "onnxruntime")
PACKAGES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime", "onnx")}
ONNX_OPSET = 17
ONNX_BUILD = 1  # part of the cache key: bump it whenever the export or the quantisation changes
_LOGGING_LOCK = threading.Lock()
INSTALL_HINT = {
    "openvino": "pip install 'dinosearch[openvino]' (or: pip install 'openvino>=2024.0')",
    "onnxruntime": "pip install 'dinosearch[onnxruntime]' (or: pip install onnxruntime onnx)",
}


@dataclass(frozen=True)
class Forward:
    run: Callable[["torch.Tensor"], "torch.Tensor"]
    backend: str
    precision: str  # in effect: fp32, bf16, fp16 or int8

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


def backend_device(backend: str, device: str) -> str:
    """The device "auto" means for `backend`: the CPU for the CPU-only ones."""
    return "cpu" if backend in CPU_ONLY and device == "auto" else device


def check_backend(backend: str, device: str, precision: str) -> None:
    """Reject impossible combinations before anything is loaded ("auto" precision is always possible)."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend in CPU_ONLY and device != "cpu":
        raise ModelLoadError(f"--backend {backend} runs on the CPU only, not {device}; use --device cpu or --backend torch")
    allowed = PRECISIONS[backend]
    if precision != "auto" and precision not in allowed:
        if precision not in ALL_PRECISIONS:
            raise ModelLoadError(f"unknown precision {precision!r}; use {_either(['auto', *ALL_PRECISIONS])}")
        hint = _either(list(allowed))
        if precision == "int8":
            raise ModelLoadError(f"--precision int8 needs --backend onnxruntime, not {backend}; or use --precision {hint}")
        raise ModelLoadError(f"--backend {backend} runs {hint}, not {precision}; use --precision {hint}")
    missing = [m for m in PACKAGES.get(backend, ()) if not _installed(m)]
    if missing:  # said now, not after the model has been loaded for nothing
        raise ModelLoadError(f"--backend {backend} needs the {' and '.join(missing)} package: {INSTALL_HINT[backend]}")


def _installed(module: str) -> bool:
    import importlib.util

    if module in sys.modules:
        return sys.modules[module] is not None  # None: made unimportable on purpose
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def build_forward(
    net: Any,
    *,
    backend: str = "torch",
    precision: str = "fp32",
    device: str = "cpu",
    image_size: tuple[int, int] = (224, 224),
    cache: tuple[str, str] | None = None,
) -> Forward:
    """A forward function for `net` (an eval-mode Dinov2Model already on `device`).

    `cache`: (a directory, the weights' hash) where a backend that converts the model keeps the
    result for the next run (onnxruntime: the exported, quantised model); None converts every time.
    """
    check_backend(backend, device, precision)
    if backend == "openvino":
        return _openvino(net, precision, image_size)
    if backend == "onnxruntime":
        return _onnxruntime(net, precision, image_size, cache)
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
    h, w = image_size
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent branches
            # Traced here rather than by convert_model, to skip the trace check: 3 more forward passes
            # that tripled the conversion time. Batch 2, not 1, so no size-1 broadcasting is baked in.
            traced = torch.jit.trace(
                _pooler_output(net), example_inputs=(torch.zeros(2, 3, h, w),), check_trace=False, strict=False
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


def _pooler_output(net: Any) -> Any:
    """`net` as a module mapping pixel_values to pooler_output alone: what the exporters trace."""
    import torch

    class PoolerOutput(torch.nn.Module):
        def __init__(self, model: Any):
            super().__init__()
            self.model = model

        def forward(self, pixel_values: "torch.Tensor") -> "torch.Tensor":
            return self.model(pixel_values=pixel_values).pooler_output

    return PoolerOutput(net).eval()


def _onnxruntime(net: Any, precision: str, image_size: tuple[int, int], cache: tuple[str, str] | None) -> Forward:
    import numpy as np
    import torch

    ort = _import_onnxruntime()
    h, w = image_size

    def build(directory: str) -> str:
        """Export (and quantise) the model into `directory`; returns its model.onnx. Files rather than
        bytes: a checkpoint over 2 GB (dinov2-giant) needs ONNX's external-data format."""
        exported = os.path.join(directory, "export" if precision == "int8" else "", "model.onnx")
        os.makedirs(os.path.dirname(exported), exist_ok=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and exporter deprecation warnings
            # The TorchScript exporter: no onnxscript needed, and a ViT-S exports in ~2 s. Batch 2,
            # not 1, so no size-1 broadcasting is baked in; the batch axis stays dynamic.
            torch.onnx.export(
                _pooler_output(net), (torch.zeros(2, 3, h, w),), exported,
                input_names=["pixel_values"], output_names=["cls"],
                dynamic_axes={"pixel_values": {0: "batch"}, "cls": {0: "batch"}},
                opset_version=ONNX_OPSET, dynamo=False,
            )
        if precision != "int8":
            return exported
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = os.path.join(directory, "model.onnx")
        keep = _kept_in_fp32(exported, int(net.config.num_hidden_layers))
        with _quiet_root_logger():  # it logs a "consider pre-processing" hint at WARNING
            quantize_dynamic(exported, quantized, weight_type=QuantType.QInt8, nodes_to_exclude=keep)
        shutil.rmtree(os.path.dirname(exported), ignore_errors=True)
        return quantized

    def load(path: str) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Idle threads sleep instead of spinning: the spin took CPU from the decode workers (64 x 12 MP
        # on 2 cores, 3 alternating runs: 6.7 img/s end to end without it, 5.4 with it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    try:
        session = None
        if cache is not None:
            cache_dir, weights = cache
            entry = _cached_build(cache_dir, _cache_name(net, weights, precision, image_size, ort.__version__), build)
            if entry is not None:
                try:
                    session = load(entry)
                except Exception:  # noqa: BLE001 - damaged (disk trouble, edited by hand): the next load rebuilds it
                    _discard(os.path.dirname(entry))
        if session is None:
            with tempfile.TemporaryDirectory(prefix="dinosearch-onnx-") as tmp:
                session = load(build(tmp))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporter and runtime errors are pages long
        raise ModelLoadError(f"ONNX Runtime could not export or load the model ({_first_line(exc)}); use --backend torch") from None

    def run(x: "torch.Tensor") -> "torch.Tensor":
        pixels = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = session.run(["cls"], {"pixel_values": pixels})  # thread-safe; a fresh output array
        return torch.from_numpy(out)

    return Forward(run, "onnxruntime", precision)


def _cache_name(net: Any, weights: str, precision: str, image_size: tuple[int, int], ort_version: str) -> str:
    """The cache entry of one conversion: everything that changes what the export or the quantiser
    writes (weights, config, size, precision, this recipe, the libraries) is in its key."""
    import onnx
    import torch
    import transformers

    h, w = image_size
    parts = [
        weights, net.config.to_json_string(), f"{h}x{w}", precision, f"build{ONNX_BUILD}", f"opset{ONNX_OPSET}",
        torch.__version__, transformers.__version__, onnx.__version__, ort_version,
    ]
    return f"onnx-{precision}-" + hashlib.blake2b("\n".join(parts).encode(), digest_size=12).hexdigest()


def _kept_in_fp32(path: str, layers: int) -> list[str]:
    """The nodes int8 leaves in fp32: the patch embedding and the first two encoder layers (fewer
    in a shallow model, which would otherwise be mostly fp32: one under 8 layers, none under 4).

    Their quantisation error is the one every later layer carries on: kept in fp32 they halve the
    error (random ViT-S, 64 photos: mean cosine to fp32 0.9992 -> 0.9997) at a cost lost in the noise
    of the timings. Found by graph order rather than by name (exporters rename nodes): the weight
    MatMuls come layer by layer, the same number per layer.
    """
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    matmuls = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input)]
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    if not layers or len(matmuls) % layers:
        return convs  # not the layout expected: quantise every layer rather than guess
    first = min(2, layers // 4)
    return convs + matmuls[: first * (len(matmuls) // layers)]


def _cached_build(cache_dir: str, name: str, build: Callable[[str], str]) -> str | None:
    """`cache_dir/name/model.onnx`, built by `build(a fresh directory)` the first time.

    Built aside and renamed into place, so a reader never sees half a model and two processes
    building at once both end with one whole entry. None when the cache can't be written (a
    read-only index): the caller then builds in a temporary directory. An error of `build` itself
    is raised, with nothing left behind.
    """
    final = os.path.join(cache_dir, name)
    model = os.path.join(final, "model.onnx")
    if os.path.isfile(model):
        return model
    try:
        os.makedirs(cache_dir, exist_ok=True)
        _sweep(cache_dir)
        work = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
    except OSError:
        return None
    try:
        build(work)  # writes work/model.onnx
        try:
            os.rename(work, final)
        except OSError:
            if not os.path.isfile(model):  # not another process winning the race: no cache here
                return None
        return model
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sweep(cache_dir: str, older_than: float = 3600.0) -> None:
    """Remove what builds killed midway left (hidden work folders), once they are an hour old."""
    now = time.time()
    for entry in os.scandir(cache_dir):
        try:
            if entry.name.startswith(".") and entry.is_dir() and now - entry.stat().st_mtime > older_than:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass


def _discard(entry: str) -> None:
    """Take a damaged cache entry out of the way: renamed first, so an entry another process has
    just put in its place is never the one removed."""
    aside = os.path.join(os.path.dirname(entry), f".discarded-{os.getpid()}-{os.path.basename(entry)}")
    try:
        os.rename(entry, aside)
    except OSError:
        return  # gone already, or a read-only cache: nothing to do
    shutil.rmtree(aside, ignore_errors=True)


def _import_onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401 - the exporter and the quantiser need it
        import onnxruntime as ort
    except ImportError:
        raise ModelLoadError(f"--backend onnxruntime needs the onnxruntime and onnx packages: {INSTALL_HINT['onnxruntime']}") from None
    except Exception as exc:  # noqa: BLE001 - installed but broken (a native library, a NumPy ABI mismatch)
        raise ModelLoadError(f"onnxruntime is installed but cannot be imported ({_first_line(exc)}); reinstall it: "
                             f"{INSTALL_HINT['onnxruntime']}") from None
    return ort


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Silence the root logger for a moment: onnxruntime.quantization logs hints through
    `logging.warning`, which would also install a stderr handler on a root logger that has none.
    Under a lock: two conversions at once must not restore each other's level."""
    import logging

    with _LOGGING_LOCK:
        root = logging.getLogger()
        level, guard = root.level, logging.NullHandler()
        root.addHandler(guard)  # a root with a handler is left alone by logging's implicit basicConfig
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)
            root.removeHandler(guard)


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
