"""Inference backends: each agrees with eager fp32, is recorded in the fingerprint, and a missing
package is one clear error, never a silent fallback."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dinosearch.decode import decode
from dinosearch.embed import Dinov2Embedder
from dinosearch.errors import ModelLoadError

from .images import jpeg_bytes, photo

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install 'dinosearch[openvino]')")


@pytest.fixture(scope="module")
def reference(tiny_model: str) -> tuple[np.ndarray, np.ndarray]:
    """Six decoded photos and their eager-fp32 vectors."""
    e = Dinov2Embedder(tiny_model, device="cpu", precision="fp32")
    pixels = np.stack([decode(jpeg_bytes(photo(320, 240, seed=s)), e.preprocess).pixels for s in range(6)])
    return pixels, e.embed(pixels)


@pytest.mark.parametrize(
    "backend,precision",
    [
        ("torch", "bf16"),
        ("compile", "bf16"),
        pytest.param("openvino", "fp32", marks=needs_openvino),
        pytest.param("openvino", "bf16", marks=needs_openvino),
    ],
)
def test_backend_matches_eager_fp32(tiny_model: str, reference: tuple[np.ndarray, np.ndarray], backend: str, precision: str) -> None:
    pixels, ref = reference
    e = Dinov2Embedder(tiny_model, device="cpu", precision=precision, backend=backend)
    # A full batch, then a short one and a single image: dynamic batch, no recompile-per-size surprises.
    vectors = np.concatenate([e.embed(pixels[:4]), e.embed(pixels[4:5]), e.embed(pixels[5:])])
    assert vectors.shape == ref.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cos = np.sum(vectors * ref, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, cos


@needs_openvino
def test_fingerprint_records_backend_but_still_matches_the_index(tiny_model: str) -> None:
    eager = Dinov2Embedder(tiny_model, device="cpu", precision="fp32")
    ov = Dinov2Embedder(tiny_model, device="auto", precision="fp32", backend="openvino")
    assert eager.fingerprint.precision == "fp32"  # unchanged for the default backend
    assert ov.fingerprint.precision == "openvino-fp32" and ov.backend == "openvino" and ov.device == "cpu"
    assert ov.fingerprint.key() == eager.fingerprint.key()  # informational: one index, any backend
    bf16 = Dinov2Embedder(tiny_model, device="cpu", precision="bf16", backend="openvino")
    # What actually ran: OpenVINO runs fp32 on a CPU without native bf16, and the record says so.
    assert bf16.fingerprint.precision in ("openvino-bf16", "openvino-fp32")
    assert bf16.fingerprint.precision == f"openvino-{bf16.precision}"


def test_eager_bf16_fingerprint_is_unchanged(tiny_model: str) -> None:
    assert Dinov2Embedder(tiny_model, device="cpu", precision="bf16").fingerprint.precision == "bf16"


def test_missing_openvino_is_one_clear_error(tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(ModelLoadError) as err:
        Dinov2Embedder(tiny_model, device="cpu", backend="openvino")
    message = str(err.value)
    assert "pip install" in message and "openvino" in message and "\n" not in message


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(backend="tensorrt"), "unknown backend"),
        (dict(backend="openvino", device="cuda"), "CPU only"),
        (dict(backend="openvino", device="cpu", precision="fp16"), "fp32 or bf16"),
    ],
)
def test_impossible_backend_choices_fail_before_loading(kwargs: dict, words: str, tmp_path: Path) -> None:
    # A model path that does not exist: the backend check must come first.
    if kwargs.get("device") == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this check is about a machine without the device")
    with pytest.raises(ModelLoadError, match=words):
        Dinov2Embedder(str(tmp_path / "no-model"), **{"device": "cpu", **kwargs})


@needs_openvino
def test_openvino_sends_no_telemetry(tmp_path: Path) -> None:
    """Plain `import openvino` writes ~/intel/openvino_ga_cid and posts usage events; ours must not."""
    code = (
        "import sys\n"
        "from dinosearch.accel import _import_openvino\n"
        "_import_openvino()\n"
        "print(sys.modules['openvino.tools.ovc.telemetry_utils'].tm.__name__)\n"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("CI", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert out.stdout.strip() == "openvino.tools.ovc.telemetry_stub"
    assert not (tmp_path / "intel").exists()


def test_native_bf16_is_a_bool() -> None:
    from dinosearch.accel import native_bf16

    assert isinstance(native_bf16(), bool)
