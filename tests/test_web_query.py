"""The page and the API with negatives, regions, several photos, collapsing, history and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.images import jpeg_bytes, photo
from tests.test_web_browser import N_IMAGES, page, save_screenshot, server, wait_images_loaded, web_index  # noqa: F401
from tests.test_web_support import LiveServer


def test_api_minus_crop_within_collapse(server: LiveServer) -> None:  # noqa: F811
    base = server.url + "/api/images/1/similar"
    plain = httpx.get(base, params={"k": 50}).json()["results"]
    assert all("folded" not in r for r in plain)
    first = plain[0]["id"]
    r = httpx.get(base, params={"k": 50, "minus": first})
    assert r.status_code == 200 and first not in {x["id"] for x in r.json()["results"]}
    groups = httpx.get(base, params={"k": 50, "collapse": "2"}).json()["results"]
    assert len(groups) == 1 and len(groups[0]["folded"]) == len(plain) - 1  # everything is within distance 2
    best = plain[0]["score"]
    near = httpx.get(base, params={"k": 50, "within": "0.001"}).json()["results"]
    assert near and all(x["score"] >= best - 0.001 for x in near)
    region = httpx.get(base, params={"crop": "0.25,0.25,0.5,0.5"})
    assert region.status_code == 200 and 1 not in {x["id"] for x in region.json()["results"]}
    for params, status, words in (
        ({"crop": "0,0,5000,5000"}, 422, "outside"), ({"crop": "1,2"}, 422, "x,y,w,h"), ({"minus": "999999"}, 422, "999999"),
        ({"minus": "abc"}, 422, "whole numbers"), ({"within": "-1"}, 422, "within"), ({"collapse": "x"}, 422, "collapse"),
    ):
        r = httpx.get(base, params=params)
        assert r.status_code == status and words in r.json()["detail"], (params, r.text)
    assert httpx.get(server.url + "/api/images/999999/similar").status_code == 404

    files = [("image", ("a.jpg", jpeg_bytes(photo(200, 150, seed=s)), "image/jpeg")) for s in (1, 2)]
    two = httpx.post(server.url + "/api/search", files=files, data={"minus": str(first), "k": "50"})
    assert two.status_code == 200 and first not in {x["id"] for x in two.json()["results"]}
    five = [("image", (f"{s}.jpg", jpeg_bytes(photo(64, 64, seed=s)), "image/jpeg")) for s in range(5)]
    assert httpx.post(server.url + "/api/search", files=five).status_code == 422


def ids_shown(pg: Any) -> list[int]:
    return pg.eval_on_selector_all("#results li.result", "cs => cs.length") and [
        int(x) for x in pg.eval_on_selector_all("#results li.result img", "imgs => imgs.map(i => i.getAttribute('src').split('/')[3])")
    ]


def test_page_flows(page: Any, tmp_path: Path) -> None:  # noqa: F811
    pg = page
    pg.set_viewport_size({"width": 1280, "height": 800})
    pg.wait_for_function(f"() => document.getElementById('stats').textContent.startsWith('{N_IMAGES} images')")
    with pg.expect_response("**/api/search"):
        pg.set_input_files("#file", files=[{"name": "my-photo.jpg", "mimeType": "image/jpeg", "buffer": jpeg_bytes(photo(320, 240, seed=0))}])
    pg.wait_for_selector("#results li.result")
    wait_images_loaded(pg)
    # Results in view at 1280x800, the score labelled, no spinner left behind.
    pg.wait_for_function("() => document.querySelector('#results li.result').getBoundingClientRect().bottom <= innerHeight")
    assert pg.text_content("#results li.result .score").startswith("similarity ")
    assert pg.is_hidden("#spinner")
    save_screenshot(pg, tmp_path, "results-in-view.png")

    # More like this: the URL names the indexed id, so it can be shared.
    with pg.expect_response("**/similar**"):
        pg.locator("#results li.result button.more").first.click()
    pg.wait_for_function("() => new URLSearchParams(location.search).get('id') !== null")
    query_id = int(pg.evaluate("new URLSearchParams(location.search).get('id')"))
    pg.wait_for_function("() => document.getElementById('query-label').textContent.startsWith('More like: ')")
    wait_images_loaded(pg)
    before = ids_shown(pg)

    # Less like this on the first card: a negative query, in the URL too.
    avoid = before[0]
    with pg.expect_response(lambda r: "/similar" in r.url and f"minus={avoid}" in r.url):
        pg.locator("#results li.result button.less").first.click()
    pg.wait_for_function(f"() => new URLSearchParams(location.search).getAll('minus').includes('{avoid}')")
    pg.wait_for_function(f"() => ![...document.querySelectorAll('#results li.result img')].some(i => i.getAttribute('src').split('/')[3] === '{avoid}')")
    assert "less like image" in pg.text_content("#minus-list")
    save_screenshot(pg, tmp_path, "less-like-this.png")

    # Draw a box with the mouse on the query image: the search re-runs on the region.
    frame = pg.locator("#query-img").bounding_box()
    with pg.expect_response(lambda r: "/similar" in r.url and "crop=" in r.url):
        pg.mouse.move(frame["x"] + 5, frame["y"] + 5)
        pg.mouse.down()
        pg.mouse.move(frame["x"] + frame["width"] * 0.6, frame["y"] + frame["height"] * 0.6, steps=5)
        pg.mouse.up()
    assert pg.is_visible("#box")
    save_screenshot(pg, tmp_path, "region-box.png")
    # And with the keyboard: Escape clears the box, arrows draw one, Enter searches.
    pg.focus("#query-frame")
    with pg.expect_response(lambda r: "/similar" in r.url and "crop=" not in r.url):
        pg.keyboard.press("Escape")
    with pg.expect_response(lambda r: "/similar" in r.url and "crop=0.3000" in r.url):
        pg.keyboard.press("ArrowRight")
        pg.keyboard.press("Enter")

    # Back walks the searches in reverse, ending at the upload, kept in memory.
    for _ in range(4):  # keyboard box, whole image, mouse box, less like this
        pg.go_back()
    pg.wait_for_function(f"() => new URLSearchParams(location.search).get('id') === '{query_id}' && !location.search.includes('minus')")
    pg.wait_for_function(f"() => document.querySelectorAll('#results li.result').length === {len(before)}")
    pg.go_back()
    pg.wait_for_function("() => document.getElementById('query-label').textContent === 'my-photo.jpg'")
    pg.wait_for_function("() => document.getElementById('spinner').hidden")

    # Add a photo: the query becomes both.
    with pg.expect_response(lambda r: r.url.endswith("/api/search") and r.status == 200):
        pg.set_input_files("#add-file", files=[{"name": "second.jpg", "mimeType": "image/jpeg", "buffer": jpeg_bytes(photo(320, 240, seed=4))}])
    pg.wait_for_function("() => document.getElementById('query-label').textContent === 'my-photo.jpg + second.jpg'")
    pg.wait_for_function("() => document.getElementById('spinner').hidden")

    # A failed upload leaves no old results and no broken query image; the error takes their place.
    with pg.expect_response(lambda r: r.url.endswith("/api/search") and r.status != 200) as failed:
        pg.set_input_files("#file", files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"just some text, not a photo"}])
    assert failed.value.status == 415
    pg.wait_for_function("() => document.getElementById('status').classList.contains('error')")
    assert pg.locator("#results li.result").count() == 0 and pg.is_hidden("#query")
    assert "not a supported image" in pg.text_content("#status")
    save_screenshot(pg, tmp_path, "upload-error.png")
    # The browser logs the 415 itself; nothing else went wrong on the page.
    assert [p for p in pg.problems if "status of 415" not in p] == []  # type: ignore[attr-defined]
