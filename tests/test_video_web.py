"""Video frames over HTTP and on the page: frame thumbnails, the video served with Range, a link at the time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("av")

from tests.images import jpeg_bytes, photo, save  # noqa: E402
from tests.test_web_browser import CHROMIUM_ARGS  # noqa: E402
from tests.test_web_support import LiveServer  # noqa: E402
from tests.videos import make_video, stills  # noqa: E402


@pytest.fixture(scope="module")
def video_index(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path]:
    from dinosearch.api import Index
    from dinosearch.records import VideoOptions

    lib = tmp_path_factory.mktemp("video-lib")
    a, b, c = stills(3)
    video = make_video(lib / "scenes.webm", [(0.0, a), (2.0, b), (4.0, c)], seconds=6, codec="libvpx-vp9")
    save(photo(160, 120, seed=7), lib / "photo.jpg")
    index_dir = tmp_path_factory.mktemp("video-index")
    with Index(index_dir, model=tiny_model, device="cpu", workers=1) as ix:
        ix.add(lib, video=VideoOptions(interval=2.0))
    return index_dir, video


@pytest.fixture(scope="module")
def server(video_index: tuple[Path, Path]) -> Iterator[LiveServer]:
    from dinosearch.settings import WebSettings
    from dinosearch.web.app import create_app

    with LiveServer(create_app(WebSettings(index_dir=str(video_index[0])))) as s:
        yield s


def still_b() -> bytes:
    return jpeg_bytes(stills(3)[1], quality=95)


def test_api_frame_hit_thumbnail_and_ranges(server: LiveServer, video_index: tuple[Path, Path]) -> None:
    import httpx

    video = video_index[1]
    with httpx.Client(base_url=server.url) as http:
        found = http.post("/api/search", files={"image": ("b.jpg", still_b(), "image/jpeg")}).json()["results"]
        top = found[0]
        assert top["name"] == "scenes.webm" and 2.0 <= top["timestamp"] < 4.0
        assert [r["timestamp"] for r in found if r["name"] == "photo.jpg"] == [None]
        thumb = http.get(top["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content[:3] == b"\xff\xd8\xff"

        whole = http.get(top["image_url"])
        assert whole.status_code == 200 and whole.headers["content-type"] == "video/webm"
        assert whole.headers["accept-ranges"] == "bytes" and whole.content == video.read_bytes()
        size = video.stat().st_size
        part = http.get(top["image_url"], headers={"Range": "bytes=10-109"})
        assert part.status_code == 206 and part.content == video.read_bytes()[10:110]
        assert part.headers["content-range"] == f"bytes 10-109/{size}"
        tail = http.get(top["image_url"], headers={"Range": "bytes=-20"})
        assert tail.status_code == 206 and tail.content == video.read_bytes()[-20:]
        outside = http.get(top["image_url"], headers={"Range": f"bytes={size}-"})
        assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{size}"


def test_page_shows_the_time_and_plays_the_video_there(chromium: str, server: LiveServer) -> None:
    pytest.importorskip("playwright", reason="the browser test needs the `playwright` Python package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            pg: Any = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            pg.on("pageerror", lambda e: problems.append(str(e)))
            pg.goto(server.url + "/")
            with pg.expect_response("**/api/search") as searched:
                pg.set_input_files("#file", files=[{"name": "b.jpg", "mimeType": "image/jpeg", "buffer": still_b()}])
            top = searched.value.json()["results"][0]
            card = pg.locator("#results li.result").first
            card.wait_for()
            seconds = top["timestamp"]
            assert card.locator(".time").text_content() == f"00:{int(seconds):02d}.{int(round(seconds * 10)) % 10}"
            link = card.locator("a.play")
            assert link.get_attribute("href").endswith(f"#t={seconds:g}")
            link.click()
            # The <video> element opened at the frame's time (the browser fetched it with Range requests).
            pg.wait_for_function("() => { const v = document.querySelector('#results video'); return v && v.readyState >= 1; }")
            start = pg.evaluate("() => document.querySelector('#results video').currentTime")
            assert seconds - 0.05 <= start <= seconds + 1.0
            assert problems == []
        finally:
            browser.close()
