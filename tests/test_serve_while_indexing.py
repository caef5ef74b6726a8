"""`serve` answers queries while `index` adds and removes images: zero errors, new images within seconds."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx

from dinosearch.api import Index
from dinosearch.web.app import create_app
from dinosearch.settings import WebSettings

from .conftest import run_cli
from .images import jpeg_bytes, photo, save
from .test_web_support import LiveServer, wait_for


def test_queries_during_index_runs(tmp_path: Path, tiny_model: str, env: dict) -> None:
    photos = tmp_path / "photos"
    keep = save(photo(320, 240, seed=0), photos / "keep.jpg")
    doomed = [save(photo(320, 240, seed=s), photos / f"doomed{s}.jpg") for s in (1, 2)]
    run_cli("index", str(photos), env=env, check=True)
    with Index(env["DINOSEARCH_INDEX"]) as ix:
        keep_id = ix.catalogue.lookup_path(str(keep))[0].id
    upload = jpeg_bytes(photo(320, 240, seed=0).resize((200, 150)), quality=80)

    settings = WebSettings(index_dir=env["DINOSEARCH_INDEX"], model=tiny_model, device="cpu", decode_workers=0)
    statuses: list[int] = []
    problems: list[str] = []
    stop = threading.Event()

    def hammer(base: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                for r in (
                    client.get(f"/api/images/{keep_id}/similar", params={"k": 20}),
                    client.post("/api/search", files={"image": ("q.jpg", io.BytesIO(upload), "image/jpeg")}, data={"k": "20"}),
                ):
                    statuses.append(r.status_code)
                    if r.status_code != 200:
                        problems.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    results = r.json()["results"]
                    if [x["rank"] for x in results] != list(range(1, len(results) + 1)):
                        problems.append(f"ranks {results}")
                    scores = [x["score"] for x in results]
                    if scores != sorted(scores, reverse=True):
                        problems.append(f"scores {scores}")

    def names(client: httpx.Client) -> set[str]:
        return {x["name"] for x in client.get(f"/api/images/{keep_id}/similar", params={"k": 50}).json()["results"]}

    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        worker = threading.Thread(target=hammer, args=(server.url,), daemon=True)
        worker.start()
        try:
            for round_ in range(3):
                new = [save(photo(320, 240, seed=100 + 10 * round_ + i), photos / f"new{round_}-{i}.jpg") for i in range(3)]
                if round_ == 1:
                    for d in doomed:
                        d.unlink()
                run_cli("index", str(photos), env=env, check=True)
                started = time.monotonic()
                wait_for(lambda: {p.name for p in new} <= names(client), timeout=10, what="new images in results")
                assert time.monotonic() - started < 10
                if round_ >= 1:
                    assert not ({d.name for d in doomed} & names(client))
        finally:
            stop.set()
            worker.join(timeout=60)
    assert len(statuses) > 10
    assert problems == [], problems[:5]
    assert set(statuses) == {200}
