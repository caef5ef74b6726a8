"""The HTTP API, each test run twice: through TestClient and against a real uvicorn on loopback."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.images import jpeg_bytes, photo
from tests.test_web_support import PRODUCTS, ROTATED, LiveServer, copy_index, ids_by_name, shared_index

RESULT_FIELDS = {"rank", "id", "score", "name", "metadata", "thumbnail_url", "image_url", "timestamp"}


@pytest.fixture(scope="module")
def web_index(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    return shared_index(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def ids(web_index: Path) -> dict[str, int]:
    return ids_by_name(web_index)


@pytest.fixture(scope="module", params=["testclient", "uvicorn"])
def client(request: pytest.FixtureRequest, web_index: Path) -> Iterator[httpx.Client]:
    from fastapi.testclient import TestClient

    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    app = create_app(WebSettings(index_dir=str(web_index)))
    if request.param == "testclient":
        with TestClient(app, base_url="http://127.0.0.1:8000") as c:
            c.web_app = app  # type: ignore[attr-defined]
            c.port = None  # type: ignore[attr-defined]
            yield c
    else:
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
            c.web_app = app  # type: ignore[attr-defined]
            c.port = server.port  # type: ignore[attr-defined]
            yield c


def upload(client: httpx.Client, data: bytes, *, name: str = "q.jpg", fields: Any = None) -> httpx.Response:
    return client.post("/api/search", files={"image": (name, data, "application/octet-stream")}, data=fields or {})


def assert_clean(response: httpx.Response, web_index: Path) -> None:
    """An error is JSON {"detail": str} and says nothing about the host: no paths, no traceback."""
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    text = response.text
    assert str(web_index.parent) not in text and "Traceback" not in text and "/tmp" not in text


# health, page, docs ----------------------------------------------------------------------------
def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_page_is_served_with_its_assets(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<input type="file"' in r.text and 'name="viewport"' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        a = client.get(asset)
        assert a.status_code == 200 and kind in a.headers["content-type"]


def test_docs_and_openapi_list_the_contract(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/healthz", "/api/search", "/api/images/{image_id}/similar", "/api/images/{image_id}/thumbnail",
            "/api/images/{image_id}", "/api/stats"} <= set(spec["paths"])
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["properties"]) == {"image", "k", "where", "like", "minus", "within", "collapse"}
    assert body["required"] == ["image"]


def test_stats_as_the_cli_prints_them(client: httpx.Client, web_index: Path) -> None:
    from dinosearch.api import Index

    r = client.get("/api/stats")
    assert r.status_code == 200
    with Index(web_index, create=False) as ix:
        expected = ix.stats().to_dict()
    got = r.json()
    assert set(got) == set(expected)
    assert got["images"] == expected["images"] == len(PRODUCTS) + 3 and got["vectors"] == got["images"]
    assert got["dim"] == expected["dim"]
    assert "/" not in (got["model"] or "")  # a local checkpoint folder is named, its host path is not


# search ----------------------------------------------------------------------------------------
def test_search_by_upload(client: httpx.Client, web_index: Path) -> None:
    from dinosearch.api import Index

    query = jpeg_bytes(photo(300, 300, seed=42))
    r = upload(client, query, fields={"k": "4"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4 and all(set(x) == RESULT_FIELDS for x in results)
    assert [x["rank"] for x in results] == [1, 2, 3, 4]
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    for x in results:
        assert x["thumbnail_url"] == f"/api/images/{x['id']}/thumbnail" and x["image_url"] == f"/api/images/{x['id']}"
    assert str(web_index.parent) not in r.text  # names only, never host paths
    # The same answer as the library gives for the same bytes.
    with Index(web_index, create=False) as ix:
        hits = ix.search(query, k=4)
    assert [h.id for h in hits] == [x["id"] for x in results]
    assert np.allclose([h.score for h in hits], scores, atol=1e-4)


def test_search_default_k_and_metadata(client: httpx.Client, ids: dict[str, int], web_index: Path) -> None:
    r = upload(client, (web_index.parent / "catalogue" / "bag-red.jpg").read_bytes())
    results = r.json()["results"]
    assert len(results) == len(ids)  # default k=10 > catalogue size: everything, once
    top = results[0]
    assert top["id"] == ids["bag-red.jpg"] and top["score"] > 0.999 and top["name"] == "bag-red.jpg"
    assert top["metadata"] == {"title": "Red bag", "price": "51.00", "category": "bag", "colour": "red",
                               "link": "https://shop.example/bag-red"}
    plain = next(x for x in results if x["name"] == "beach.jpg")
    assert plain["metadata"] is None


def test_search_where_filters(client: httpx.Client, ids: dict[str, int]) -> None:
    query = jpeg_bytes(photo(200, 200, seed=7))
    red = upload(client, query, fields={"where": "colour=red"}).json()["results"]
    assert {x["name"] for x in red} == {"bag-red.jpg", "shoe-red.jpg"}
    both = upload(client, query, fields={"where": ["colour=red", "category=bag"]}).json()["results"]
    assert [x["name"] for x in both] == ["bag-red.jpg"]
    none = upload(client, query, fields={"where": "colour=purple"})
    assert none.status_code == 200 and none.json() == {"results": []}


# more like this --------------------------------------------------------------------------------
def test_similar(client: httpx.Client, ids: dict[str, int], web_index: Path) -> None:
    from dinosearch.api import Index

    me = ids["bag-blue.jpg"]
    r = client.get(f"/api/images/{me}/similar", params={"k": 3})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 3 and me not in [x["id"] for x in results]
    with Index(web_index, create=False) as ix:
        assert [h.id for h in ix.similar(me, k=3)] == [x["id"] for x in results]
    red = client.get(f"/api/images/{me}/similar", params={"where": "colour=red"}).json()["results"]
    assert {x["name"] for x in red} == {"bag-red.jpg", "shoe-red.jpg"}


# images by id ----------------------------------------------------------------------------------
def test_thumbnail_is_small_upright_cached_and_has_no_exif(client: httpx.Client, ids: dict[str, int]) -> None:
    thumbs = client.web_app.state.thumbnails  # type: ignore[attr-defined]
    r = client.get(f"/api/images/{ids['rotated.jpg']}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (256, 192)  # stored 240x320 sideways; EXIF orientation applied
    assert not im.getexif() and "exif" not in im.info and "icc_profile" not in im.info
    assert b"Exif" not in r.content[:4096]
    made = thumbs.made
    again = client.get(f"/api/images/{ids['rotated.jpg']}/thumbnail")
    assert again.content == r.content and thumbs.made == made  # from the cache
    etag = r.headers["etag"]
    assert client.get(f"/api/images/{ids['rotated.jpg']}/thumbnail", headers={"If-None-Match": etag}).status_code == 304


def test_original_file_by_id(client: httpx.Client, ids: dict[str, int], web_index: Path) -> None:
    folder = web_index.parent / "catalogue"
    for name, path, kind in (("bag-red.jpg", folder / "bag-red.jpg", "image/jpeg"),
                             ("hat-green.png", folder / "hat-green.png", "image/png"),
                             ("rotated.jpg", folder / ROTATED, "image/jpeg")):
        r = client.get(f"/api/images/{ids[name]}")
        assert r.status_code == 200 and r.content == path.read_bytes()
        assert r.headers["content-type"] == kind and "sandbox" in r.headers["content-security-policy"]
        assert "filename" not in r.headers.get("content-disposition", "")


# errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data,status",
    [
        (b"just some text, not an image", 415),
        (b"", 415),
        (b"%PDF-1.7\n" + b"0" * 100, 415),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", 415),
        (jpeg_bytes(photo(64, 64))[:200], 422),  # a truncated JPEG: an image we cannot use
    ],
    ids=["text", "empty", "pdf", "svg", "truncated"],
)
def test_search_rejects_what_is_not_a_usable_image(client: httpx.Client, web_index: Path, data: bytes, status: int) -> None:
    r = upload(client, data)
    assert r.status_code == status, r.text
    assert_clean(r, web_index)


@pytest.mark.parametrize(
    "fields",
    [{"k": "0"}, {"k": "-3"}, {"k": "abc"}, {"k": "1.5"}, {"k": "100000"}, {"k": ["2", "3"]}, {"where": "novalue"},
     {"where": "=red"}],
    ids=["k0", "kneg", "kabc", "kfloat", "khuge", "ktwice", "where-no-eq", "where-no-key"],
)
def test_search_bad_parameters_are_422(client: httpx.Client, web_index: Path, fields: dict[str, Any]) -> None:
    r = upload(client, jpeg_bytes(photo(64, 64, seed=3)), fields=fields)
    assert r.status_code == 422, r.text
    assert_clean(r, web_index)


def test_search_without_an_image(client: httpx.Client, web_index: Path) -> None:
    r = client.post("/api/search", files={"k": (None, "3")})  # multipart, but no `image` part
    assert r.status_code == 422
    assert_clean(r, web_index)
    r = client.post("/api/search", json={"image": "aGVsbG8="})
    assert r.status_code == 415
    assert_clean(r, web_index)


@pytest.mark.parametrize("query", ["k=0", "k=abc", "k=100000", "where=nokey"])
def test_similar_bad_parameters_are_422(client: httpx.Client, ids: dict[str, int], web_index: Path, query: str) -> None:
    r = client.get(f"/api/images/{ids['bag-red.jpg']}/similar?{query}")
    assert r.status_code == 422
    assert_clean(r, web_index)


@pytest.mark.parametrize("suffix", ["", "/thumbnail", "/similar"])
def test_unknown_ids_are_404(client: httpx.Client, web_index: Path, suffix: str) -> None:
    for image_id in ("999999", "0", "00", "9223372036854775808", "1" + "0" * 39):
        r = client.get(f"/api/images/{image_id}{suffix}")
        assert r.status_code == 404, (image_id, r.text)
        assert_clean(r, web_index)
    for malformed in ("-1", "-9223372036854775809", "1" + "0" * 60, "abc"):
        r = client.get(f"/api/images/{malformed}{suffix}")
        assert r.status_code == 422, (malformed, r.text)
        assert_clean(r, web_index)


TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2Fetc%2Fpasswd",
    "..%5c..%5cwindows%5cwin.ini",
    "1%00",
    "%00",
    "1%00.jpg",
    "1%2F..%2F..%2Fcatalogue.sqlite3",
    "1.0",
    "0x1",
    "1e3",
    "%20%201",
    "%E2%80%AE1",
]


@pytest.mark.parametrize("suffix", ["", "/thumbnail"])
def test_traversal_attempts_never_reach_a_file(client: httpx.Client, web_index: Path, suffix: str) -> None:
    for attempt in TRAVERSALS:
        r = client.get(f"/api/images/{attempt}{suffix}")
        assert r.status_code in (404, 422), (attempt, r.status_code)
        assert_clean(r, web_index)
        assert "root:" not in r.text


# host and origin -------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example",
                                  "127.0.0.1@evil.example", "", "[::2]:80"])
def test_wrong_host_is_refused(client: httpx.Client, web_index: Path, host: str) -> None:
    for path in ("/", "/api/stats", "/healthz"):
        r = client.get(path, headers={"Host": host})
        assert r.status_code == 400, (host, path)
        assert_clean(r, web_index)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost:1234", "LOCALHOST", "[::1]:8000"])
def test_loopback_hosts_are_accepted(client: httpx.Client, host: str) -> None:
    assert client.get("/api/stats", headers={"Host": host}).status_code == 200


def test_no_cors_by_default(client: httpx.Client) -> None:
    r = client.get("/api/stats", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)
    pre = client.options("/api/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code in (404, 405) and "access-control-allow-origin" not in pre.headers
    assert r.headers["cross-origin-resource-policy"] == "same-origin"


def test_unknown_route_is_json_404(client: httpx.Client, web_index: Path) -> None:
    r = client.get("/api/nothing-here")
    assert r.status_code == 404
    assert_clean(r, web_index)
    assert json.loads(r.text)["detail"]


def test_serve_runs_the_backend_it_was_given(web_index: Path, tmp_path: Path) -> None:
    """`serve --backend onnxruntime --precision int8`: uploads are embedded by that backend, and give the
    same answer as the library with the same backend."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dinosearch.api import Index
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    web_index = copy_index(web_index, tmp_path / "index")  # the backend writes its cache/ into it
    app = create_app(WebSettings(index_dir=str(web_index), backend="onnxruntime", precision="int8", decode_workers=0))
    query = jpeg_bytes(photo(300, 300, seed=43))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        r = upload(c, query, fields={"k": "3"})
        assert r.status_code == 200, r.text
        assert app.state.engine.index.embedder().fingerprint.precision == "onnxruntime-int8"
    with Index(web_index, create=False, backend="onnxruntime", precision="int8") as ix:
        hits = ix.search(query, k=3)
    assert [h.id for h in hits] == [x["id"] for x in r.json()["results"]]


def test_docs_page_loads_its_assets_from_this_server(client: httpx.Client) -> None:
    """Offline, /docs must still work: no CDN, every script and style from this server."""
    import re

    page = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200


@pytest.mark.parametrize(
    "disposition",
    ["form-data; name=\"image\"; filename*=UTF-8''caf%C3%A9.jpg", 'form-data; name="image"'],
    ids=["rfc5987-filename", "no-filename"],
)
def test_an_image_part_without_a_plain_filename_is_the_image(client: httpx.Client, disposition: str) -> None:
    data = jpeg_bytes(photo(320, 240, seed=5))
    boundary = "dinosearchboundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = client.post("/api/search", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200, r.text
    assert r.json()["results"]


def test_an_image_sent_as_a_text_field_says_how_to_send_it(client: httpx.Client) -> None:
    r = client.post("/api/search", files={"image": (None, "photo.jpg")})
    assert r.status_code == 422 and "file part" in r.json()["detail"]


def test_readme_documents_the_web_cap_on_k() -> None:
    from dinosearch.settings import WebSettings

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"at most {WebSettings(index_dir='x').max_k}" in readme
