"""Helpers for the duplicates tests (no tests here): a small photo tree with copies, indexed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.images import photo, save

# With the tiny random test model every photo is within cosine ~0.9999 of every other; resized and
# re-encoded copies are within 0.99999 of their original. This threshold tells them apart for it.
TINY_NEAR = 0.99995

# name -> mtime (seconds): the oldest is the original, so `largest` breaks its tie with a-copy by age.
MTIMES = {
    "a.jpg": 1_600_000_000,
    "copies/a-copy.jpg": 1_600_000_100,
    "copies/a-q40.jpg": 1_650_000_000,
    "copies/a-small.jpg": 1_700_000_000,
    "b.jpg": 1_600_000_000,
    "other/c.jpg": 1_600_000_000,
    "other/c-copy.jpg": 1_600_000_500,
    "d.png": 1_600_000_000,
}


def make_tree(root: Path) -> Path:
    """root/photos: a.jpg with an exact copy, a resized and a q40 copy; c.jpg with an exact copy;
    b.jpg and d.png with none. Returns root/photos."""
    top = root / "photos"
    a = photo(640, 480, seed=0)
    save(a, top / "a.jpg", quality=90)
    (top / "copies").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(top / "a.jpg", top / "copies/a-copy.jpg")
    save(a.resize((320, 240)), top / "copies/a-small.jpg", quality=90)
    save(a, top / "copies/a-q40.jpg", quality=40)
    save(photo(640, 480, seed=1), top / "b.jpg", quality=90)
    save(photo(480, 640, seed=2), top / "other/c.jpg", quality=90)
    shutil.copyfile(top / "other/c.jpg", top / "other/c-copy.jpg")
    save(photo(320, 240, seed=3), top / "d.png")
    for name, mtime in MTIMES.items():
        os.utime(top / name, (mtime, mtime))
    return top


def build(root: Path, model: str) -> tuple[Path, Path]:
    """(the photo folder, its index directory)."""
    from dinosearch.api import Index

    top = make_tree(root)
    with Index(root / "index", model=model) as ix:
        report = ix.add(top)
    assert report.added == len(MTIMES) and report.failed == 0, report
    return top, root / "index"


def names(top: Path, group: object) -> list[str]:
    """A group's members as paths relative to `top`, keeper first."""
    return [os.path.relpath(m.path, top) for m in group.members]  # type: ignore[attr-defined]
