"""Embed: model-ready pixels -> L2-normalised vectors.

The `Embedder` protocol is all the pipeline knows of a model; `Dinov2Embedder` is the real one
(transformers `AutoModel`, CLS token = `pooler_output`). torch and transformers are imported only
when a model is actually loaded, so commands that need no model start fast.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import ModelLoadError
from .records import ModelFingerprint, Preprocess

if TYPE_CHECKING:
    import torch

DINOV2_TYPES = ("dinov2", "dinov2_with_registers")


class Embedder(Protocol):
    fingerprint: ModelFingerprint
    preprocess: Preprocess
    batch_size: int

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(n, crop_height, crop_width, 3) uint8 RGB -> (n, dim) float32, each row of unit length."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float32 rows of unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def resolve_device(device: str = "auto") -> str:
    """auto -> cuda when available, else mps, else cpu. An explicit device that is absent is an error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("--device mps was asked for, but MPS is not available; use --device cpu or auto")
    if device not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """auto -> bf16 (or fp16) on a GPU; on the CPU bf16 where it is native, else fp32. Any other value
    is returned as it is: dinosearch.accel.check_backend has already refused what it does not know."""
    import torch

    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "mps":
        return "fp16"
    from .accel import native_bf16

    # bf16 only where the CPU does it in hardware (AVX512_BF16 / AMX: ~1.9x, cosine 0.99997 vs fp32);
    # emulated bf16 is several times slower than fp32.
    return "bf16" if native_bf16() else "fp32"


def preprocess_from_processor(processor: Any) -> Preprocess:
    """Read resize / crop / normalisation from a transformers image processor (its config, not ours)."""
    from PIL import Image

    def get(name: str, default: Any = None) -> Any:
        return getattr(processor, name, default)

    size = get("size") or {}
    shortest = _field(size, "shortest_edge") if get("do_resize", True) else 0
    if get("do_resize", True) and not shortest:
        raise ModelLoadError(f"unsupported image processor size {size!r}: dinosearch needs a shortest_edge resize")
    crop = get("crop_size") or {}
    if get("do_center_crop", True) and crop:
        ch, cw = _field(crop, "height"), _field(crop, "width")
    else:
        ch = cw = int(shortest)
    resample = get("resample", Image.Resampling.BICUBIC)
    resample = int(getattr(resample, "value", resample))
    mean = tuple(float(x) for x in (get("image_mean") if get("do_normalize", True) else (0.0, 0.0, 0.0)))
    std = tuple(float(x) for x in (get("image_std") if get("do_normalize", True) else (1.0, 1.0, 1.0)))
    rescale = float(get("rescale_factor", 1 / 255)) if get("do_rescale", True) else 1.0
    return Preprocess(int(shortest or 0), int(ch), int(cw), resample, mean, std, rescale)  # type: ignore[arg-type]


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def weights_hash(model: "torch.nn.Module") -> str:
    """A content hash of the loaded weights: the same checkpoint from the hub or a local copy matches."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        digest.update(str(t.dtype).encode())
        digest.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


class Dinov2Embedder:
    """DINOv2 from a hub id or a local directory, through transformers' own `from_pretrained`.

    Never falls back to anything else: a model that cannot be loaded is a ModelLoadError that says
    how to get the weights. `backend` picks how the forward pass runs (dinosearch.accel: "torch",
    "compile", "openvino" or "onnxruntime"); a backend that cannot run is a ModelLoadError too, never a fallback.
    `precision` is then the precision in effect, and the fingerprint records backend and precision
    ("bf16" for eager torch as before, "openvino-bf16", "onnxruntime-int8", ...), for information: it is not part of key().
    `cache_dir`: where a backend that converts the model keeps the result for the next load (the
    onnxruntime export); None converts on every load.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        backend: str = "torch",
        cache_dir: str | os.PathLike[str] | None = None,
        crop_mode: str = "center",
        resolution: int | None = None,
        pooling: str = "cls",
    ):
        import torch
        from transformers import AutoImageProcessor, AutoModel
        from transformers.utils import logging as hf_logging

        from .accel import AUTO_PRECISION, backend_device, build_forward, check_backend
        from .pooling import pooled, pooled_dim
        from .prepare import adapt, check_options

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        device = backend_device(backend, device)  # an explicit device they can't use is an error below
        check_backend(backend, device, precision)  # before the (slow) load
        check_options(crop_mode=crop_mode, resolution=resolution, pooling=pooling)
        self.device = resolve_device(device)
        if precision == "auto":
            precision = AUTO_PRECISION.get(backend, "auto")
        self.precision = resolve_precision(precision, self.device)
        try:
            net, processor = _from_pretrained(model, AutoModel, AutoImageProcessor)
        except Exception as exc:  # noqa: BLE001 - hub, file and format errors all mean "cannot load"
            raise ModelLoadError(_load_message(model, exc)) from None
        model_type = getattr(net.config, "model_type", "?")
        if model_type not in DINOV2_TYPES:
            raise ModelLoadError(f"'{model}' is a {model_type} model, not DINOv2; point --model at a DINOv2 checkpoint")
        self.preprocess = adapt(preprocess_from_processor(processor), crop_mode=crop_mode, resolution=resolution)
        net.eval()
        weights = weights_hash(net)
        self.net = net.to(self.device)
        self._forward = build_forward(
            pooled(self.net, pooling),
            backend=backend,
            precision=self.precision,
            device=self.device,
            image_size=(self.preprocess.crop_height, self.preprocess.crop_width),
            # A converted model holds its pooling: keep each pooling's conversion apart (cls as before).
            cache=(os.fspath(cache_dir), weights if pooling == "cls" else f"{weights}-{pooling}") if cache_dir is not None else None,
        )
        self.backend = backend
        if backend == "onnxruntime":
            self.net = None  # the session has its own copy of the weights: don't hold a second one
        self.precision = self._forward.precision  # in effect (OpenVINO runs fp32 where the CPU has no bf16)
        self.fingerprint = ModelFingerprint(
            model=model,
            weights=weights,
            dim=pooled_dim(int(net.config.hidden_size), pooling),
            preprocess=self.preprocess.describe(),
            pooling=pooling,
            precision=self._forward.label,  # informational, not part of key(): "bf16", "openvino-bf16", ...
        )
        self.batch_size = batch_size or (64 if self.device == "cuda" else 16)
        self._torch = torch
        mean = torch.tensor(self.preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = (self.preprocess.rescale / std).to(self.device)
        self._shift = (mean / std).to(self.device)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 -> (n, dim) float32, L2-normalised pooled tokens (the CLS token unless
        another pooling was asked for: dinosearch.pooling)."""
        torch = self._torch
        if len(pixels) == 0:
            return np.zeros((0, self.fingerprint.dim), dtype=np.float32)
        if not pixels.flags.writeable or not pixels.flags.c_contiguous:
            pixels = np.array(pixels, copy=True, order="C")
        batch = torch.from_numpy(pixels)
        if self.device == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        # (n, h, w, 3) uint8 -> (n, 3, h, w) float, rescaled and normalised: the transpose on the uint8
        # bytes (a quarter of the float's), then in place. 4x faster on one CPU thread than the float
        # ops on the permuted view, which was half the tiny model's time per image.
        x = batch.permute(0, 3, 1, 2).contiguous().float()
        x.mul_(self._scale).sub_(self._shift)
        out = self._forward.run(x)
        with torch.inference_mode():
            out = torch.nn.functional.normalize(out.float(), dim=1)
        return out.cpu().numpy().astype(np.float32, copy=False)


def _from_pretrained(model: str, auto_model: Any, auto_processor: Any) -> tuple[Any, Any]:
    """A local folder or the hub cache first, with no network at all; the hub only when needed."""
    import os

    try:
        return (
            auto_model.from_pretrained(model, local_files_only=True),
            auto_processor.from_pretrained(model, local_files_only=True),
        )
    except Exception:  # noqa: BLE001 - not cached (or not a folder): try the hub below
        if os.path.isdir(model) or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise
    host = _hub_host()
    if not _resolves(host):
        raise ModelLoadError(
            f"cannot load model '{model}' (it is not in the local cache and {host} cannot be reached). "
            + _how_to_get(model)
        )
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # no retry chatter: one clear message if it fails
    return auto_model.from_pretrained(model), auto_processor.from_pretrained(model)


def _hub_host() -> str:
    import os
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def _resolves(host: str, timeout: float = 3.0) -> bool:
    """Whether DNS knows the hub, within a few seconds (an offline machine answers fast or never)."""
    import socket
    import threading

    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo(host, 443)
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


def _how_to_get(model: str) -> str:
    name = model.rstrip("/").split("/")[-1] or "model"
    return (
        f"Download it on a machine with network access, e.g. `hf download {model} --local-dir ./{name}`, "
        f"then pass --model ./{name} (or set DINOSEARCH_MODEL)"
    )


def _load_message(model: str, exc: Exception) -> str:
    if isinstance(exc, ModelLoadError):
        return str(exc)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(reason) > 200:
        reason = reason[:197] + "..."
    return f"cannot load model '{model}' ({reason}). " + _how_to_get(model)
