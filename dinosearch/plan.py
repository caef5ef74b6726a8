"""Plan: what an index run has to do, decided from stat alone (the walk never opens a file).

A file whose size and mtime match its row is unchanged; one that failed before, as it is now, in a
way that trying again cannot change is skipped; indexed files no longer found are to be swept, except
under a root that is missing, empty (unmounted?) or unlistable, whose rows are always kept. Video
files are planned like photos with `video`; without it they are left as they are (neither indexed
nor swept), so a run without --video never drops indexed videos.
"""

from __future__ import annotations

import gc
import multiprocessing
import operator
import os
from dataclasses import dataclass, field

from .errors import PathNotFoundError
from .records import FailureKind, ImageFile
from .store.catalogue import Catalogue, Known
from .walk import WalkResult, walk_all

# Failures tried again on every run even when the file is unchanged: the fix (chmod) leaves its mtime
# as it was, and a refused open costs nothing.
RETRY_EVERY_RUN = frozenset({FailureKind.UNREADABLE})

# A decoder that crashed or hung may have met a passing condition (memory pressure, a busy machine):
# such a file is tried once more on the next run, then again only when the decoders change.
RETRY_ONCE = frozenset({FailureKind.CRASHED, FailureKind.TIMEOUT})

FailedBefore = tuple[int, int, str, str]
_path = operator.itemgetter(0)

# Indexed images from which the walk runs in a process of its own, beside the catalogue read (below
# that, starting a process costs more than it saves).
WALK_APART_FROM = 200_000  # (size, mtime_ns, error, message) of a recorded failure


@dataclass
class Plan:
    """What a run has to do."""

    todo: list[ImageFile]  # new or changed files, in walk order
    known: dict[str, Known]  # every indexed path under the roots
    unchanged: int
    failed_unchanged: int  # files that failed before, unchanged, not tried again
    gone: list[str]  # indexed paths to sweep
    gone_failures: list[str]  # failure rows to sweep
    warnings: list[str]
    failed_before: dict[str, FailedBefore] = field(default_factory=dict)  # failures recorded under the roots


def plan(catalogue: Catalogue, roots: list[str], *, follow_symlinks: bool = False, video: bool = False) -> Plan:
    """Walk `roots` (absolute paths) and compare with the catalogue. Raises PathNotFoundError."""
    # Millions of small acyclic objects (a tuple per file, a row per indexed path): the cyclic garbage
    # collector's passes over them find nothing and cost ~10 % of a plan of a million files.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _plan(catalogue, roots, follow_symlinks=follow_symlinks, video=video)
    finally:
        if collecting:
            gc.enable()


def _plan(catalogue: Catalogue, roots: list[str], *, follow_symlinks: bool, video: bool) -> Plan:
    for root in roots:
        if not os.path.exists(root):
            raise PathNotFoundError(f"{root} does not exist; check the path (nothing was changed)")
    if catalogue.count_images() >= WALK_APART_FROM:
        walks, known, known_failed = _walk_apart(catalogue, roots, follow_symlinks)
    else:
        walks = walk_all(roots, follow_symlinks=follow_symlinks)
        known, known_failed = catalogue.known_under(roots), catalogue.failures_under(roots)
    warnings, protected = _protected_roots(walks, known)
    seen: set[str] = set()
    todo: list[ImageFile] = []
    unchanged = failed_unchanged = 0
    look_up = known.get
    for w in walks.values():
        found = w.found
        if seen:  # overlapping roots: a file is planned under the first that holds it
            found = [f for f in found if f[0] not in seen]
        seen.update(map(_path, found))  # in C: this loop runs a million times on a big tree
        for path, size, mtime_ns, is_video in found:
            if is_video and not video:
                continue  # found, so never swept; indexed only with --video
            k = look_up(path)
            if k is not None and k.size == size and k.mtime_ns == mtime_ns:
                unchanged += 1
            elif k is None and _failed_for_good(known_failed.get(path), size, mtime_ns):
                failed_unchanged += 1
            else:
                todo.append(ImageFile(path, w.root, size, mtime_ns, is_video))
    gone = [p for p in known if p not in seen]
    gone_failures = [p for p in known_failed if p not in seen]
    if protected:
        gone = [p for p in gone if not any(under(p, r) for r in protected)]
        gone_failures = [p for p in gone_failures if not any(under(p, r) for r in protected)]
    return Plan(todo, known, unchanged, failed_unchanged, gone, gone_failures, warnings, known_failed)


def _walk_apart(catalogue: Catalogue, roots: list[str], follow_symlinks: bool) -> tuple[dict[str, WalkResult], dict[str, Known], dict[str, FailedBefore]]:
    """The walk in a process of its own while this one reads the catalogue: each is ~3 s of Python a
    million files, so on two cores the plan takes the longer of the two, plus ~1 s to start the
    process and bring its list back (in a thread instead, sharing the GIL, it took 60 % longer, not
    less). A process that cannot start leaves the walk to this one: the same walk, only slower."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        walking = pool.submit(walk_all, roots, follow_symlinks=follow_symlinks)
    except (OSError, BrokenProcessPool):
        return walk_all(roots, follow_symlinks=follow_symlinks), catalogue.known_under(roots), catalogue.failures_under(roots)
    with pool:
        known, known_failed = catalogue.known_under(roots), catalogue.failures_under(roots)
        try:
            walks = walking.result()
        except BrokenProcessPool:
            walks = walk_all(roots, follow_symlinks=follow_symlinks)
    return walks, known, known_failed


def _protected_roots(walks: dict[str, WalkResult], known: dict[str, Known]) -> tuple[list[str], list[str]]:
    """(warnings, prefixes whose rows must not be swept): empty roots and folders that cannot be listed."""
    warnings: list[str] = []
    protected: list[str] = []
    for root, w in walks.items():
        if not w.found:
            if any(under(p, root) for p in known):
                warnings.append(f"{root} holds no images now; its indexed images were kept (is it unmounted?)")
            protected.append(root)
        for d in w.unreadable:
            warnings.append(f"cannot list {d}; its indexed images were kept")
            protected.append(d)
    return warnings, protected


def _failed_for_good(failed: FailedBefore | None, size: int, mtime_ns: int) -> bool:
    """Whether a file (of this size and mtime now) failed before as it is now, in a way that trying
    again cannot change."""
    if failed is None or failed[:2] != (size, mtime_ns) or failed[2] in RETRY_EVERY_RUN:
        return False
    return failed[2] not in RETRY_ONCE or f"failed twice with {decoders_tag()}" in failed[3]


def decoders_tag() -> str:
    """The versions of the decoders, recorded in crashed/timeout messages."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "none"

    return f"Pillow {version('pillow')}, pillow-heif {version('pillow-heif')}"


def retry_note(error: str, before: FailedBefore | None, f: ImageFile) -> str:
    """The note a crashed/timeout failure carries: what the next run will do about it."""
    if error not in RETRY_ONCE:
        return ""
    tag = decoders_tag()
    if before is not None and before[:3] == (f.size, f.mtime_ns, error) and tag in before[3]:
        return f" [failed twice with {tag}; tried again when the file or the decoders change]"
    return f" [with {tag}; tried once more on the next run]"


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
