"""The predicted label on the search page and in the JSON API, when the index has labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dinosearch.api import Index
from tests.images import jpeg_bytes, photo, save
from tests.test_web_browser import CHROMIUM_ARGS
from tests.test_web_support import LiveServer, ids_by_name, shared_index


@pytest.fixture(scope="module")
def labelled_index(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    root = tmp_path_factory.mktemp("pets")
    for i in range(3):
        save(photo(160, 120, seed=i), root / "cats" / f"c{i}.jpg")
        save(photo(160, 120, seed=10 + i), root / "dogs" / f"d{i}.jpg")
    directory = root.parent / (root.name + "-index")
    with Index(directory, model=tiny_model, device="cpu") as ix:
        ix.add(root, label_from_folder=True)
    return directory


def _app(index_dir: Path) -> Any:
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    return create_app(WebSettings(index_dir=str(index_dir)))


def test_search_and_similar_carry_the_prediction(labelled_index: Path) -> None:
    with TestClient(_app(labelled_index), base_url="http://127.0.0.1:8000") as client:
        r = client.post("/api/search", files={"image": ("q.jpg", jpeg_bytes(photo(160, 120, seed=1)), "image/jpeg")})
        assert r.status_code == 200
        body = r.json()
        pred = body["prediction"]
        with Index(labelled_index) as ix:
            (expected,) = ix.label(jpeg_bytes(photo(160, 120, seed=1)))
        assert pred["by"] == "label" and pred["label"] == expected.value
        assert [v["value"] for v in pred["labels"]] == [v.value for v in expected.labels][:3]
        assert pred["labels"][0]["confidence"] == pytest.approx(expected.labels[0].confidence, abs=1e-6)

        cat = ids_by_name(labelled_index)["c0.jpg"]
        r = client.get(f"/api/images/{cat}/similar?k=3")
        assert r.status_code == 200 and r.json()["prediction"]["label"] in ("cats", "dogs")
        with Index(labelled_index) as ix:
            path = ix.file_of(cat)["path"]
            assert r.json()["prediction"]["label"] == ix.label(path)[0].value  # itself left out, as by id


def test_no_prediction_field_without_labels(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> None:
    index_dir = shared_index(tmp_path_factory, tiny_model)
    with TestClient(_app(index_dir), base_url="http://127.0.0.1:8000") as client:
        r = client.post("/api/search", files={"image": ("q.jpg", jpeg_bytes(photo(160, 120, seed=1)), "image/jpeg")})
        assert r.status_code == 200 and set(r.json()) == {"results"}


@pytest.fixture()
def labelled_page(chromium: str, labelled_index: Path) -> Iterator[Any]:
    pytest.importorskip("playwright", reason="the browser test needs the `playwright` Python package")
    from playwright.sync_api import sync_playwright

    with LiveServer(_app(labelled_index)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page()
            pg.goto(server.url + "/")
            yield pg
        finally:
            browser.close()


def test_page_shows_the_predicted_label(labelled_page: Any) -> None:
    pg = labelled_page
    assert pg.is_hidden("#prediction")
    with pg.expect_response("**/api/search") as searched:
        pg.set_input_files("#file", files=[{"name": "q.jpg", "mimeType": "image/jpeg", "buffer": jpeg_bytes(photo(160, 120, seed=11))}])
    pred = searched.value.json()["prediction"]
    pg.wait_for_function("() => !document.getElementById('prediction').hidden")
    text = pg.text_content("#prediction")
    assert text.startswith(f"Predicted label: {pred['label']} (")
    assert f"{round(pred['labels'][0]['confidence'] * 100)}%" in text
