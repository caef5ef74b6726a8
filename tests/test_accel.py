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
# Installed with the test extra, so CI runs these; skipped only where someone installed less.
HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime is not installed (pip install 'dinosearch[onnxruntime]')")


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
        pytest.param("onnxruntime", "fp32", marks=needs_ort),
        pytest.param("onnxruntime", "int8", marks=needs_ort),
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


@needs_ort
def test_onnxruntime_is_fp32_unless_int8_is_asked_for(tiny_model: str, reference: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, ref = reference
    plain = Dinov2Embedder(tiny_model, device="auto", backend="onnxruntime")  # auto device, auto precision
    assert plain.device == "cpu" and plain.precision == "fp32" and plain.fingerprint.precision == "onnxruntime-fp32"
    np.testing.assert_allclose(plain.embed(pixels), ref, atol=1e-4)  # the same graph: fp32 agrees closely
    int8 = Dinov2Embedder(tiny_model, device="cpu", precision="int8", backend="onnxruntime")
    assert int8.fingerprint.precision == "onnxruntime-int8"
    assert int8.fingerprint.key() == plain.fingerprint.key()  # informational: one index, any backend
    assert not np.allclose(int8.embed(pixels), ref, atol=1e-4)  # it really runs quantised


@needs_ort
def test_onnxruntime_int8_leaves_logging_alone(tiny_model: str) -> None:
    """The quantiser logs hints through `logging.warning`, which would print them and install a stderr
    handler on the root logger; building the backend must do neither, nor leave the level changed."""
    code = (
        "import logging\n"
        "from dinosearch.accel import _quiet_root_logger\n"
        "from dinosearch.embed import Dinov2Embedder\n"
        "with _quiet_root_logger():\n"
        "    logging.warning('a hint from inside')\n"  # what the quantiser does
        f"Dinov2Embedder({tiny_model!r}, device='cpu', precision='int8', backend='onnxruntime')\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), root.level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["0", str(30)], out.stdout  # no handler, WARNING as Python starts
    assert "hint" not in out.stderr and "quantization" not in out.stderr.lower(), out.stderr


def test_missing_onnxruntime_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError) as err:  # said before any model is loaded: this one does not exist
        Dinov2Embedder(str(tmp_path / "no-model"), device="cpu", backend="onnxruntime", precision="int8")
    message = str(err.value)
    assert "needs the onnxruntime package" in message and "pip install 'dinosearch[onnxruntime]'" in message
    assert "\n" not in message


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
        (dict(backend="onnxruntime", device="cuda"), "CPU only"),
        (dict(backend="onnxruntime", device="cpu", precision="bf16"), "fp32 or int8"),
        (dict(backend="torch", device="cpu", precision="int8"), "needs --backend onnxruntime"),
        (dict(backend="openvino", device="cpu", precision="int8"), "needs --backend onnxruntime"),
        (dict(precision="int4"), "unknown precision"),
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


@needs_ort
def test_onnxruntime_keeps_its_export_for_the_next_load(tiny_model: str, reference: tuple[np.ndarray, np.ndarray],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    pixels, _ = reference
    cache = tmp_path / "cache"
    first = Dinov2Embedder(tiny_model, device="cpu", precision="int8", backend="onnxruntime", cache_dir=cache)
    [entry] = cache.iterdir()  # one entry, nothing half-built left beside it
    assert entry.name.startswith("onnx-int8-") and [p.name for p in entry.iterdir()] == ["model.onnx"]
    expected = first.embed(pixels)

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again despite the cache")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = Dinov2Embedder(tiny_model, device="cpu", precision="int8", backend="onnxruntime", cache_dir=cache)
    np.testing.assert_array_equal(again.embed(pixels), expected)
    monkeypatch.undo()

    # A damaged entry is not an error: that load converts anew and discards it, the next one caches
    # it again; fp32 gets an entry of its own.
    (entry / "model.onnx").write_bytes(b"not an onnx model")
    mended = Dinov2Embedder(tiny_model, device="cpu", precision="int8", backend="onnxruntime", cache_dir=cache)
    np.testing.assert_array_equal(mended.embed(pixels), expected)
    assert list(cache.iterdir()) == []
    Dinov2Embedder(tiny_model, device="cpu", precision="int8", backend="onnxruntime", cache_dir=cache)
    Dinov2Embedder(tiny_model, device="cpu", precision="fp32", backend="onnxruntime", cache_dir=cache)
    assert sorted(p.name.split("-")[1] for p in cache.iterdir()) == ["fp32", "int8"]
    assert (entry / "model.onnx").stat().st_size > 1000


@needs_ort
def test_onnxruntime_without_a_writable_cache_still_runs(tiny_model: str, reference: tuple[np.ndarray, np.ndarray],
                                                         tmp_path: Path) -> None:
    pixels, ref = reference
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would go")  # as unwritable as it gets, even for root
    e = Dinov2Embedder(tiny_model, device="cpu", backend="onnxruntime", cache_dir=blocked)
    np.testing.assert_allclose(e.embed(pixels), ref, atol=1e-4)
    assert blocked.read_text().startswith("a file")


@needs_ort
def test_int8_keeps_the_patch_embedding_and_first_two_layers_in_fp32(tmp_path: Path) -> None:
    import collections

    import onnx
    from transformers import Dinov2Config, Dinov2Model

    from dinosearch.accel import build_forward

    config = Dinov2Config(hidden_size=32, num_hidden_layers=8, num_attention_heads=2, mlp_ratio=2, image_size=224, patch_size=14)
    build_forward(Dinov2Model(config).eval(), backend="onnxruntime", precision="int8", cache=(str(tmp_path), "weights"))
    [entry] = tmp_path.iterdir()
    ops = collections.Counter(n.op_type for n in onnx.load(str(entry / "model.onnx")).graph.node)
    assert (ops["Conv"], ops["ConvInteger"]) == (1, 0)
    # Per layer: q, k, v, o, fc1, fc2 take weights; two more MatMuls (scores, values) multiply activations.
    assert ops["MatMulInteger"] == 6 * 6  # layers 3..8
    assert ops["MatMul"] == 6 * 2 + 2 * 8  # layers 1..2, and every layer's attention


def test_cache_build_leaves_nothing_behind_when_it_fails(tmp_path: Path) -> None:
    from dinosearch.accel import _cached_build

    def broken(directory: str) -> str:
        Path(directory, "model.onnx").write_bytes(b"half a model")
        raise RuntimeError("the exporter failed")

    with pytest.raises(RuntimeError, match="exporter failed"):
        _cached_build(str(tmp_path), "onnx-int8-key", broken)
    assert list(tmp_path.iterdir()) == []


def test_cache_build_race_keeps_the_entry_that_won(tmp_path: Path) -> None:
    """Two processes building one entry: the second rename fails, and the first one's entry is used."""
    from dinosearch.accel import _cached_build

    def build(tag: bytes):
        def write(directory: str) -> str:
            if tag == b"second":  # the other process finishes first, while this one is still building
                _cached_build(str(tmp_path), "onnx-int8-key", build(b"first"))
            Path(directory, "model.onnx").write_bytes(tag)
            return str(Path(directory, "model.onnx"))
        return write

    model = _cached_build(str(tmp_path), "onnx-int8-key", build(b"second"))
    assert model is not None and Path(model).read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["onnx-int8-key"]  # no work folder left


def test_cache_sweeps_work_folders_that_a_killed_build_left(tmp_path: Path) -> None:
    from dinosearch.accel import _cached_build

    stale, fresh = tmp_path / ".onnx-int8-old-abc", tmp_path / ".onnx-int8-busy-def"
    for d in (stale, fresh):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"partial")
    os.utime(stale, (1, 1))  # long ago: its build is dead; `fresh` may be another process's, live

    def build(directory: str) -> str:
        Path(directory, "model.onnx").write_bytes(b"whole")
        return str(Path(directory, "model.onnx"))

    _cached_build(str(tmp_path), "onnx-int8-key", build)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "onnx-int8-key"]


@needs_ort
def test_onnxruntime_without_a_cache_converts_in_a_temporary_folder_it_removes(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    Dinov2Embedder(tiny_model, device="cpu", precision="int8", backend="onnxruntime")  # no cache_dir
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("dinosearch-onnx-")] == []
