"""`GET /api/duplicates` and the /duplicates page (headless Chromium) show the groups the CLI finds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.dup_support import build
from tests.test_web_browser import page, save_screenshot  # noqa: F401  (page: Chromium on `server` below)
from tests.test_web_support import LiveServer

KEY = "dup-test-key"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path]:
    return build(tmp_path_factory.mktemp("web-dups"), tiny_model)


@pytest.fixture(scope="module")
def server(tree: tuple[Path, Path]) -> Iterator[LiveServer]:
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    with LiveServer(create_app(WebSettings(index_dir=str(tree[1])))) as s:
        yield s


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def cli_groups(index_dir: Path, env: dict[str, str], *args: str) -> list[list[int]]:
    out = json.loads(run_cli("duplicates", "--index", str(index_dir), "--json", *args, env=env, check=True).stdout)
    return [[g["keeper"]["id"]] + [d["id"] for d in g["duplicates"]] for g in out["groups"]]


def api_groups(body: dict[str, Any]) -> list[list[int]]:
    return [[g["keeper"]["id"]] + [d["id"] for d in g["duplicates"]] for g in body["groups"]]


@pytest.mark.parametrize("level", ["exact", "near", "similar"])
def test_api_returns_the_groups_of_the_cli(http: httpx.Client, tree: tuple[Path, Path], env: dict[str, str], level: str) -> None:
    top, index_dir = tree
    r = http.get("/api/duplicates", params={"level": level})
    assert r.status_code == 200, r.text
    body = r.json()
    assert api_groups(body) == cli_groups(index_dir, env, "--level", level)
    assert body["level"] == level and body["page"] == 1 and body["pages"] == 1 and body["total_groups"] == len(body["groups"])
    assert str(top) not in r.text  # file names only, never host paths
    if level == "exact":
        keeper = body["groups"][0]["keeper"]
        assert keeper["name"] == "a.jpg" and keeper["score"] == 1.0 and (keeper["width"], keeper["height"]) == (640, 480)
        assert keeper["thumbnail_url"] == f"/api/images/{keeper['id']}/thumbnail"
        assert http.get(keeper["thumbnail_url"]).headers["content-type"] == "image/jpeg"


def test_api_pages_through_the_groups(http: httpx.Client, tree: tuple[Path, Path], env: dict[str, str]) -> None:
    everything = cli_groups(tree[1], env, "--level", "exact", "--keep", "newest")
    pages = [http.get("/api/duplicates", params={"level": "exact", "keep": "newest", "per_page": 1, "page": p}).json() for p in (1, 2, 3)]
    assert [api_groups(p) for p in pages] == [everything[:1], everything[1:2], []]
    assert [p["pages"] for p in pages] == [2, 2, 2] and [g["group"] for g in pages[1]["groups"]] == [2]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"level": "exact", "threshold": "0.9"}, "threshold: a threshold does not apply to the exact level"),
        ({"level": "fuzzy"}, "level"),
        ({"threshold": "2"}, "threshold"),
        ({"keep": "path-prefix=/etc"}, "keep"),
        ({"page": "0"}, "page"),
        ({"per_page": "1000"}, "per_page"),
    ],
)
def test_api_bad_parameters_are_422(http: httpx.Client, params: dict[str, str], detail: str) -> None:
    r = http.get("/api/duplicates", params=params)
    assert r.status_code == 422 and set(r.json()) == {"detail"} and r.json()["detail"].startswith(detail), r.text


def test_api_needs_the_key_when_the_server_has_one(tree: tuple[Path, Path]) -> None:
    from fastapi.testclient import TestClient

    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    with TestClient(create_app(WebSettings(index_dir=str(tree[1]), api_key=KEY)), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/duplicates").status_code == 401
        r = c.get("/api/duplicates", params={"level": "exact"}, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        thumb = r.json()["groups"][0]["keeper"]["thumbnail_url"]
        assert "?token=" in thumb and c.get(thumb).status_code == 200  # an <img> can load it without the header


def shown_groups(pg: Any) -> list[list[int]]:
    return pg.eval_on_selector_all(
        "#groups li.group", "gs => gs.map(g => [...g.querySelectorAll('li.member')].map(m => Number(m.dataset.id)))"
    )


def test_page_shows_the_cli_groups_with_the_keeper_marked(
    page: Any, server: LiveServer, tree: tuple[Path, Path], env: dict[str, str], tmp_path: Path
) -> None:
    pg = page
    with pg.expect_response("**/api/duplicates?**") as answered:
        pg.goto(server.url + "/duplicates?level=exact&per_page=1")
    assert answered.value.status == 200
    exact = cli_groups(tree[1], env, "--level", "exact")
    pg.wait_for_selector("#groups li.group")
    assert shown_groups(pg) == exact[:1]
    keeper = pg.locator("#groups li.member").first
    assert "keeper" in (keeper.get_attribute("class") or "") and keeper.locator(".badge").text_content() == "Keeper"
    assert pg.locator("#groups li.member.keeper").count() == 1
    assert pg.text_content("#page-label") == "Page 1 of 2" and pg.is_disabled("#prev")
    assert pg.text_content("#groups h2").startswith("Group 1 · 2 images — keeper: ")

    pg.click("#next")  # paging
    pg.wait_for_function("() => document.getElementById('page-label').textContent === 'Page 2 of 2'")
    assert shown_groups(pg) == exact[1:2] and pg.is_disabled("#next")
    pg.wait_for_function("() => [...document.querySelectorAll('#groups img')].every(i => i.complete && i.naturalWidth > 0)")
    save_screenshot(pg, tmp_path, "duplicates-exact.png")

    with pg.expect_response("**/api/duplicates?level=similar**") as switched:  # the level switch
        pg.select_option("#level", "similar")
    similar = switched.value.json()
    pg.wait_for_function("() => document.getElementById('status').textContent.includes('group')")
    assert shown_groups(pg) == api_groups(similar) == cli_groups(tree[1], env, "--level", "similar")[:1]
    assert "level=similar" in pg.url
    assert pg.problems == []  # type: ignore[attr-defined]


def test_search_page_links_to_the_duplicates_page(page: Any, server: LiveServer) -> None:
    page.goto(server.url + "/")
    page.click("text=Duplicates")
    page.wait_for_selector("#groups li.group")
    assert page.url.startswith(server.url + "/duplicates?level=near&")
    page.click("text=Search by photo")
    page.wait_for_selector("#file", state="attached")
    assert page.problems == []  # type: ignore[attr-defined]
