"""Names that could print alike: a byte that is not UTF-8 against a literal backslash escape."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dinosearch.cli import app
from dinosearch.records import display_path, path_fields, path_from_display

from .images import jpeg_bytes, photo

runner = CliRunner()

# The byte 0xE9 (Latin-1 "é", not UTF-8) against a name literally holding backslash, x, e, 9.
RAW, LITERAL = b"caf\xe9.jpg", "caf\\xe9.jpg"
RAW_SHOWN, LITERAL_SHOWN = "caf\\xe9.jpg", "caf\\\\xe9.jpg"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "plain.jpg").write_bytes(jpeg_bytes(photo(160, 120, seed=1)))
    with open(os.path.join(os.fsencode(root), RAW), "wb") as f:
        f.write(jpeg_bytes(photo(160, 120, seed=2)))
    (root / LITERAL).write_bytes(jpeg_bytes(photo(160, 120, seed=3)))
    with open(os.path.join(os.fsencode(root), b"broken-" + RAW), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    (root / f"broken-{LITERAL}").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def invoke(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.stderr
    return r.exit_code, r.stdout


def test_display_and_json_forms_round_trip() -> None:
    for name in (os.fsdecode(b"/a/" + RAW), "/a/" + LITERAL, "/a/\\\\x41\\", os.fsdecode(b"/\xff\\\xfe\\x41")):
        assert path_from_display(display_path(name)) == name
    assert display_path(os.fsdecode(b"/a/" + RAW)) != display_path("/a/" + LITERAL)
    assert path_fields("/a/" + LITERAL) == {"path": "/a/" + LITERAL}  # UTF-8: exactly the name
    assert path_fields(os.fsdecode(b"/a/" + RAW)) == {"path": "/a/" + RAW_SHOWN, "path_escaped": True}


def test_query_and_failures_print_the_two_names_apart(env: dict, folder: Path, tmp_path: Path) -> None:
    invoke("index", str(folder))
    query = tmp_path / "query.jpg"
    query.write_bytes(jpeg_bytes(photo(160, 120, seed=4)))

    _, text = invoke("query", str(query))
    shown = {line.split(None, 2)[2] for line in text.splitlines()}
    assert shown == {f"{folder}/plain.jpg", f"{folder}/{RAW_SHOWN}", f"{folder}/{LITERAL_SHOWN}"}

    _, text = invoke("failures")
    assert set(text.splitlines()[::2]) == {f"{folder}/broken-{RAW_SHOWN}", f"{folder}/broken-{LITERAL_SHOWN}"}


def test_json_paths_lead_back_to_the_real_files(env: dict, folder: Path, tmp_path: Path) -> None:
    invoke("index", str(folder))
    query = tmp_path / "query.jpg"
    query.write_bytes(jpeg_bytes(photo(160, 120, seed=4)))
    _, out = invoke("query", str(query), "--json")
    results = json.loads(out)["results"]
    _, out = invoke("failures", "--json")
    failures = json.loads(out)

    def real(entry: dict) -> str:
        return path_from_display(entry["path"]) if entry.get("path_escaped") else entry["path"]

    # A UTF-8 name is given exactly, with no extra field; the other is flagged and reversible.
    by_path = {real(r): r for r in results + failures}
    assert set(by_path) == {
        str(folder / "plain.jpg"), os.fsdecode(os.path.join(os.fsencode(folder), RAW)), str(folder / LITERAL),
        os.fsdecode(os.path.join(os.fsencode(folder), b"broken-" + RAW)), str(folder / f"broken-{LITERAL}"),
    }
    assert all(os.path.exists(p) for p in by_path)
    assert set(by_path[str(folder / LITERAL)]) == {"rank", "id", "score", "path", "metadata", "timestamp"}
    assert by_path[str(folder / LITERAL)]["path"] == str(folder / LITERAL)
    assert set(by_path[str(folder / f"broken-{LITERAL}")]) == {"path", "error", "message"}
    for raw in (RAW, b"broken-" + RAW):
        entry = by_path[os.fsdecode(os.path.join(os.fsencode(folder), raw))]
        assert entry["path"] == f"{folder}/{raw.decode('utf-8', 'backslashreplace')}" and entry["path_escaped"] is True


def test_the_api_names_the_two_files_apart(env: dict, folder: Path, index_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from dinosearch.settings import WebSettings
    from dinosearch.web.app import create_app

    invoke("index", str(folder))
    with TestClient(create_app(WebSettings(index_dir=str(index_dir))), base_url="http://127.0.0.1:8000") as c:
        r = c.post("/api/search", files={"image": ("q.jpg", jpeg_bytes(photo(160, 120, seed=4)), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert {h["name"] for h in r.json()["results"]} == {"plain.jpg", RAW_SHOWN, LITERAL_SHOWN}
