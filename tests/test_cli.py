"""The command-line contract: commands, flags, exit codes, text and JSON output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dinosearch.api import Index
from dinosearch.cli import app

from .conftest import run_cli
from .images import jpeg_bytes, photo, save

runner = CliRunner()


@pytest.fixture()
def photos(tmp_path: Path) -> list[Path]:
    files = [save(photo(480, 360, seed=s), tmp_path / "photos" / f"p{s}.jpg", quality=92) for s in range(5)]
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return files


def invoke(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_index_query_stats_failures_json(env: dict, photos: list[Path], tmp_path: Path) -> None:
    code, out, _ = invoke("index", str(tmp_path / "photos"), "--json")
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"added", "updated", "removed", "unchanged", "failed", "seconds", "images_per_second"}
    assert (report["added"], report["failed"]) == (5, 1)

    query = tmp_path / "query.jpg"
    query.write_bytes(jpeg_bytes(Image.open(photos[2]).resize((240, 180)), quality=75))
    code, out, _ = invoke("query", str(query), "-k", "3", "--json")
    assert code == 0
    results = json.loads(out)["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert all(set(r) == {"rank", "id", "score", "path", "metadata", "timestamp"} for r in results)
    assert results[0]["path"] == str(photos[2])
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)

    code, out, _ = invoke("stats", "--json")
    stats = json.loads(out)
    assert set(stats) == {"images", "vectors", "failed", "model", "dim", "index_type", "bytes", "nlist", "nprobe", "code_size", "recall"}
    assert (stats["images"], stats["vectors"], stats["failed"], stats["dim"]) == (5, 5, 1, 32)
    assert stats["bytes"] > 0

    code, out, _ = invoke("failures", "--json")
    [failure] = json.loads(out)
    assert set(failure) == {"path", "error", "message"}
    assert failure["path"] == str(tmp_path / "photos" / "broken.jpg")


def test_query_text_output_and_self_exclusion(env: dict, photos: list[Path], tmp_path: Path) -> None:
    assert invoke("index", str(tmp_path / "photos"))[0] == 0
    code, out, _ = invoke("query", str(photos[0]), "-k", "10")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 4  # five indexed, the query itself left out
    assert str(photos[0]) not in out
    rank, score, path = lines[0].split(None, 2)
    assert rank == "1" and len(score.split(".")[1]) == 3 and Path(path).exists()


def test_min_score_and_several_query_images(env: dict, photos: list[Path], tmp_path: Path) -> None:
    invoke("index", str(tmp_path / "photos"))
    code, out, _ = invoke("query", str(photos[0]), str(photos[1]), "--min-score", "0.0", "--json")
    results = json.loads(out)["results"]
    paths = {r["path"] for r in results}
    assert str(photos[0]) not in paths and str(photos[1]) not in paths
    code, out, _ = invoke("query", str(photos[0]), "--min-score", "1.0", "--json")
    assert json.loads(out)["results"] == []  # no other photo is identical
    assert invoke("query", str(photos[0]), "--min-score", "1.01", "--json")[0] == 2  # above any cosine


def test_run_level_errors_exit_non_zero_with_one_line(env: dict, tmp_path: Path) -> None:
    code, _, err = invoke("index", str(tmp_path / "nope"))
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = invoke("stats", "--index", str(tmp_path / "no-index"))
    assert code == 1 and "no index at" in err


def test_unloadable_model_says_what_to_do(env: dict, photos: list[Path], tmp_path: Path) -> None:
    code, _, err = invoke("index", str(tmp_path / "photos"), "--model", str(tmp_path / "missing-model"))
    assert code == 1
    assert "cannot load model" in err and "--model" in err and len(err.strip().splitlines()) == 1


def test_different_model_is_named(env: dict, photos: list[Path], tmp_path: Path, other_model: str, tiny_model: str) -> None:
    invoke("index", str(tmp_path / "photos"))
    save(photo(200, 200, seed=42), tmp_path / "photos" / "new.jpg")
    code, _, err = invoke("index", str(tmp_path / "photos"), "--model", other_model)
    assert code == 1 and tiny_model in err and "--index" in err


def test_subprocess_end_to_end(env: dict, photos: list[Path], tmp_path: Path) -> None:
    r = run_cli("index", str(tmp_path / "photos"), "--device", "cpu", "--batch-size", "2", env=env, check=True)
    assert "5 added" in r.stdout and "1 failed" in r.stdout
    r = run_cli("query", str(photos[3]), "-k", "2", "--json", env=env, check=True)
    assert len(json.loads(r.stdout)["results"]) == 2
    r = run_cli("index", str(tmp_path / "photos"), "--json", env=env, check=True)
    assert json.loads(r.stdout)["unchanged"] == 5
    assert run_cli("--help", env=env).returncode == 0
    bad = run_cli("query", env=env)
    assert bad.returncode == 2  # usage error


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx")),
    reason="onnxruntime is not installed (pip install 'dinosearch[onnxruntime]')",
)
def test_onnxruntime_int8_index_and_query(env: dict, photos: list[Path], tmp_path: Path, index_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOSEARCH_BACKEND", "onnxruntime")  # the documented variables, for index
    monkeypatch.setenv("DINOSEARCH_PRECISION", "int8")
    code, out, err = invoke("index", str(tmp_path / "photos"), "--json")
    assert code == 0, err
    assert json.loads(out)["added"] == 5
    with Index(index_dir, create=False) as ix:
        assert ix.fingerprint is not None and ix.fingerprint.precision == "onnxruntime-int8"
    [cached] = (index_dir / "cache").iterdir()  # the converted model, kept for the query below
    monkeypatch.delenv("DINOSEARCH_BACKEND")
    monkeypatch.delenv("DINOSEARCH_PRECISION")
    query = tmp_path / "query.jpg"  # not indexed: the model runs, through the flags this time
    query.write_bytes(jpeg_bytes(Image.open(photos[2]).resize((240, 180)), quality=75))
    code, out, err = invoke("query", str(query), "-k", "1", "--json", "--backend", "onnxruntime", "--precision", "int8")
    assert code == 0, err
    assert json.loads(out)["results"][0]["path"] == str(photos[2])
    assert list((index_dir / "cache").iterdir()) == [cached]
    code, _, err = invoke("query", str(query), "--precision", "int8")  # eager torch has no int8
    assert code == 1 and "needs --backend onnxruntime" in err

    # A later run with another backend/precision is allowed (same model), and says what it mixed.
    save(photo(480, 360, seed=9), tmp_path / "photos" / "p9.jpg", quality=92)
    code, out, err = invoke("index", str(tmp_path / "photos"), "--precision", "fp32")
    assert code == 0 and out.startswith("1 added"), err
    assert "warning: this run embedded 1 image(s) with fp32, the index's first ones with onnxruntime-int8" in err
    save(photo(480, 360, seed=10), tmp_path / "photos" / "p10.jpg", quality=92)
    code, out, err = invoke("index", str(tmp_path / "photos"), "--backend", "onnxruntime", "--precision", "int8")
    assert code == 0 and out.startswith("1 added") and "warning" not in err, err


def test_help_names_what_to_install_for_each_backend() -> None:
    # Rich markup would eat a bracketed extra such as [openvino]: the help names plain packages.
    code, out, _ = invoke("index", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and "pip install openvino" in text and "pip install onnxruntime onnx" in text


def test_max_pixels_is_the_limit_in_effect(env: dict, tmp_path: Path) -> None:
    folder = tmp_path / "big"
    save(photo(400, 300), folder / "wide.png")
    code, out, _ = invoke("index", str(folder), "--max-pixels", "100000", "--json")
    assert code == 0 and json.loads(out)["failed"] == 1
    code, out, _ = invoke("failures", "--json")
    (failure,) = json.loads(out)
    assert failure["error"] == "too-large"
    assert "400x300" in failure["message"] and "100000" in failure["message"] and "--max-pixels" in failure["message"]
    os_utime_later(folder / "wide.png")
    code, out, _ = invoke("index", str(folder), "--max-pixels", "200000", "--json")
    assert code == 0 and json.loads(out)["added"] == 1


def os_utime_later(path: Path) -> None:
    import os

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_an_empty_index_says_so(env: dict, tmp_path: Path, photos: list[Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = invoke("index", str(empty))
    assert code == 0 and "no images found" in err
    code, out, err = invoke("query", str(photos[0]))
    assert code == 1 and "holds no images" in err and "dinosearch index" in err and "cannot load model" not in err
    code, out, _ = invoke("stats")
    assert code == 0 and "None" not in out


def test_impossible_min_score_and_unknown_where_key_are_refused(env: dict, photos: list[Path], tmp_path: Path) -> None:
    assert invoke("index", str(tmp_path / "photos"))[0] == 0
    code, _, _ = invoke("query", str(photos[0]), "--min-score", "2")
    assert code == 2
    code, _, err = invoke("query", str(photos[0]), "--where", "colour=red")
    assert code == 1 and "colour" in err and "--metadata" in err


def test_add_expands_the_home_directory(index_dir: Path, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    save(photo(96, 64, seed=1), tmp_path / "Pictures" / "a.jpg")
    with Index(index_dir, model=tiny_model, workers=1) as ix:
        assert ix.add("~/Pictures").added == 1


def test_a_run_that_did_nothing_shows_no_rate(env: dict, photos: list[Path], tmp_path: Path) -> None:
    assert invoke("index", str(tmp_path / "photos"))[0] == 0
    code, out, _ = invoke("index", str(tmp_path / "photos"))
    assert code == 0 and "5 unchanged" in out and "images/s" not in out
