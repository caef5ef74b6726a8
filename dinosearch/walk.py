"""Walk: roots -> ImageFile records. Stat only; never opens a file."""

from __future__ import annotations

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


def _candidate(path: str, root: str, st: os.stat_result) -> ImageFile | None:
    if is_image_name(path):
        return ImageFile(path, root, st.st_size, st.st_mtime_ns)
    if is_video_name(path):
        return ImageFile(path, root, st.st_size, st.st_mtime_ns, video=True)
    return None


@dataclass
class WalkResult:
    files: list[ImageFile] = field(default_factory=list)
    # Directories that could not be listed: nothing below them may be swept from the index.
    unreadable: list[str] = field(default_factory=list)


def walk(root: str, *, follow_symlinks: bool = False) -> WalkResult:
    """Recursively list image and video files under `root` (a directory or a single file).

    Hidden files and folders (a leading '.') are skipped; symlinks are not followed unless asked, and
    then each directory is entered once (no loops). Only regular files are returned: a FIFO or a
    device named .jpg is never opened.
    """
    result = WalkResult()
    root = os.path.abspath(root)
    st = os.stat(root) if follow_symlinks else os.lstat(root)
    if stat.S_ISREG(st.st_mode):
        found = _candidate(root, root, st)
        if found is not None:
            result.files.append(found)
        return result
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
        entries.sort(key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
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
                elif (is_image_name(entry.name) or is_video_name(entry.name)) and entry.is_file(follow_symlinks=follow_symlinks):
                    est = entry.stat(follow_symlinks=follow_symlinks)
                    found = _candidate(entry.path, root, est) if stat.S_ISREG(est.st_mode) else None
                    if found is not None:
                        result.files.append(found)
            except OSError:
                # A broken symlink, a symlink loop or a file deleted under us: nothing to index.
                continue
        stack.extend(reversed(subdirs))
    return result
