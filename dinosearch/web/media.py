"""Indexed image files served by id: the original bytes, and small cached thumbnails.

Only ids resolve to files, through the catalogue; a request never names a path. A file is served
only while it still is what was indexed (same size and mtime): one replaced on disk since (say by a
link to something private) is not served until it is indexed again.
"""

from __future__ import annotations

import collections
import io
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from ..api import Index
from ..decode import DecodeError, load_rgb
from ..records import MAX_PIXELS
from ..video import container_of

CHUNK = 256 * 1024

# By the format recorded at indexing (found from the content, not the file name).
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
    "AVIF": "image/avif",
}


# A video's media type, by its container (read from its first bytes), for the page's <video> element.
VIDEO_MEDIA_TYPES = {"MP4/QuickTime": "video/mp4", "Matroska/WebM": "video/webm", "AVI": "video/x-msvideo"}


class Gone(Exception):
    """The id is unknown, or its file is missing or changed since indexing. The message has no path."""


@dataclass
class OpenFile:
    file: io.BufferedReader
    size: int
    media_type: str
    etag: str  # the indexed content hash


def open_original(index: Index, image_id: int) -> OpenFile:
    """Open the file of an indexed id, checked against what was indexed. The caller closes it."""
    known = index.file_of(image_id)
    if known is None:
        raise Gone(f"no indexed image has id {image_id}")
    path = known["path"]
    try:
        f = open(path, "rb")  # noqa: SIM115 - handed to the caller, who streams and closes it
    except OSError:
        raise Gone(f"the file of image {image_id} is no longer readable; run `dinosearch index` again") from None
    st = os.fstat(f.fileno())  # of the file actually opened, so a swap after the check is caught too
    if not stat.S_ISREG(st.st_mode) or st.st_size != known["size"] or st.st_mtime_ns != known["mtime_ns"]:
        f.close()
        raise Gone(f"the file of image {image_id} changed since it was indexed; run `dinosearch index` again")
    media_type = MEDIA_TYPES.get((known["format"] or "").upper(), "application/octet-stream")
    if known.get("timestamp") is not None:  # a video frame: the video itself
        media_type = VIDEO_MEDIA_TYPES.get(container_of(f.read(12)) or "", "application/octet-stream")
        f.seek(0)
    return OpenFile(f, st.st_size, media_type, known["content_hash"])


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A `Range: bytes=START-END` header -> (start, length) within `size`; None for no (or a multi-part)
    range, which is answered with the whole file. Raises ValueError for a range outside the file (416)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[len("bytes="):].strip().partition("-")
    if not sep or not (first or last) or not all(p.isascii() and p.isdigit() for p in (first, last) if p):
        return None
    if not first:  # the last N bytes
        n = min(int(last), size)
        if n == 0:
            raise ValueError("empty suffix range")
        return size - n, n
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError("range outside the file")
    return start, end - start + 1


def iter_part(f: io.BufferedReader, start: int, length: int) -> Iterator[bytes]:
    """`length` bytes of the file from `start`, in chunks; closes it."""
    try:
        f.seek(start)
        while length > 0 and (chunk := f.read(min(CHUNK, length))):
            length -= len(chunk)
            yield chunk
    finally:
        f.close()


def iter_file(f: io.BufferedReader) -> Iterator[bytes]:
    try:
        while chunk := f.read(CHUNK):
            yield chunk
    finally:
        f.close()


class Thumbnails:
    """JPEG thumbnails (longest side `size`, upright, no EXIF/GPS/ICC) in a memory LRU.

    Keyed by id and content hash, so an image re-indexed with new content gets a new thumbnail.
    Nothing is written to disk: the index directory may be read-only, and a reader never writes to it.
    """

    def __init__(self, *, size: int = 256, cache_bytes: int = 64 * 1024 * 1024):
        self.size = size
        self.cache_bytes = cache_bytes
        self._cache: collections.OrderedDict[tuple[int, str], bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.made = 0  # thumbnails generated (not served from the cache), for tests

    def get(self, index: Index, image_id: int) -> tuple[bytes, str]:
        """(JPEG bytes, etag). Raises Gone. A video frame's thumbnail was made at indexing (the server
        never decodes a video): it is served while the frame's row exists."""
        frame = index.thumbnail_of(image_id)
        if frame is not None:
            known = index.file_of(image_id) or {}
            return frame, f"{known.get('content_hash')}-{known.get('timestamp')}"
        opened = open_original(index, image_id)
        key = (image_id, opened.etag)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            opened.file.close()
            return cached, opened.etag
        with opened.file:
            data = opened.file.read()
        thumb = self.make(data, image_id)
        self._put(key, thumb)
        return thumb, opened.etag

    def make(self, data: bytes, image_id: int) -> bytes:
        try:
            # Decoded at a JPEG DCT scale near the thumbnail size, EXIF orientation applied, alpha on white.
            im, _, _ = load_rgb(data, min_side=self.size, max_pixels=MAX_PIXELS)
        except DecodeError:
            raise Gone(f"image {image_id} can no longer be decoded; run `dinosearch index` again") from None
        im.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        clean = Image.new("RGB", im.size)  # a fresh image: no EXIF, GPS, ICC or comments carried over
        clean.paste(im)
        out = io.BytesIO()
        clean.save(out, "JPEG", quality=82, optimize=True)
        self.made += 1
        return out.getvalue()

    def _put(self, key: tuple[int, str], thumb: bytes) -> None:
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = thumb
            self._bytes += len(thumb)
            while self._bytes > self.cache_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._bytes -= len(old)
