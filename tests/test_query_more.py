"""Negative and weighted queries, --id, --crop, --within, --collapse and URL queries, end to end."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dinosearch.api import Index
from dinosearch.cli import app
from dinosearch.errors import FetchError, ImageError, QueryError
from dinosearch.fetch import fetch
from dinosearch.query import NEGATIVE_WEIGHT, Term
from dinosearch.region import Crop

from .images import jpeg_bytes, photo, save

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, list[Path], str]:
    root = tmp_path_factory.mktemp("corpus")
    files = [save(photo(320, 240, seed=s), root / "photos" / f"p{s}.jpg", quality=92) for s in range(8)]
    # A near-identical pair: the same photo re-encoded (other bytes, almost the same vector).
    files.append(save(Image.open(files[0]), root / "photos" / "p0-again.jpg", quality=70))
    index_dir = root / "index"
    with Index(index_dir, model=tiny_model, device="cpu", workers=1) as ix:
        ix.add(root / "photos")
    return index_dir, files, tiny_model


@pytest.fixture()
def ix(corpus: tuple[Path, list[Path], str]) -> Iterator[Index]:
    index_dir, _, model = corpus
    with Index(index_dir, model=model, device="cpu", create=False) as index:
        yield index


def invoke(corpus: tuple[Path, list[Path], str], *args: str) -> tuple[int, str, str]:
    index_dir, _, model = corpus
    r = runner.invoke(app, [*args, "--index", str(index_dir), "--model", model])
    return r.exit_code, r.stdout, r.stderr


def rank_of(hits: list, image_id: int) -> int:
    return next((h.rank for h in hits if h.id == image_id), 10**6)


def test_a_negative_pushes_a_known_image_down(ix: Index, corpus, tmp_path: Path) -> None:
    _, files, _ = corpus
    plain = ix.search(files[1], k=20)
    top = plain[0]
    # A copy outside the index: its content is known (stored vector), but it names no indexed file.
    avoid = tmp_path / "avoid.jpg"
    shutil.copy(top.path, avoid)
    pushed = ix.search(files[1], k=20, minus=[avoid])
    assert rank_of(pushed, top.id) > 1
    assert next(h.score for h in pushed if h.id == top.id) < top.score
    # Named on either side, an indexed file never shows up.
    named = ix.search(files[1], k=20, minus=[top.path])
    assert top.id not in {h.id for h in named}


def test_weights_reach_the_query_vector(ix: Index, corpus) -> None:
    _, files, _ = corpus
    v2, v3 = ix.vector_of(files[2])[0], ix.vector_of(files[3])[0]
    query = ix.queries.build([Term(image=files[2]), Term(image=files[3], weight=9.0), Term(image=files[4], negative=True)])
    by_hand = (v2 + 9 * v3) / 10 - NEGATIVE_WEIGHT * ix.vector_of(files[4])[0]
    assert np.allclose(query.vector, by_hand / np.linalg.norm(by_hand), atol=1e-5)
    assert len(query.exclude_ids) == 3
    pairs = ix.search((files[2], 1.0), (files[3], 9.0), k=20, minus=[files[4]])
    terms = ix.search(Term(image=files[2]), Term(image=files[3], weight=9.0), k=20, minus=[Term(image=files[4])])
    assert [h.id for h in pairs] == [h.id for h in terms]
    assert not {h.path for h in pairs} & {str(files[2]), str(files[3]), str(files[4])}


def test_cli_minus_id_within_collapse(corpus) -> None:
    index_dir, files, _ = corpus
    code, out, err = invoke(corpus, "query", str(files[1]), "-k", "20", "--json")
    assert code == 0, err
    plain = json.loads(out)["results"]
    first = plain[0]["id"]
    code, out, err = invoke(corpus, "query", "--id", str(first), "-k", "5", "--json")
    assert code == 0, err
    by_id = json.loads(out)["results"]
    assert first not in {r["id"] for r in by_id} and len(by_id) == 5
    code, out, _ = invoke(corpus, "query", str(files[1]), "--minus-id", str(first), "--json")
    assert first not in {r["id"] for r in json.loads(out)["results"]}

    best = plain[0]["score"]
    code, out, _ = invoke(corpus, "query", str(files[1]), "-k", "20", "--within", "0.002", "--json")
    near = json.loads(out)["results"]
    assert near and all(r["score"] >= best - 0.002 for r in near)
    assert len(near) == sum(r["score"] >= best - 0.002 for r in plain)

    ids = {Path(r["path"]).name: r["id"] for r in plain}
    with Index(index_dir, create=False) as ix:
        vec = {i: ix.catalogue.vector_of(i) for i in ids.values()}
    t = 1.0 - float(vec[ids["p0.jpg"]] @ vec[ids["p0-again.jpg"]]) + 1e-6  # the re-encoded pair is this close
    code, out, _ = invoke(corpus, "query", str(files[1]), "-k", "20", "--json", "--collapse", str(t))
    groups = json.loads(out)["results"]
    assert [g["rank"] for g in groups] == list(range(1, len(groups) + 1))
    folded = [i for g in groups for i in g["folded"]]
    assert len(groups) + len(folded) == len(plain)
    assert {ids["p0.jpg"], ids["p0-again.jpg"]} & set(folded)
    for g in groups:  # everything folded is within T of the result it was folded into
        assert all(1.0 - float(vec[g["id"]] @ vec[i]) <= t + 1e-5 for i in g["folded"])
    code, out, _ = invoke(corpus, "query", str(files[1]), "-k", "20", "--collapse", str(t))
    assert f"+{max(len(g['folded']) for g in groups)} near-identical" in out


def test_cli_usage_errors(corpus) -> None:
    code, _, err = invoke(corpus, "query")
    assert code == 2 and "--id" in err
    _, files, _ = corpus
    code, _, err = invoke(corpus, "query", str(files[0]), str(files[1]), "--crop", "0,0,1,1")
    assert code == 2 and "--crop" in err
    code, _, err = invoke(corpus, "query", str(files[0]), "--crop", "0,0,900,10")
    assert code == 1 and err.startswith("dinosearch: crop 0,0,900,10 px reaches outside the 320x240 image")
    code, _, err = invoke(corpus, "query", "--id", "999999")
    assert code == 1 and "no indexed image has id 999999" in err
    code, _, err = invoke(corpus, "query", str(files[0]), "--within", "-1")
    assert code == 2


def test_region_query(ix: Index, corpus, tmp_path: Path) -> None:
    _, files, _ = corpus
    # A region of a bigger image that is exactly an indexed photo: the region finds it first.
    canvas = photo(640, 480, seed=99)
    canvas.paste(Image.open(files[5]), (300, 200))
    big = save(canvas, tmp_path / "table.png")
    whole = ix.search(big, k=3)
    region = ix.search(Term(image=big, crop=Crop(300, 200, 320, 240)), k=3)
    assert Path(region[0].path).name == "p5.jpg"
    assert region[0].score > 0.99 and region[0].score > next((h.score for h in whole if h.id == region[0].id), 0)
    # The same by fraction, from a PIL image, and from bytes.
    frac = Crop(300 / 640, 200 / 480, 320 / 640, 240 / 480)
    assert ix.search(Term(image=canvas, crop=frac), k=1)[0].id == region[0].id
    assert ix.search(Term(image=big.read_bytes(), crop=frac), k=1)[0].id == region[0].id
    # A region of an indexed image by id leaves that image out of its own results.
    own = ix.search(Term(id=region[0].id, crop=Crop(0, 0, 0.5, 0.5)), k=5)
    assert region[0].id not in {h.id for h in own}
    with pytest.raises(QueryError, match="outside"):
        ix.search(Term(image=big, crop=Crop(600, 0, 100, 10)))


# URL queries against a local server ---------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    image = b""

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        routes = {
            "/ok.jpg": lambda: self._send(200, self.image, "image/jpeg"),
            "/page.html": lambda: self._send(200, b"<!doctype html><html>hello</html>", "text/html"),
            "/big.jpg": lambda: self._send(200, self.image + b"\0" * 5000, "image/jpeg"),
            "/missing.jpg": lambda: self._send(404, b"no", "text/plain"),
            "/to-ftp": lambda: self._redirect("ftp://127.0.0.1/x.jpg"),
            "/to-file": lambda: self._redirect("file:///etc/passwd"),
            "/to-ok": lambda: self._redirect("/ok.jpg"),
            "/slow.jpg": self._slow,
            "/chunked-big.jpg": self._chunked,
        }
        routes.get(self.path, lambda: self._send(404, b"", "text/plain"))()

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where: str) -> None:
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _slow(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        for _ in range(30):
            try:
                self.wfile.write(b"\xff")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)

    def _chunked(self) -> None:  # no Content-Length: the cap must hold while reading
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        try:
            self.wfile.write(self.image + b"\0" * 200_000)
        except OSError:
            pass


@pytest.fixture(scope="module")
def web_root(corpus) -> Iterator[str]:
    _, files, _ = corpus
    _Handler.image = jpeg_bytes(photo(320, 240, seed=3), quality=80)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_query_by_url(ix: Index, corpus, web_root: str) -> None:
    hits = ix.search(f"{web_root}/ok.jpg", k=3)
    assert Path(hits[0].path).name == "p3.jpg"
    assert [h.id for h in ix.search(f"{web_root}/to-ok", k=3)] == [h.id for h in hits]
    code, out, err = invoke(corpus, "query", f"{web_root}/ok.jpg", "-k", "1", "--json")
    assert code == 0, err
    assert Path(json.loads(out)["results"][0]["path"]).name == "p3.jpg"


def test_url_limits_and_refusals(ix: Index, corpus, web_root: str) -> None:
    size = len(_Handler.image)
    assert fetch(f"{web_root}/ok.jpg", max_bytes=size) == _Handler.image
    with pytest.raises(FetchError, match="over the"):
        fetch(f"{web_root}/big.jpg", max_bytes=size + 100)
    with pytest.raises(FetchError, match="over the"):
        fetch(f"{web_root}/chunked-big.jpg", max_bytes=size + 100)
    with pytest.raises(FetchError, match="within 0.5 s"):
        fetch(f"{web_root}/slow.jpg", timeout=0.5)
    for where in ("to-ftp", "to-file"):
        with pytest.raises(FetchError, match="only http and https are followed"):
            fetch(f"{web_root}/{where}")
    with pytest.raises(FetchError, match="answered 404"):
        fetch(f"{web_root}/missing.jpg")
    with pytest.raises(FetchError, match="only http and https"):
        ix.search("ftp://127.0.0.1/x.jpg")
    with pytest.raises(ImageError, match="not a supported image .the content is HTML"):
        ix.search(f"{web_root}/page.html")
    code, _, err = invoke(corpus, "query", "http://nothing-here.invalid/bag.jpg")
    assert code == 1 and "cannot resolve nothing-here.invalid (offline?)" in err
    assert err.count("\n") == 1
