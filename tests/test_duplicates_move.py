"""`dinosearch duplicates --move-to`: moves duplicates only, keeps their paths, never overwrites,
refuses a folder inside an indexed root, and a second run moves nothing more."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.dup_support import MTIMES, build


@pytest.fixture()
def tree(tmp_path: Path, tiny_model: str) -> tuple[Path, Path]:
    return build(tmp_path, tiny_model)


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def move(index_dir: Path, target: Path, env: dict[str, str], *extra: str) -> tuple[int, dict]:
    proc = run_cli("duplicates", "--index", str(index_dir), "--level", "exact", "--move-to", str(target), "--json", *extra, env=env)
    return proc.returncode, (json.loads(proc.stdout) if proc.returncode == 0 else {"stderr": proc.stderr})


def test_moves_duplicates_keeping_their_paths_and_is_idempotent(tree: tuple[Path, Path], tmp_path: Path, env: dict[str, str]) -> None:
    top, index_dir = tree
    before = files_under(top)
    target = tmp_path / "moved"
    code, out = move(index_dir, target, env)
    assert code == 0, out
    # Exact level, keep largest (a tie broken by age): the younger copies move, the originals stay.
    assert sorted(m["to"] for m in out["move"]["moved"]) == [
        str(target / "photos/copies/a-copy.jpg"),
        str(target / "photos/other/c-copy.jpg"),
    ]
    assert out["move"]["skipped"] == []
    assert files_under(target) == {
        "photos/copies/a-copy.jpg": before["copies/a-copy.jpg"],
        "photos/other/c-copy.jpg": before["other/c-copy.jpg"],
    }
    assert set(files_under(top)) == set(before) - {"copies/a-copy.jpg", "other/c-copy.jpg"}
    assert all(files_under(top)[k] == before[k] for k in files_under(top))  # nothing else touched

    code, again = move(index_dir, target, env)  # the index still lists the moved files
    assert code == 0 and again["move"]["moved"] == []
    assert sorted(s["reason"] for s in again["move"]["skipped"]) == ["already-moved", "already-moved"]
    assert len(files_under(target)) == 2


def test_never_overwrites_and_skips_changed_files(tree: tuple[Path, Path], tmp_path: Path, env: dict[str, str]) -> None:
    top, index_dir = tree
    target = tmp_path / "moved"
    occupied = target / "photos/copies/a-copy.jpg"
    occupied.parent.mkdir(parents=True)
    occupied.write_bytes(b"someone else's file")
    (top / "other/c-copy.jpg").write_bytes(b"edited since indexing")  # no longer known to be a copy
    code, out = move(index_dir, target, env)
    assert code == 0, out
    assert out["move"]["moved"] == []
    assert sorted((os.path.relpath(s["path"], top), s["reason"]) for s in out["move"]["skipped"]) == [
        ("copies/a-copy.jpg", "target-exists"),
        ("other/c-copy.jpg", "changed"),
    ]
    assert occupied.read_bytes() == b"someone else's file"
    assert (top / "copies/a-copy.jpg").exists() and (top / "other/c-copy.jpg").read_bytes() == b"edited since indexing"


def test_keeps_a_group_whose_keeper_is_gone(tree: tuple[Path, Path], tmp_path: Path, env: dict[str, str]) -> None:
    top, index_dir = tree
    (top / "a.jpg").unlink()  # the keeper: its copy is now the only one left
    code, out = move(index_dir, tmp_path / "moved", env)
    assert code == 0
    assert [(os.path.relpath(s["path"], top), s["reason"]) for s in out["move"]["skipped"]] == [("copies/a-copy.jpg", "keeper-missing")]
    assert (top / "copies/a-copy.jpg").exists()


@pytest.mark.parametrize("inside", ["photos", "photos/copies/dups", "photos/new"])
def test_refuses_a_folder_inside_an_indexed_root(tree: tuple[Path, Path], env: dict[str, str], inside: str) -> None:
    top, index_dir = tree
    before = files_under(top)
    target = top.parent / inside
    proc = run_cli("duplicates", "--index", str(index_dir), "--level", "exact", "--move-to", str(target), env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"dinosearch: --move-to {target} is inside the indexed folder {top}") and proc.stderr.count("\n") == 1
    assert files_under(top) == before and len(before) == len(MTIMES)


def test_text_output_reports_the_move(tree: tuple[Path, Path], tmp_path: Path, env: dict[str, str]) -> None:
    _, index_dir = tree
    target = tmp_path / "moved"
    proc = run_cli("duplicates", "--index", str(index_dir), "--level", "exact", "--move-to", str(target), env=env, check=True)
    assert proc.stdout.splitlines()[-1] == (
        f"moved 2 duplicate(s) to {target}; run `dinosearch index` on your folders to update the index"
    )
