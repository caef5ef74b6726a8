"""Helpers for the web tests (no tests here): a small indexed catalogue and a real uvicorn on loopback."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.images import jpeg_bytes, photo, save

# Four products with catalogue metadata, two plain photos without any.
PRODUCTS = [
    ("bag-red.jpg", "Red bag", "51.00", "bag", "red", "https://shop.example/bag-red"),
    ("bag-blue.jpg", "Blue bag", "58.00", "bag", "blue", "https://shop.example/bag-blue"),
    ("shoe-red.jpg", "Red shoe", "80.00", "shoe", "red", "javascript:alert(1)"),
    ("hat-green.png", "Green hat", "12.50", "hat", "green", ""),
]
PLAIN = ["holiday/beach.jpg", "holiday/dog.jpg"]
ROTATED = "holiday/rotated.jpg"  # stored sideways, with EXIF orientation 6 (and a GPS tag) to undo it


def make_catalogue(root: Path) -> Path:
    """Image files + products.csv under root/catalogue; returns that folder."""
    folder = root / "catalogue"
    for i, (name, *_rest) in enumerate(PRODUCTS):
        save(photo(320, 240, seed=i), folder / name)
    for j, name in enumerate(PLAIN):
        save(photo(240, 320, seed=100 + j), folder / name, quality=90)
    (folder / ROTATED).write_bytes(rotated_jpeg(photo(320, 240, seed=200)))
    lines = ["path,title,price,category,colour,link"] + [",".join(p) for p in PRODUCTS]
    (root / "products.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def rotated_jpeg(upright: Any) -> bytes:
    """A JPEG whose pixels are stored rotated 90 degrees, with EXIF orientation 6 and a GPS position."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPSInfo: must never reach a thumbnail
    return jpeg_bytes(upright.transpose(Image.Transpose.ROTATE_90), quality=92, exif=exif.tobytes())


def build_index(root: Path, model: str) -> Path:
    """An index of the catalogue in root/index, metadata attached; returns the index directory."""
    from dinosearch.api import Index

    folder = make_catalogue(root)
    with Index(root / "index", model=model) as ix:
        report = ix.add(folder, metadata=root / "products.csv")
    assert report.added == len(PRODUCTS) + len(PLAIN) + 1 and report.failed == 0, report
    return root / "index"


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def ids_by_name(index_dir: Path) -> dict[str, int]:
    from dinosearch.api import Index

    with Index(index_dir, create=False) as ix:
        rows = ix.catalogue.rows_by_id(int(i) for i in ix.catalogue.all_ids())
    return {Path(r["path"]).name: i for i, r in rows.items()}


class LiveServer:
    """The app on a real uvicorn, on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, app: Any):
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


class GatedEmbedder:
    """Wraps a real embedder: records batch sizes and, while `gate` is clear, holds every batch."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.preprocess = inner.preprocess
        self.batch_size = inner.batch_size
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.fail = False

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        self.batches.append(len(pixels))
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.fail:
            raise RuntimeError("simulated model failure at /secret/host/path")
        return self.inner.embed(pixels)


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


_shared: dict[str, Path] = {}


def shared_index(tmp_path_factory: Any, model: str) -> Path:
    """One read-only catalogue index per test session (tests that write make their own copy)."""
    if model not in _shared:
        _shared[model] = build_index(tmp_path_factory.mktemp("web-catalogue"), model)
    return _shared[model]


def raw_request(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side path normalisation); (status, whole response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data
