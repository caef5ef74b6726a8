"""Walk: roots -> ImageFile records. Stat only; never opens a file."""

from __future__ import annotations

import gc
import operator
import os
import stat
from dataclasses import dataclass, field

from .records import ImageFile

# Extensions that say "image". Content decides the format later (decode.py); a file with one of these
# extensions that is not an allowed image becomes a recorded failure, anything else is ignored quietly.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .webp .gif .bmp .dib .tif .tiff .heic .heif .hif .avif".split()
)

# Extensions that say "video": found by every walk (so that a run without --video never sweeps indexed
# videos), indexed as frames only with --video. Content decides here too (video.py).
VIDEO_EXTENSIONS = frozenset(".mp4 .m4v .mov .webm .mkv .avi".split())


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


# An extension (lower case, with its dot) -> whether it names a video; a name with no key here is ignored.
_KIND = {**dict.fromkeys(IMAGE_EXTENSIONS, False), **dict.fromkeys(VIDEO_EXTENSIONS, True)}


def _kind(name: str) -> bool | None:
    """False: named like an image, True: like a video, None: neither (as splitext reads a name that
    does not start with a dot). One dict lookup: the walk asks it of every file of a million."""
    dot = name.rfind(".")
    return _KIND.get(name[dot:].lower()) if dot > 0 else None


_name = operator.attrgetter("name")
Found = tuple[str, int, int, bool]  # (path, size, mtime_ns, video) of a candidate file


@dataclass
class WalkResult:
    root: str = ""
    # Candidates as plain tuples: a walk of a million files builds a record per file, and the plan
    # makes ImageFiles only of the few it has work for.
    found: list[Found] = field(default_factory=list)
    # Directories that could not be listed: nothing below them may be swept from the index.
    unreadable: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[ImageFile]:
        return [ImageFile(path, self.root, size, mtime_ns, video) for path, size, mtime_ns, video in self.found]


def walk(root: str, *, follow_symlinks: bool = False) -> WalkResult:
    """Recursively list image and video files under `root` (a directory or a single file).

    Hidden files and folders (a leading '.') are skipped; symlinks are not followed unless asked, and
    then each directory is entered once (no loops). Only regular files are returned: a FIFO or a
    device named .jpg is never opened.
    """
    root = os.path.abspath(root)
    result = WalkResult(root)
    found = result.found
    st = os.stat(root) if follow_symlinks else os.lstat(root)
    if stat.S_ISREG(st.st_mode):
        video = _kind(os.path.basename(root))
        if video is not None:
            found.append((root, st.st_size, st.st_mtime_ns, video))
        return result
    kinds = _KIND
    seen_dirs: set[tuple[int, int]] = {(st.st_dev, st.st_ino)}
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            result.unreadable.append(directory)
            continue
        entries.sort(key=_name)
        subdirs = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=follow_symlinks):
                    if follow_symlinks:
                        est = entry.stat(follow_symlinks=True)
                        key = (est.st_dev, est.st_ino)
                        if key in seen_dirs:
                            continue
                        seen_dirs.add(key)
                    subdirs.append(entry.path)
                # _kind, inlined: a call per file costs ~0.5 s a million
                elif (dot := name.rfind(".")) > 0 and (video := kinds.get(name[dot:].lower())) is not None \
                        and entry.is_file(follow_symlinks=follow_symlinks):
                    est = entry.stat(follow_symlinks=follow_symlinks)
                    if stat.S_ISREG(est.st_mode):
                        found.append((entry.path, est.st_size, est.st_mtime_ns, video))
            except OSError:
                # A broken symlink, a symlink loop or a file deleted under us: nothing to index.
                continue
        stack.extend(reversed(subdirs))
    return result


def walk_all(roots: list[str], *, follow_symlinks: bool = False) -> dict[str, WalkResult]:
    """walk() of each root, in order; what a plan's walking process runs (plan.py)."""
    collecting = gc.isenabled()
    gc.disable()  # millions of acyclic tuples: the collector's passes would find nothing
    try:
        return {root: walk(root, follow_symlinks=follow_symlinks) for root in roots}
    finally:
        if collecting:
            gc.enable()
