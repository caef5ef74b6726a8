"""Why this match over HTTP and on the page: PNG heat maps by id and by upload, errors as {"detail"}."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tests.images import jpeg_bytes, photo
from tests.test_web_browser import page, save_screenshot, server, wait_images_loaded, web_index  # noqa: F401
from tests.test_web_support import ROTATED, LiveServer, ids_by_name


def png_of(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(response.content))
    assert im.format == "PNG"
    return im


def test_explain_by_id_and_by_upload(server: LiveServer, web_index: Path) -> None:  # noqa: F811
    ids = ids_by_name(web_index)
    rotated, bag = ids[Path(ROTATED).name], ids["bag-red.jpg"]
    base = f"{server.url}/api/images/{rotated}/explain"
    # The result is shown upright (stored sideways as 240x320, EXIF orientation 6): 320x240, shrunk to `size`.
    assert png_of(httpx.get(base, params={"like": bag}, timeout=60)).size == (320, 240)
    assert png_of(httpx.get(base, params={"like": bag, "size": 100, "method": "cls"}, timeout=60)).size == (100, 75)
    assert png_of(httpx.get(base, params={"like": bag, "crop": "0,0,0.5,0.5"}, timeout=60)).size == (320, 240)
    upload = {"image": ("q.jpg", jpeg_bytes(photo(300, 200, seed=3)), "image/jpeg")}
    assert png_of(httpx.post(base, files=upload, params={"size": 64}, timeout=60)).size == (64, 48)


def test_explain_errors_are_4xx_with_a_detail(server: LiveServer, web_index: Path) -> None:  # noqa: F811
    bag = ids_by_name(web_index)["bag-red.jpg"]
    api = f"{server.url}/api/images"
    jpeg = {"image": ("q.jpg", jpeg_bytes(photo(64, 64, seed=1)), "image/jpeg")}
    cases = [
        (httpx.get(f"{api}/999999/explain", params={"like": bag}), 404, "999999"),
        (httpx.get(f"{api}/{bag}/explain", params={"like": 999999}), 404, "999999"),
        (httpx.get(f"{api}/{bag}/explain"), 422, "like"),
        (httpx.get(f"{api}/{bag}/explain", params={"like": bag, "method": "attention"}), 422, "method"),
        (httpx.get(f"{api}/{bag}/explain", params={"like": bag, "size": 0}), 422, "size"),
        (httpx.get(f"{api}/{bag}/explain", params={"like": bag, "crop": "0,0,9000,9000"}), 422, "outside"),
        (httpx.post(f"{api}/999999/explain", files=jpeg), 404, "999999"),
        (httpx.post(f"{api}/{bag}/explain", files={"image": ("q.jpg", b"GIF89a broken", "image/gif")}), 422, "image"),
        (httpx.post(f"{api}/{bag}/explain", files={"image": ("q.txt", b"just text, no image\n" * 300, "text/plain")}), 415, "image"),
        (httpx.post(f"{api}/{bag}/explain", content=b"raw bytes"), 415, "multipart"),
        (httpx.post(f"{api}/{bag}/explain", data={"other": "x"}, files={"nothing": ("a", b"a")}), 422, "image"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (response.request.url, response.text)
        body = response.json()
        assert set(body) == {"detail"} and words in body["detail"], body
        assert "Traceback" not in response.text and str(web_index.parent) not in response.text


def test_the_why_toggle_overlays_the_heat_map(page: Any, tmp_path: Path) -> None:  # noqa: F811
    pg = page
    with pg.expect_response("**/api/search"):
        pg.set_input_files("#file", files=[{"name": "q.jpg", "mimeType": "image/jpeg", "buffer": jpeg_bytes(photo(320, 240, seed=0))}])
    pg.wait_for_selector("#results li.result")
    wait_images_loaded(pg)
    card = pg.locator("#results li.result").nth(1)
    with pg.expect_response(lambda r: "/explain" in r.url and r.request.method == "POST" and r.status == 200):
        card.locator("button.why").click()
    overlay = card.locator("img.why-overlay")
    overlay.wait_for()
    pg.wait_for_function("() => { const i = document.querySelector('img.why-overlay'); return i && i.complete && i.naturalWidth > 0; }")
    assert card.locator("button.why").get_attribute("aria-pressed") == "true"
    # The overlay covers the thumbnail exactly.
    thumb = card.locator("button.more img").first.bounding_box()
    box = overlay.bounding_box()
    assert thumb and box and abs(thumb["width"] - box["width"]) < 1 and abs(thumb["y"] - box["y"]) < 1
    save_screenshot(pg, tmp_path, "why-this-match.png")
    card.locator("button.why").click()
    assert card.locator("img.why-overlay").count() == 0
    assert card.locator("button.why").get_attribute("aria-pressed") == "false"

    # By an indexed id ("more like this"), the page asks with ?like=ID.
    with pg.expect_response("**/similar**"):
        pg.locator("#results li.result button.more").first.click()
    pg.wait_for_function("() => document.getElementById('query-label').textContent.startsWith('More like: ')")
    wait_images_loaded(pg)
    first = pg.locator("#results li.result").first
    with pg.expect_response(lambda r: "/explain?" in r.url and "like=" in r.url and r.status == 200):
        first.locator("button.why").click()
    first.locator("img.why-overlay").wait_for()
    assert not pg.problems, pg.problems  # type: ignore[attr-defined]
