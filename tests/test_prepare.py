"""Preparation options (crop mode, resolution, pooling) and register models: each one's vectors
equal a reference computed here independently; an index refuses vectors prepared another way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from dinosearch.api import Index, embed_images
from dinosearch.cli import app
from dinosearch.devmodel import DINOV2_PROCESSOR, SHAPES
from dinosearch.embed import Dinov2Embedder
from dinosearch.errors import ModelMismatchError
from tests.images import photo, save

runner = CliRunner()
MEAN, STD = np.array(DINOV2_PROCESSOR["image_mean"]), np.array(DINOV2_PROCESSOR["image_std"])


@pytest.fixture(scope="module")
def register_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random DINOv2 with 4 registers, saved as facebook/dinov2-*-with-registers are."""
    import torch
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    directory = tmp_path_factory.mktemp("tiny-registers")
    torch.manual_seed(0)
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(patch_size=14, num_register_tokens=4, **SHAPES["tiny"])).eval().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(DINOV2_PROCESSOR))
    return str(directory)


def hidden_states(model_dir: str, pixels: np.ndarray) -> "object":
    """(h, w, 3) uint8 -> the model's last hidden state (1, tokens, width), by transformers alone."""
    import torch
    from transformers import AutoModel

    x = (pixels.astype(np.float64) / 255.0 - MEAN) / STD
    t = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float32)
    with torch.inference_mode():
        return AutoModel.from_pretrained(model_dir).eval()(pixel_values=t).last_hidden_state


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def ours(model_dir: str, path: Path, **options) -> np.ndarray:
    return embed_images(Dinov2Embedder(model_dir, device="cpu", **options), [path])[0]


@pytest.fixture()
def wide(tmp_path: Path) -> Path:
    return save(photo(500, 260, seed=7), tmp_path / "wide.png")


def test_squash_is_a_plain_resize(tiny_model: str, wide: Path) -> None:
    ref = Image.open(wide).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    expected = unit(hidden_states(tiny_model, np.asarray(ref))[0, 0].numpy())
    assert float(ours(tiny_model, wide, crop_mode="squash") @ expected) >= 0.9999


def test_border_is_imageops_pad_on_the_mean_colour(tiny_model: str, wide: Path) -> None:
    mean = tuple(int(round(m * 255)) for m in MEAN)
    ref = ImageOps.pad(Image.open(wide).convert("RGB"), (280, 280), method=Image.Resampling.BICUBIC, color=mean)
    expected = unit(hidden_states(tiny_model, np.asarray(ref))[0, 0].numpy())
    got = ours(tiny_model, wide, crop_mode="border", resolution=280)
    assert float(got @ expected) >= 0.9999
    assert float(got @ ours(tiny_model, wide)) < 0.9999  # not the centre crop by accident


def test_resolution_with_centre_crop_matches_the_processor_at_that_size(tiny_model: str, wide: Path) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(tiny_model, size={"shortest_edge": 384}, crop_size={"height": 336, "width": 336})
    inputs = processor(images=Image.open(wide).convert("RGB"), return_tensors="pt")
    with torch.inference_mode():
        expected = unit(AutoModel.from_pretrained(tiny_model).eval()(**inputs).pooler_output[0].numpy())
    assert float(ours(tiny_model, wide, resolution=336) @ expected) >= 0.999


@pytest.mark.parametrize("registers", [False, True])
def test_pooling_matches_the_tokens(tiny_model: str, register_model: str, wide: Path, registers: bool) -> None:
    model = register_model if registers else tiny_model
    first_patch = 5 if registers else 1  # CLS, 4 registers, patches
    pixels = np.asarray(ImageOps.fit(Image.open(wide).convert("RGB"), (224, 224)))  # any fixed pixels will do
    save(Image.fromarray(pixels), wide.parent / "square.png")
    h = hidden_states(model, pixels)[0].numpy().astype(np.float64)
    cls, patches = h[0], h[first_patch:]
    expected = {
        "cls": unit(cls),
        "cls+mean": unit(np.concatenate([cls, patches.mean(axis=0)])),
        "gem": unit((np.maximum(patches, 1e-6) ** 3).mean(axis=0) ** (1 / 3)),
    }
    for pooling, want in expected.items():
        got = ours(model, wide.parent / "square.png", pooling=pooling, crop_mode="squash")  # 224 px: as is
        assert got.shape == want.shape and float(got @ want) >= 0.9999, pooling
    if registers:  # pooling over the registers too would be measurably different
        wrong = unit(np.concatenate([cls, h[1:].mean(axis=0)]))
        assert float(expected["cls+mean"] @ wrong) < 0.9999


def test_register_model_indexes_and_answers(register_model: str, tmp_path: Path) -> None:
    for i in range(3):
        save(photo(320, 240, seed=i), tmp_path / "p" / f"{i}.png")
    with Index(tmp_path / "ix", model=register_model, device="cpu", pooling="cls+mean") as ix:
        assert ix.add(tmp_path / "p").added == 3
        assert ix.fingerprint.dim == 2 * SHAPES["tiny"]["hidden_size"] and ix.fingerprint.pooling == "cls+mean"
        hits = ix.search(tmp_path / "p" / "0.png", k=2)
        assert len(hits) == 2 and all(h.path != str(tmp_path / "p" / "0.png") for h in hits)


def test_an_index_refuses_another_preparation_and_keeps_its_own(tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(photo(320, 240, seed=1), tmp_path / "p" / "a.png")
    query = save(photo(320, 240, seed=2), tmp_path / "q.png")
    monkeypatch.setenv("DINOSEARCH_MODEL", tiny_model)
    ixdir = str(tmp_path / "ix")
    r = runner.invoke(app, ["index", str(tmp_path / "p"), "--index", ixdir, "--crop-mode", "squash", "--pooling", "gem"])
    assert r.exit_code == 0, r.stderr
    with Index(ixdir, device="cpu") as ix:  # no options: the index's own
        ix.search(query, k=1)
        assert ix.embedder().preprocess.crop_mode == "squash" and ix.embedder().fingerprint.pooling == "gem"
    with Index(ixdir, device="cpu", crop_mode="center") as ix, pytest.raises(ModelMismatchError, match="--crop-mode squash"):
        ix.search(query, k=1)
    r = runner.invoke(app, ["index", str(tmp_path / "p"), "--index", ixdir, "--pooling", "cls"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "prepared with --crop-mode squash --resolution 224 --pooling gem, not --crop-mode squash --resolution 224 --pooling cls" in r.stderr
    r = runner.invoke(app, ["index", str(tmp_path / "p"), "--index", str(tmp_path / "new"), "--resolution", "225"])
    assert r.exit_code == 1 and "multiple of the model's patch size 14" in r.stderr and r.stderr.count("\n") == 1
    r = runner.invoke(app, ["index", str(tmp_path / "p"), "--index", str(tmp_path / "new"), "--crop-mode", "stretch"])
    assert r.exit_code == 2


def test_the_default_fingerprint_is_unchanged(tiny_model: str) -> None:
    """Indexes made before these options existed keep matching the default preparation."""
    pre = Dinov2Embedder(tiny_model, device="cpu").preprocess
    assert pre.describe() == "resize256-crop224x224-resample3-mean0.4850,0.4560,0.4060-std0.2290,0.2240,0.2250"


def test_onnxruntime_pools_alike_and_caches_each_pooling_apart(tiny_model: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    backend = "onnxruntime"  # converts the model (with its pooling) and caches the conversion
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    for pooling in ("cls", "gem", "cls+mean"):  # one cache folder: a cls conversion must not serve gem
        fast = Dinov2Embedder(tiny_model, device="cpu", backend=backend, precision="fp32", pooling=pooling, cache_dir=tmp_path)
        ref = Dinov2Embedder(tiny_model, device="cpu", pooling=pooling)
        got, want = fast.embed(pixels), ref.embed(pixels)
        assert got.shape == want.shape and float((got * want).sum(axis=1).min()) >= 0.9999, pooling
