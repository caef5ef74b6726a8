"""Moving the duplicates of groups out of the way, at the user's request: never deleting, never overwriting.

A duplicate moves to TARGET/<its root's folder name>/<its path below that root>, so the tree it came
from can be rebuilt by hand. A file is moved only when it and its group's keeper are still on disk
as they were indexed (same size and mtime); anything else is skipped with the reason. Running the
same move again moves nothing more: what was moved is reported as already there.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .duplicates import DuplicateGroup, DuplicateMember
from .errors import DinosearchError
from .records import display_path


@dataclass(frozen=True)
class Moved:
    source: str
    target: str


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str  # already-moved, target-exists, changed, gone, keeper-missing, error


@dataclass(frozen=True)
class MoveReport:
    target: str
    moved: tuple[Moved, ...]
    skipped: tuple[Skipped, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": display_path(self.target),
            "moved": [{"path": display_path(m.source), "to": display_path(m.target)} for m in self.moved],
            "skipped": [{"path": display_path(s.source), "reason": s.reason} for s in self.skipped],
        }


def check_target(target: str, roots: Iterable[str]) -> str:
    """The absolute real path of `target`; raises DinosearchError when it is inside an indexed root
    (moved files would be indexed again) or is an existing file."""
    real = os.path.realpath(os.path.abspath(os.path.expanduser(target)))
    for root in roots:
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip(os.sep) + os.sep):
            raise DinosearchError(
                f"--move-to {display_path(real)} is inside the indexed folder {display_path(r)}: "
                "moved files would be indexed again; choose a folder outside every indexed one"
            )
    if os.path.exists(real) and not os.path.isdir(real):
        raise DinosearchError(f"--move-to {display_path(real)} is a file, not a folder")
    return real


def destination(target: str, m: DuplicateMember) -> str:
    """TARGET/<root's last part>/<path below the root> (a file indexed by itself: TARGET/<its name>)."""
    base = os.path.dirname(m.root.rstrip(os.sep)) or os.sep
    return os.path.join(target, os.path.relpath(m.path, base))


def move_duplicates(groups: Iterable[DuplicateGroup], *, target: str, roots: Iterable[str]) -> MoveReport:
    """Move every group's duplicates (never its keeper) below `target`. Raises DinosearchError when
    `target` is inside an indexed root; per-file problems are reported as skipped, never raised."""
    real = check_target(target, roots)
    moved: list[Moved] = []
    skipped: list[Skipped] = []
    for group in groups:
        if _state(group.keeper) != "same":
            skipped.extend(Skipped(m.path, "keeper-missing") for m in group.duplicates)
            continue
        for m in group.duplicates:
            dest = destination(real, m)
            state = _state(m)
            if state == "gone":
                skipped.append(Skipped(m.path, "already-moved" if os.path.lexists(dest) else "gone"))
            elif state == "changed":
                skipped.append(Skipped(m.path, "changed"))
            else:
                outcome = _move(m.path, dest)
                if outcome:
                    skipped.append(Skipped(m.path, outcome))
                else:
                    moved.append(Moved(m.path, dest))
    return MoveReport(real, tuple(moved), tuple(skipped))


def _state(m: DuplicateMember) -> str:
    """same / changed / gone: is the file still the one that was indexed?"""
    try:
        st = os.stat(m.path, follow_symlinks=False)
    except OSError:
        return "gone"
    return "same" if (st.st_size, st.st_mtime_ns) == (m.size, m.mtime_ns) else "changed"


def _move(source: str, dest: str) -> str | None:
    """Move without ever replacing an existing file; None on success, else why not."""
    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            os.link(source, dest)  # fails if dest exists: no window in which it could be overwritten
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return "target-exists"
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            with open(source, "rb") as src, open(dest, "xb") as out:  # another file system: copy, then remove
                shutil.copyfileobj(src, out, 1 << 20)
            shutil.copystat(source, dest)
        os.unlink(source)
    except FileExistsError:
        return "target-exists"
    except OSError as exc:
        return f"error: {exc.strerror or exc}"
    return None
