"""Limits, the API key and the bind rules, against a real uvicorn on loopback and through TestClient."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.images import jpeg_bytes, photo
from tests.test_web_support import LiveServer, ids_by_name, raw_request, shared_index

KEY = "correct horse battery staple"
LIMIT = 256 * 1024  # a small body cap, so the over-limit bodies stay small too


@pytest.fixture(scope="module")
def web_index(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    return shared_index(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def server(web_index: Path) -> Iterator[LiveServer]:
    """A real server with an API key, a 256 kB body cap and a 0.1 MP pixel cap."""
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    app = create_app(WebSettings(index_dir=str(web_index), api_key=KEY, max_body_bytes=LIMIT, max_pixels=100_000))
    with LiveServer(app) as s:
        yield s


@pytest.fixture()
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


AUTH = {"Authorization": f"Bearer {KEY}"}


def small_jpeg(seed: int = 1) -> bytes:
    return jpeg_bytes(photo(200, 150, seed=seed))


# API key ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY},
     {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY[:-1]}"}],
    ids=["none", "wrong", "basic", "no-scheme", "longer", "empty", "prefix"],
)
def test_every_api_route_needs_the_key(http: httpx.Client, web_index: Path, headers: dict[str, str]) -> None:
    image_id = next(iter(ids_by_name(web_index).values()))
    calls = [
        ("GET", "/api/stats", {}),
        ("GET", f"/api/images/{image_id}/similar", {}),
        ("GET", f"/api/images/{image_id}/thumbnail", {}),
        ("GET", f"/api/images/{image_id}", {}),
        ("GET", "/api/images/999999", {}),  # no probing for which ids exist
        ("POST", "/api/search", {"files": {"image": ("q.jpg", small_jpeg(), "image/jpeg")}}),
    ]
    for method, path, extra in calls:
        r = http.request(method, path, headers=headers, **extra)
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers["www-authenticate"] == "Bearer" and set(r.json()) == {"detail"}


def test_with_the_key_everything_works_and_images_get_signed_urls(http: httpx.Client, web_index: Path) -> None:
    assert http.get("/api/stats", headers=AUTH).status_code == 200
    assert http.get("/api/stats", headers={"Authorization": f"bearer   {KEY}"}).status_code == 200
    r = http.post("/api/search", headers=AUTH, files={"image": ("q.jpg", small_jpeg(), "image/jpeg")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert "?token=" in first["thumbnail_url"] and "?token=" in first["image_url"]
    # An <img> cannot send the header: the signed URL alone fetches that one image.
    assert http.get(first["thumbnail_url"]).status_code == 200
    assert http.get(first["image_url"]).status_code == 200
    token = first["thumbnail_url"].split("?token=")[1]
    image_token = first["image_url"].split("?token=")[1]
    # ... and nothing else: not another id, not the other kind, not a tampered token, not other routes.
    assert http.get(f"/api/images/{second['id']}/thumbnail?token={token}").status_code == 401
    assert http.get(f"/api/images/{first['id']}?token={token}").status_code == 401
    assert http.get(f"/api/images/{first['id']}/thumbnail?token={image_token}").status_code == 401
    tampered = token[:-1] + ("1" if token[-1] == "0" else "0")  # always a different last character
    assert http.get(f"/api/images/{first['id']}/thumbnail?token={tampered}").status_code == 401
    assert http.get(f"/api/images/{first['id']}/similar?token={token}").status_code == 401
    assert http.get(f"/api/stats?token={token}").status_code == 401


def test_signed_tokens_expire() -> None:
    from dinosearch.web.auth import check_token, sign

    now = 1_700_000_000.0
    token = sign(KEY, "thumbnail", 5, now=now)
    assert check_token(KEY, "thumbnail", 5, token, now=now + 23 * 3600)
    assert not check_token(KEY, "thumbnail", 5, token, now=now + 26 * 3600)
    assert not check_token("another key", "thumbnail", 5, token, now=now)
    assert not check_token(KEY, "thumbnail", 5, "99999999999999.abc", now=now)
    assert not check_token(KEY, "thumbnail", 5, "garbage", now=now)


def test_page_and_health_are_public(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get("/").status_code == 200


# traversal on the wire ------------------------------------------------------------------------
def test_raw_traversal_paths_on_the_wire(server: LiveServer, web_index: Path) -> None:
    """Unnormalised request targets, as a hostile client sends them (clients like httpx would clean them up)."""
    targets = [
        b"/api/images/../../../../etc/passwd",
        b"/api/images/1/../../../../../etc/passwd",
        b"/api/images/1/thumbnail/../../../../etc/passwd",
        b"/api/images/%2e%2e/%2e%2e/etc/passwd",
        b"/api/images//etc/passwd",
        b"/api/images/1%00/thumbnail",
        b"//etc/passwd",
        b"/static/../app.py",
        b"/static/..%2f..%2fapp.py",
        b"/static/%2e%2e/%2e%2e/api.py",
        b"/static//etc/passwd",
        b"/static/../../index/catalogue.sqlite3",
        b"/api/images/" + str(web_index / "catalogue.sqlite3").encode(),
    ]
    for target in targets:
        request = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode()
        status, data = raw_request(server.port, request + b"\r\nConnection: close\r\n\r\n")
        assert status in (400, 404, 422), (target, status)
        assert b"root:" not in data and b"import " not in data and b"SQLite format" not in data
        assert str(web_index).encode() not in data


# body cap --------------------------------------------------------------------------------------
def test_body_over_the_limit_with_content_length_is_413(http: httpx.Client) -> None:
    big = b"\xff\xd8" + b"\0" * (LIMIT + 10)
    r = http.post("/api/search", headers=AUTH, files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_declared_length_over_the_limit_is_refused_before_the_body_is_read(server: LiveServer) -> None:
    head = (
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: 5000000000\r\n\r\n"
    )
    started = time.monotonic()
    status, data = raw_request(server.port, head + b"--xx\r\n")  # 5 GB announced, a few bytes sent
    assert status == 413 and b'"detail"' in data
    assert time.monotonic() - started < 5


def test_streamed_body_without_content_length_is_cut_at_the_limit(server: LiveServer) -> None:
    """Chunked transfer: no Content-Length to check, so the bytes are counted as they arrive."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b"--xx\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(64):  # up to 4 MB, 16x the cap; the server stops reading long before
            sent += 65536
            yield b"\0" * 65536

    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=xx"}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/api/search", content=body(), headers=headers)
        assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
        assert r.status_code == 413 and "limit" in r.json()["detail"]
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server answered and closed mid-upload; the raw test below reads that answer
    # Same over a raw socket: read the answer while the upload is still going.
    preamble = b"--xx\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
    chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
    head = (
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=xx\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    first = f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n"
    status, data = raw_request(server.port, head + first + chunk * 8)  # 512 kB, twice the cap, then silence
    assert status == 413 and b"limit" in data


def test_body_cap_through_testclient(web_index: Path) -> None:
    from fastapi.testclient import TestClient

    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    app = create_app(WebSettings(index_dir=str(web_index), max_body_bytes=LIMIT, decode_workers=0))
    with TestClient(app, base_url="http://localhost") as c:
        over = c.post("/api/search", files={"image": ("a.jpg", b"\0" * (LIMIT + 1), "image/jpeg")})
        assert over.status_code == 413

        def stream() -> Iterator[bytes]:
            yield b"--xx\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
            for _ in range(8):
                yield b"\0" * 65536

        streamed = c.post("/api/search", content=stream(), headers={"Content-Type": "multipart/form-data; boundary=xx"})
        assert streamed.status_code == 413 and set(streamed.json()) == {"detail"}


# pixel cap -------------------------------------------------------------------------------------
def test_image_over_the_pixel_cap_is_413(http: httpx.Client) -> None:
    # 400x300 = 0.12 MP, over this server's 0.1 MP cap, yet a small file: checked from the header.
    r = http.post("/api/search", headers=AUTH, files={"image": ("wide.jpg", jpeg_bytes(photo(400, 300)), "image/jpeg")})
    assert r.status_code == 413 and "MP" in r.json()["detail"]
    png = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(png, "PNG")  # 100 MP in ~15 kB: a decompression bomb
    assert len(png.getvalue()) < LIMIT
    r = http.post("/api/search", headers=AUTH, files={"image": ("bomb.png", png.getvalue(), "image/png")})
    assert r.status_code == 413


# no tracebacks, no host paths ------------------------------------------------------------------
def test_internal_errors_are_plain_json(web_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from dinosearch.errors import DinosearchError
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    app = create_app(WebSettings(index_dir=str(web_index), decode_workers=0))
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        def broken() -> None:
            raise DinosearchError(f"could not read {web_index}/vectors-1.faiss")

        monkeypatch.setattr(app.state.engine.index, "stats", broken)
        r = c.get("/api/stats")
        assert r.status_code == 500 and r.json() == {"detail": "internal error; see the server log"}
        assert str(web_index) not in r.text


# binding rules ---------------------------------------------------------------------------------
def test_serve_refuses_a_public_bind_without_a_key(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "DINOSEARCH_API_KEY"}
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        proc = run_cli("serve", "--host", host, "--port", "1", env=env, timeout=60)
        assert proc.returncode == 1 and "--api-key" in proc.stderr, proc.stderr


def test_bind_rules() -> None:
    from dinosearch.errors import DinosearchError
    from dinosearch.settings import WebSettings, allowed_host_names, check_bind, normalise_host

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None, False)
    check_bind("0.0.0.0", "key", False)
    check_bind("0.0.0.0", None, True)
    with pytest.raises(DinosearchError):
        check_bind("0.0.0.0", None, False)
    names = allowed_host_names(WebSettings(index_dir="x", host="192.168.1.10", allowed_hosts=("photos.lan",)))
    assert names is not None and {"127.0.0.1", "localhost", "::1", "192.168.1.10", "photos.lan"} <= names
    assert "evil.example" not in names
    assert allowed_host_names(WebSettings(index_dir="x", allowed_hosts=("*",))) is None
    assert normalise_host("[::1]:8000") == "::1" and normalise_host("Example.COM.:80") == "example.com"
    assert normalise_host("a:b:c") == "a:b:c" and normalise_host("host:") is None and normalise_host("a/b") is None


def test_uploads_never_touch_the_disk(web_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette spools file parts over 1 MB to a temporary file; ours must stay in memory."""
    import tempfile

    from fastapi.testclient import TestClient

    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    def no_disk(self: object, *a: object, **k: object) -> None:
        raise AssertionError("an upload was spooled to disk")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", no_disk)
    noise = np.random.default_rng(0).integers(0, 255, (900, 900, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    assert len(buf.getvalue()) > 2 * 1024 * 1024
    app = create_app(WebSettings(index_dir=str(web_index), decode_workers=0))
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post("/api/search", files={"image": ("noise.png", buf.getvalue(), "image/png")}, data={"k": "1"})
        assert r.status_code == 200, r.text
