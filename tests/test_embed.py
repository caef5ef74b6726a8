"""The embedder: real from_pretrained loading, fidelity to the reference pipeline, clear load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinosearch.api import Index, embed_images
from dinosearch.decode import decode
from dinosearch.embed import Dinov2Embedder
from dinosearch.errors import ModelLoadError

from .images import jpeg_bytes, photo, save


def reference_vector(model_dir: str, path: Path) -> np.ndarray:
    """What transformers itself gives: AutoImageProcessor + Dinov2Model.pooler_output, L2-normalised."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    with Image.open(path) as im:
        inputs = processor(images=im.convert("RGB"), return_tensors="pt")
    with torch.inference_mode():
        v = model(**inputs).pooler_output[0].numpy()
    return v / np.linalg.norm(v)


@pytest.mark.parametrize(
    "name,size,fmt",
    [
        ("photo.jpg", (4032, 3024), "JPEG"),  # 12 MP: decoded through JPEG draft (DCT scaling)
        ("portrait.jpg", (1200, 1600), "JPEG"),
        ("small.png", (320, 240), "PNG"),  # smaller than the resize: upscaled
        ("wide.webp", (900, 300), "WEBP"),
    ],
)
def test_vectors_match_reference_pipeline(tmp_path: Path, tiny_model: str, name: str, size: tuple[int, int], fmt: str) -> None:
    path = save(photo(*size, seed=len(name)), tmp_path / name, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    ours = embed_images(Dinov2Embedder(tiny_model, device="cpu"), [path])[0]
    ref = reference_vector(tiny_model, path)
    assert abs(float(np.linalg.norm(ours)) - 1) < 1e-5
    assert float(ours @ ref) >= 0.999


def test_query_score_is_reference_cosine(tmp_path: Path, tiny_model: str) -> None:
    """The score printed for a re-compressed copy is the cosine of the two reference vectors."""
    original = save(photo(1600, 1200, seed=3), tmp_path / "photos" / "a.jpg", quality=95)
    for s in range(4, 8):
        save(photo(1600, 1200, seed=s), tmp_path / "photos" / f"other{s}.jpg", quality=95)
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(jpeg_bytes(Image.open(original).resize((800, 600)), quality=70))
    with Index(tmp_path / "ix", model=tiny_model, device="cpu") as ix:
        ix.add(tmp_path / "photos")
        hits = ix.search(copy, k=3)
    assert hits[0].path == str(original)
    expected = float(reference_vector(tiny_model, original) @ reference_vector(tiny_model, copy))
    assert hits[0].score == pytest.approx(expected, abs=2e-3)


def test_preprocessing_comes_from_the_checkpoint(tmp_path: Path, tiny_model: str) -> None:
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "preprocessor_config.json").read_text())
    cfg["size"] = {"shortest_edge": 160}
    cfg["crop_size"] = {"height": 140, "width": 140}
    (model / "preprocessor_config.json").write_text(json.dumps(cfg))
    e = Dinov2Embedder(str(model), device="cpu")
    assert (e.preprocess.resize_shortest, e.preprocess.crop_height) == (160, 140)
    path = save(photo(500, 400, seed=9), tmp_path / "p.png")
    assert decode(path.read_bytes(), e.preprocess).pixels.shape == (140, 140, 3)
    assert float(embed_images(e, [path])[0] @ reference_vector(str(model), path)) >= 0.999


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        Dinov2Embedder(str(tmp_path / "no-such-model"), device="cpu")
    message = str(err.value)
    assert "cannot load model" in message and "--model" in message and "\n" not in message


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        Dinov2Embedder("facebook/dinov2-small-not-cached", device="cpu")
    assert "hf download" in str(err.value)


def test_a_non_dinov2_checkpoint_is_refused(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="not DINOv2"):
        Dinov2Embedder(str(tmp_path), device="cpu")


def test_bf16_path_agrees_with_fp32(tmp_path: Path, tiny_model: str) -> None:
    paths = [save(photo(400, 300, seed=s), tmp_path / f"{s}.jpg") for s in range(6)]
    fp32 = embed_images(Dinov2Embedder(tiny_model, device="cpu", precision="fp32"), paths)
    bf16 = embed_images(Dinov2Embedder(tiny_model, device="cpu", precision="bf16"), paths)
    assert float(np.mean(np.sum(fp32 * bf16, axis=1))) >= 0.99
