"""Why this match: the heat map, from Python and the CLI, with the tiny random DINOv2."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinosearch.api import Index
from dinosearch.errors import ImageError, QueryError, UnknownImageError
from dinosearch.explain import grid_for, overlay
from dinosearch.query import Term
from tests.conftest import run_cli
from tests.images import photo, save, with_exif_orientation

PATCH = 14
QUERY_CROP_OFFSET = 16  # a 256x256 query: resize 256 is a no-op, the 224 centre crop starts at 16


def pasted(seed: int, *, at: tuple[int, int], source: tuple[int, int], cells: int = 4) -> tuple[Image.Image, Image.Image]:
    """A query photo, and another photo with a `cells` x `cells` patch block of the query pasted in.

    `source`: the block's (column, row) in the query's patch grid; `at`: its (column, row) in the
    result's. Both on patch boundaries, so the pasted pixels are pixel-identical model patches."""
    query = photo(256, 256, seed=100 + seed)
    result = photo(224, 224, seed=200 + seed)
    left, top = (QUERY_CROP_OFFSET + PATCH * v for v in source)
    block = query.crop((left, top, left + PATCH * cells, top + PATCH * cells))
    result.paste(block, (PATCH * at[0], PATCH * at[1]))
    return query, result


@pytest.fixture(scope="module")
def ix(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Iterator[Index]:
    with Index(tmp_path_factory.mktemp("explain") / "index", model=tiny_model, device="cpu") as index:
        yield index


@pytest.mark.parametrize("seed, at, source", [(0, (6, 3), (1, 2)), (1, (9, 11), (7, 0)), (2, (0, 12), (10, 8)), (3, (12, 0), (4, 4))])
def test_the_map_is_highest_on_the_pasted_patch(ix: Index, seed: int, at: tuple[int, int], source: tuple[int, int]) -> None:
    query, result = pasted(seed, at=at, source=source)
    ex = ix.explain(query, result)
    assert ex.heat.shape == (16, 16) and ex.heat.dtype == np.float32 and ex.method == "patches"
    row, col = np.unravel_index(int(np.argmax(ex.heat)), ex.heat.shape)
    assert at[1] <= row < at[1] + 4 and at[0] <= col < at[0] + 4, (row, col)
    inside = np.zeros_like(ex.heat, bool)
    inside[at[1] : at[1] + 4, at[0] : at[0] + 4] = True
    assert ex.heat[inside].mean() > ex.heat[~inside].mean()
    # Without the pasted block, that region is nothing special.
    plain = ix.explain(query, photo(224, 224, seed=200 + seed))
    assert plain.heat[inside].mean() < ex.heat[inside].mean()


def test_cls_method_and_its_errors(ix: Index) -> None:
    query, result = pasted(0, at=(2, 2), source=(3, 3))
    ex = ix.explain(query, result, method="cls")
    assert ex.heat.shape == (16, 16) and ex.method == "cls" and np.all(np.abs(ex.heat) <= 1.0001)
    with pytest.raises(QueryError, match="method"):
        ix.explain(query, result, method="attention")
    with pytest.raises(ImageError):
        ix.explain(query, b"not an image at all")
    with pytest.raises(UnknownImageError):
        ix.explain(Term(id=424242), result)


def test_the_overlay_covers_the_whole_upright_result(ix: Index) -> None:
    # Stored 200x120 sideways with EXIF orientation 6: upright it is 120x200, and so is the PNG.
    sideways = with_exif_orientation(photo(120, 200, seed=7), 6)
    assert Image.open(io.BytesIO(sideways)).size == (200, 120)
    ex = ix.explain(photo(256, 256, seed=1), sideways)
    assert ex.image.size == (120, 200)
    gh, gw = ex.heat.shape
    assert gh > gw and abs(gh / gw - 200 / 120) < 0.35  # the grid keeps the aspect ratio
    png = Image.open(io.BytesIO(ex.png()))
    assert png.format == "PNG" and png.size == (120, 200) and png.mode == "RGB"
    small = ix.explain(photo(256, 256, seed=1), sideways, max_side=50)
    assert max(small.image.size) == 50


def test_grid_and_overlay_shapes() -> None:
    assert grid_for(224, 224, patch=PATCH, patches=256) == (16, 16)
    h, w = grid_for(4000, 1000, patch=PATCH, patches=256)
    assert w > h and 200 <= h * w <= 300
    assert grid_for(100_000, 1, patch=PATCH, patches=256) == (1, 64)  # bounded along either axis
    heat = np.zeros((2, 2), np.float32)
    heat[0, 1] = 1.0  # top right most alike
    out = np.asarray(overlay(Image.new("RGB", (40, 40), (128, 128, 128)), heat, alpha=1.0), np.float32)
    assert out.shape == (40, 40, 3)
    assert out[5, 35].sum() > out[35, 5].sum()  # bright where alike, dark where not
    with pytest.raises(QueryError):
        overlay(Image.new("RGB", (4, 4)), heat, alpha=2.0)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> dict[str, object]:
    root = tmp_path_factory.mktemp("explain-cli")
    query, result = pasted(5, at=(4, 4), source=(2, 2))
    q, r = save(query, root / "photos" / "query.png"), save(result, root / "photos" / "result.png")
    env = {**__import__("os").environ, "DINOSEARCH_INDEX": str(root / "index"), "DINOSEARCH_MODEL": tiny_model}
    run_cli("index", str(root / "photos"), env=env, check=True)
    with Index(root / "index", create=False) as index:
        ids = {Path(index.file_of(i)["path"]).name: i for i in (1, 2)}
    return {"root": root, "query": q, "result": r, "env": env, "ids": ids}


def test_cli_writes_a_png_of_the_results_size(indexed: dict) -> None:
    root, env = indexed["root"], indexed["env"]
    out = root / "heat.png"
    proc = run_cli("explain", str(indexed["query"]), str(indexed["result"]), "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (224, 224)
    by_id = root / "by-id.png"
    ids = indexed["ids"]
    proc = run_cli("explain", "--id", str(ids["query.png"]), "--result-id", str(ids["result.png"]), "-o", str(by_id), "--method", "cls", env=env)
    assert proc.returncode == 0, proc.stderr
    with Image.open(by_id) as im:
        assert im.size == (224, 224)
    proc = run_cli("explain", str(indexed["query"]), "--result-id", str(ids["result.png"]), "--crop", "0,0,0.5,0.5", "-o", str(by_id), env=env)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["missing.jpg", "{result}"], "does not exist"),
        (["{query}", "--result-id", "999"], "no indexed image has id 999"),
        (["{query}", "{result}", "--crop", "0,0,900,900"], "outside"),
        (["{query}", "{notimage}"], "{notimage}"),
    ],
)
def test_cli_errors_are_one_line(indexed: dict, args: list[str], words: str) -> None:
    root = indexed["root"]
    (root / "notes.txt").write_text("not an image\n")
    names = {"query": str(indexed["query"]), "result": str(indexed["result"]), "notimage": str(root / "notes.txt")}
    args = [a.format(**names) for a in args]
    proc = run_cli("explain", *args, "-o", str(root / "never.png"), env=indexed["env"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and words.format(**names) in proc.stderr
    assert not (root / "never.png").exists()


def test_cli_needs_two_images(indexed: dict) -> None:
    proc = run_cli("explain", str(indexed["query"]), "-o", str(indexed["root"] / "x.png"), env=indexed["env"])
    assert proc.returncode == 2 and "QUERY RESULT" in proc.stderr
