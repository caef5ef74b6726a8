"""The model worker behind the server: micro-batching, the bounded queue (503), model failures, and
picking up a new index generation without a restart. Against a real uvicorn on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images import jpeg_bytes, photo, save
from tests.test_web_support import GatedEmbedder, LiveServer, copy_index, ids_by_name, shared_index, wait_for


@pytest.fixture(scope="module")
def web_index(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    return shared_index(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def real_embedder(tiny_model: str) -> Any:
    from dinosearch.embed import Dinov2Embedder

    return Dinov2Embedder(tiny_model, device="cpu")


def start(index_dir: Path, embedder: Any = None, **settings: Any) -> tuple[LiveServer, Any]:
    from dinosearch.api import Index
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    ix = Index(index_dir, create=False, embedder=embedder)
    app = create_app(WebSettings(index_dir=str(index_dir), **settings), index=ix)
    return LiveServer(app), ix


@pytest.fixture()
def gated(web_index: Path, real_embedder: Any) -> Iterator[tuple[LiveServer, GatedEmbedder]]:
    embedder = GatedEmbedder(real_embedder)
    server, ix = start(web_index, embedder, queue_size=4, decode_workers=0)
    with server:
        yield server, embedder
    embedder.gate.set()
    ix.close()


def post_in_thread(url: str, data: bytes, out: list[httpx.Response]) -> threading.Thread:
    def go() -> None:
        with httpx.Client(timeout=60) as c:
            out.append(c.post(f"{url}/api/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "2"}))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def fresh(seed: int) -> bytes:
    """A query that is not in the index, so it needs the model."""
    return jpeg_bytes(photo(160, 120, seed=1000 + seed))


def test_concurrent_uploads_share_a_model_batch(gated: tuple[LiveServer, GatedEmbedder]) -> None:
    server, embedder = gated
    engine = server.app.state.engine
    embedder.gate.clear()
    out: list[httpx.Response] = []
    threads = [post_in_thread(server.url, fresh(0), out)]
    assert embedder.entered.wait(20)  # the first upload holds the model...
    threads += [post_in_thread(server.url, fresh(i), out) for i in (1, 2, 3)]
    wait_for(lambda: engine.queued == 3, what="three uploads queued behind it")  # ...while three queue up
    embedder.gate.set()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in out] == [200] * 4
    assert embedder.batches == [1, 3]  # one model call for the three that waited together
    assert all(len(r.json()["results"]) == 2 for r in out)


def test_full_queue_answers_503_with_retry_after(gated: tuple[LiveServer, GatedEmbedder]) -> None:
    server, embedder = gated
    engine = server.app.state.engine
    embedder.gate.clear()
    out: list[httpx.Response] = []
    threads = [post_in_thread(server.url, fresh(10), out)]
    assert embedder.entered.wait(20)
    threads += [post_in_thread(server.url, fresh(i), out) for i in (11, 12, 13)]
    wait_for(lambda: engine.pending == 4, what="the queue to fill")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/api/search", files={"image": ("q.jpg", fresh(14), "image/jpeg")})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and set(r.json()) == {"detail"}
        # By-id routes and indexed files (same bytes: stored vector) don't need the model: still served.
        assert c.get("/api/stats").status_code == 200
        assert c.get("/healthz").status_code == 200
    embedder.gate.set()
    for t in threads:
        t.join(30)
    assert sorted(r.status_code for r in out) == [200] * 4


def test_an_indexed_file_reuses_its_stored_vector(gated: tuple[LiveServer, GatedEmbedder], web_index: Path) -> None:
    server, embedder = gated
    embedder.gate.clear()  # the model would block: the answer must come without it
    data = (web_index.parent / "catalogue" / "bag-blue.jpg").read_bytes()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/api/search", files={"image": ("b.jpg", data, "image/jpeg")}, data={"k": "1"})
    assert r.status_code == 200 and r.json()["results"][0]["name"] == "bag-blue.jpg"
    assert embedder.batches == []


def test_a_failing_model_is_503_without_details(web_index: Path, real_embedder: Any) -> None:
    embedder = GatedEmbedder(real_embedder)
    embedder.fail = True
    server, ix = start(web_index, embedder, decode_workers=0)
    with server, httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/api/search", files={"image": ("q.jpg", fresh(20), "image/jpeg")})
        assert r.status_code == 503 and "retry-after" in r.headers
        assert "secret" not in r.text and "Traceback" not in r.text
        embedder.fail = False  # the worker survived the failure
        assert c.post("/api/search", files={"image": ("q.jpg", fresh(21), "image/jpeg")}).status_code == 200
    ix.close()


def test_a_model_that_cannot_load_still_serves_by_id(web_index: Path, tmp_path: Path) -> None:
    from dinosearch.api import Index
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    ix = Index(web_index, create=False, model=str(tmp_path / "no-such-model"))
    app = create_app(WebSettings(index_dir=str(web_index)), index=ix)
    some_id = next(iter(ids_by_name(web_index).values()))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/api/search", files={"image": ("q.jpg", fresh(30), "image/jpeg")})
        assert r.status_code == 503 and str(tmp_path) not in r.text
        assert c.get(f"/api/images/{some_id}/similar").status_code == 200
        assert c.get(f"/api/images/{some_id}/thumbnail").status_code == 200
    ix.close()


def test_a_slow_model_times_out_as_503(web_index: Path, real_embedder: Any) -> None:
    embedder = GatedEmbedder(real_embedder)
    embedder.gate.clear()
    server, ix = start(web_index, embedder, decode_workers=0, request_timeout=0.5)
    with server, httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/api/search", files={"image": ("q.jpg", fresh(40), "image/jpeg")})
        assert r.status_code == 503 and r.headers["retry-after"]
        embedder.gate.set()
        wait_for(lambda: server.app.state.engine.pending == 0, what="the timed-out upload to be let go")
    ix.close()


def test_a_new_index_generation_is_picked_up_without_a_restart(web_index: Path, tmp_path: Path, tiny_model: str) -> None:
    from dinosearch.api import Index
    from dinosearch.web.app import create_app
    from dinosearch.settings import WebSettings

    index_dir = copy_index(web_index, tmp_path / "index")
    before = ids_by_name(index_dir)
    app = create_app(WebSettings(index_dir=str(index_dir)))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/api/stats").json()["images"] == len(before)
        # `dinosearch index` in another process would do exactly this: add, write a new generation.
        new = tmp_path / "new"
        for i in range(2):
            save(photo(200, 200, seed=500 + i), new / f"new-{i}.jpg")
        with Index(index_dir, model=tiny_model) as writer:
            assert writer.add(new).added == 2
        stats = c.get("/api/stats").json()
        assert stats["images"] == stats["vectors"] == len(before) + 2
        new_ids = set(ids_by_name(index_dir).values()) - set(before.values())
        some = next(iter(before.values()))
        found = {x["id"] for x in c.get(f"/api/images/{some}/similar", params={"k": 50}).json()["results"]}
        assert new_ids <= found
        # and an upload of a new file's bytes finds it by its stored vector
        r = c.post("/api/search", files={"image": ("n.jpg", (new / "new-1.jpg").read_bytes(), "image/jpeg")}, data={"k": "1"})
        assert r.json()["results"][0]["name"] == "new-1.jpg"
