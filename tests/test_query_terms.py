"""Query arithmetic, regions, the relative cut-off and collapsing: the pure parts, on constructed data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dinosearch.errors import QueryError
from dinosearch.query import NEGATIVE_WEIGHT, combine, parse_term, query_terms
from dinosearch.records import Hit, Preprocess
from dinosearch.refine import collapse, refined, within
from dinosearch.region import Crop, crop_box, decode_region, parse_crop

from .images import with_exif_orientation


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, np.float32)
    return v / np.linalg.norm(v)


def test_weighted_positives_minus_negatives_by_hand() -> None:
    a, b, c, d = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1), unit(1, 1, 0)
    got = combine([a, b], weights=[2, 1], negatives=[c, d], negative_weights=[1, 3])
    # By hand: positives (2a + b) / 3 = (2/3, 1/3, 0); negatives (c + 3d) / 4 = (3/4 * 0.7071, same, 1/4).
    s = 0.75 / np.sqrt(2)
    raw = np.array([2 / 3 - NEGATIVE_WEIGHT * s, 1 / 3 - NEGATIVE_WEIGHT * s, -NEGATIVE_WEIGHT * 0.25])
    assert np.allclose(got, raw / np.linalg.norm(raw), atol=1e-6)
    assert np.isclose(np.linalg.norm(got), 1.0)
    # Without weights or negatives: the normalised mean, as before.
    assert np.allclose(combine([a, b]), unit(1, 1, 0), atol=1e-6)


def test_bad_weights_and_cancelling_queries_are_clear_errors() -> None:
    a = unit(1, 0)
    with pytest.raises(QueryError, match="weights must be numbers > 0"):
        combine([a], weights=[0])
    with pytest.raises(QueryError, match="cancel out"):
        combine([a], negatives=[a], negative_weight=1.0)
    with pytest.raises(QueryError, match="at least one image"):
        combine([], negatives=[a])


def test_command_line_terms(tmp_path) -> None:
    assert (parse_term("2:a.jpg").image, parse_term("2:a.jpg").weight) == ("a.jpg", 2.0)
    assert (parse_term("0.5:b.jpg", negative=True).weight, parse_term("0.5:b.jpg", negative=True).negative) == (0.5, True)
    assert parse_term("https://example.com/a.jpg").image == "https://example.com/a.jpg"
    odd = tmp_path / "3:x.jpg"
    odd.write_bytes(b"")
    assert parse_term(str(odd)).weight == 1.0  # an existing file is a file, whatever its name
    terms = query_terms(["a.jpg"], ids=[4], minus=["2:c.jpg"], minus_ids=[9])
    assert [(t.image, t.id) for t in terms.positives] == [("a.jpg", None), (None, 4)]
    assert [(t.image, t.id, t.weight, t.negative) for t in terms.negatives] == [("c.jpg", None, 2.0, True), (None, 9, 1.0, True)]
    assert query_terms([], ids=[4], crop="0,0,0.5,0.5").positives[0].crop == Crop(0, 0, 0.5, 0.5)
    with pytest.raises(QueryError, match="exactly one"):
        query_terms(["a.jpg", "b.jpg"], crop="0,0,1,1")


def test_crop_in_pixels_and_fractions_and_out_of_bounds() -> None:
    assert crop_box(parse_crop("10,20,30,40"), 100, 80) == (10, 20, 40, 60)
    assert crop_box(parse_crop("0.5, 0.25, 0.5, 0.5"), 100, 80) == (50, 20, 100, 60)
    assert crop_box(parse_crop("0,0,1,1"), 100, 80) == (0, 0, 100, 80)  # all <= 1: fractions, the whole image
    with pytest.raises(QueryError, match="outside the 100x80 image"):
        crop_box(parse_crop("90,0,20,10"), 100, 80)
    with pytest.raises(QueryError, match="outside"):
        crop_box(parse_crop("0.6,0,0.5,0.5"), 100, 80)
    for bad in ("1,2,3", "a,b,c,d", "-1,0,5,5", "0,0,0,5", "nan,0,1,1"):
        with pytest.raises(QueryError, match="crop"):
            parse_crop(bad)


def test_crop_coordinates_are_those_of_the_upright_image() -> None:
    # Upright: 120 wide x 80 high, left half red, right half blue; stored rotated with EXIF orientation 6.
    upright = Image.new("RGB", (120, 80), (220, 20, 20))
    upright.paste((20, 20, 220), (60, 0, 120, 80))
    data = with_exif_orientation(upright, 6)
    pre = Preprocess(0, 16, 16, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    right = decode_region(data, pre, parse_crop("0.5,0,0.5,1"))
    assert (right.width, right.height) == (120, 80)
    r, g, b = right.pixels.reshape(-1, 3).mean(axis=0)
    assert b > 150 and r < 80  # the right half as a viewer sees it: blue
    left = decode_region(data, pre, parse_crop("0,0,60,80"))
    assert left.pixels.reshape(-1, 3).mean(axis=0)[0] > 150
    with pytest.raises(QueryError, match="120x80"):
        decode_region(data, pre, parse_crop("0,0,80,120"))  # fits the stored 80x120, not the upright image


def hits(*scores: float) -> list[Hit]:
    return [Hit(i + 1, i + 1, s, f"/p/{i + 1}.jpg") for i, s in enumerate(scores)]


def test_within_keeps_scores_near_the_best() -> None:
    got = within(hits(0.90, 0.86, 0.85, 0.70), 0.05)
    assert [h.id for h in got] == [1, 2, 3]
    assert within([], 0.1) == []
    assert [h.id for h in within(hits(0.9, 0.9), 0.0)] == [1, 2]


def test_collapse_folds_near_identical_hits_into_the_better_one() -> None:
    vectors = {1: unit(1, 0, 0), 2: unit(1, 0.01, 0), 3: unit(0, 1, 0), 4: unit(1, 0, 0.02), 5: unit(0, 1, 0.01)}
    got = collapse(hits(0.9, 0.89, 0.8, 0.79, 0.7), vectors.get, 0.01)
    assert [(h.rank, h.id, h.folded) for h in got] == [(1, 1, (2, 4)), (2, 3, (5,))]
    assert [h.id for h in collapse(hits(0.9, 0.89), vectors.get, 0.0)] == [1, 2]  # nothing is that close
    assert collapse(hits(0.9, 0.89), vectors.get, 0.0)[0].to_dict()["folded"] == []
    assert "folded" not in hits(0.9)[0].to_dict()  # the old shape when not collapsing


def test_refined_asks_for_more_until_k_groups() -> None:
    # Ten copies of one image, then distinct ones: collapsing needs to look past the first k.
    vectors = {i: np.eye(20, dtype=np.float32)[0] for i in range(1, 11)} | {i: np.eye(20, dtype=np.float32)[i] for i in range(11, 20)}
    pool = hits(*[1.0 - i * 0.01 for i in range(19)])
    asked: list[int] = []

    def ranked(n: int) -> list[Hit]:
        asked.append(n)
        return pool[:n]

    got = refined(ranked, k=3, collapse_threshold=0.001, vector_of=vectors.get)
    assert [h.id for h in got] == [1, 11, 12] and len(got[0].folded) == 9
    assert asked == [3, 12]
    assert [h.id for h in refined(ranked, k=3, within_distance=0.015)] == [1, 2]
    with pytest.raises(QueryError):
        refined(ranked, k=3, within_distance=-1)
