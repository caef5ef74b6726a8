"""The search page in headless Chromium (Debian's package, driven by Playwright; no browser download).

Skips, saying why, where no Chromium is installed.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.images import jpeg_bytes, photo
from tests.test_web_support import PLAIN, PRODUCTS, ROTATED, LiveServer, shared_index

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
N_IMAGES = len(PRODUCTS) + len(PLAIN) + 1


@pytest.fixture(scope="module")
def web_index(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    return shared_index(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def server(web_index: Path) -> Iterator[LiveServer]:
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    with LiveServer(create_app(WebSettings(index_dir=str(web_index)))) as s:
        yield s


@pytest.fixture()
def page(chromium: str, server: LiveServer) -> Iterator[Any]:
    pytest.importorskip("playwright", reason="the browser test needs the `playwright` Python package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.problems = []  # type: ignore[attr-defined]
            pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))  # type: ignore[attr-defined]
            pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))  # type: ignore[attr-defined]
            pg.goto(server.url + "/")
            yield pg
        finally:
            browser.close()


def save_screenshot(pg: Any, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    if os.environ.get("DINOSEARCH_ARTIFACTS"):  # keep a copy where CI collects artefacts
        Path(os.environ["DINOSEARCH_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["DINOSEARCH_ARTIFACTS"]) / name)
    return shot


def wait_images_loaded(pg: Any) -> None:
    pg.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )


def test_upload_results_and_more_like_this(page: Any, tmp_path: Path) -> None:
    pg = page
    pg.wait_for_function(f"() => document.getElementById('stats').textContent.startsWith('{N_IMAGES} images')")

    query = jpeg_bytes(photo(320, 240, seed=0))  # bag-red.jpg's content, re-encoded
    with pg.expect_response("**/api/search") as searched:
        pg.set_input_files("#file", files=[{"name": "my-photo.jpg", "mimeType": "image/jpeg", "buffer": query}])
    api = searched.value.json()["results"]
    assert len(api) == N_IMAGES
    pg.wait_for_selector("#results li.result")
    wait_images_loaded(pg)

    # The query is shown from memory, then one card per result whose <img> src is its thumbnail_url.
    assert pg.eval_on_selector("#query-img", "i => i.src.startsWith('blob:') && i.naturalWidth > 0")
    assert pg.text_content("#query-label") == "my-photo.jpg"
    srcs = pg.eval_on_selector_all("#results li.result img", "imgs => imgs.map(i => i.getAttribute('src'))")
    assert srcs == [r["thumbnail_url"] for r in api]
    cards = pg.locator("#results li.result")
    assert cards.count() == N_IMAGES
    assert "results" in pg.text_content("#status")

    # Metadata: title as a link, price; a javascript: link is never made a link; plain photos by file name.
    red = cards.filter(has_text="Red bag")
    assert red.locator("a.title").get_attribute("href") == "https://shop.example/bag-red"
    assert red.locator(".price").text_content() == "51.00"
    shoe = cards.filter(has_text="Red shoe")
    assert shoe.locator("a").count() == 0
    assert cards.filter(has_text=Path(ROTATED).name).count() == 1
    save_screenshot(pg, tmp_path, "search-results.png")

    # Click a result: "more like this" from its stored vector.
    first_id = api[0]["id"]
    with pg.expect_response("**/similar**") as similar:
        cards.first.locator("button.more").click()
    more = similar.value.json()["results"]
    assert first_id not in [r["id"] for r in more]
    pg.wait_for_function("() => document.getElementById('query-label').textContent.startsWith('More like: ')")
    pg.wait_for_function(f"() => document.querySelectorAll('#results li.result').length === {len(more)}")
    wait_images_loaded(pg)
    assert pg.eval_on_selector_all("#results li.result img", "imgs => imgs.map(i => i.getAttribute('src'))") == [
        r["thumbnail_url"] for r in more
    ]
    save_screenshot(pg, tmp_path, "more-like-this.png")
    assert pg.problems == []  # type: ignore[attr-defined]


def test_keyboard_filters_paste_and_drop(page: Any, tmp_path: Path) -> None:
    pg = page
    query = jpeg_bytes(photo(200, 200, seed=9))
    with pg.expect_response("**/api/search"):
        pg.set_input_files("#file", files=[{"name": "q.jpg", "mimeType": "image/jpeg", "buffer": query}])
    pg.wait_for_selector("#results li.result")

    # Keyboard only: Tab to a result and press Enter for "more like this".
    pg.focus("#results li.result button.more")
    with pg.expect_response("**/similar**"):
        pg.keyboard.press("Enter")

    # A metadata value under a result becomes a filter, and the search runs again with it.
    tag = pg.locator("button.tag", has_text="colour: red").first
    with pg.expect_response(lambda r: "where=colour%3Dred" in r.url) as filtered:
        tag.click()
    names = {r["name"] for r in filtered.value.json()["results"]}
    assert names <= {"bag-red.jpg", "shoe-red.jpg"}
    assert pg.locator("#filter-list li").count() == 1
    # Typed filters too; then remove both with their buttons.
    pg.fill("#filter-input", "category=bag")
    with pg.expect_response(lambda r: "category%3Dbag" in r.url):
        pg.press("#filter-input", "Enter")
    assert pg.locator("#filter-list li").count() == 2
    for _ in range(2):
        with pg.expect_response("**/similar**"):
            pg.locator("#filter-list button.chip-remove").first.click()
    assert pg.locator("#filter-list li").count() == 0

    # Paste from the clipboard and drop a file: both search with that image.
    b64 = base64.b64encode(jpeg_bytes(photo(180, 180, seed=11))).decode()
    make_file = f"""
        const bytes = Uint8Array.from(atob('{b64}'), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'clip.jpg', {{type: 'image/jpeg'}}));
    """
    paste = "document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true}));"
    drop = "document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));"
    with pg.expect_response("**/api/search"):
        pg.evaluate(f"() => {{ {make_file} {paste} }}")
    pg.wait_for_function("() => document.getElementById('query-label').textContent === 'clip.jpg'")
    with pg.expect_response("**/api/search"):
        pg.evaluate(f"() => {{ {make_file} {drop} }}")
    pg.wait_for_function("() => document.getElementById('query-label').textContent === 'clip.jpg'")
    assert pg.problems == []  # type: ignore[attr-defined]


def test_usable_on_a_phone(chromium: str, server: LiveServer, tmp_path: Path) -> None:
    pytest.importorskip("playwright", reason="the browser test needs the `playwright` Python package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(
                viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
            )
            pg.goto(server.url + "/")
            with pg.expect_response("**/api/search"):
                query = jpeg_bytes(photo(300, 400, seed=3))
                pg.set_input_files("#file", files=[{"name": "q.jpg", "mimeType": "image/jpeg", "buffer": query}])
            pg.wait_for_selector("#results li.result")
            wait_images_loaded(pg)
            assert pg.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
            columns = pg.evaluate(
                "() => getComputedStyle(document.getElementById('results')).gridTemplateColumns.split(' ').length"
            )
            assert columns == 2
            save_screenshot(pg, tmp_path, "phone.png")
        finally:
            browser.close()
