"""Read one file whole, and name its content. Standard library (and records) only: decode workers import it too.

The size and mtime of a read come from the same open descriptor as its bytes, so a row never pairs
one version's vector with another version's identity.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from .records import FailureKind

MAX_FILE_BYTES = 1 << 30  # a larger "image" is refused before it is read into memory


def content_hash(data: bytes) -> str:
    """BLAKE2b-128 of the bytes, hex: the content hash the catalogue stores."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class FileBytes:
    size: int
    mtime_ns: int
    data: bytes


class Vanished(Exception):
    """Gone, or no longer a regular file, since the walk: nothing to record; the next run sweeps it."""


class Unreadable(Exception):
    def __init__(self, kind: FailureKind, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """An open descriptor on a regular file, with its fstat. Raises Vanished or Unreadable; the caller closes it.

    O_NONBLOCK: a file swapped for a FIFO after the walk must not hang the run.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise Vanished(path) from None
    except PermissionError:
        raise Unreadable(FailureKind.UNREADABLE, "permission denied; make the file readable to index it") from None
    except OSError as exc:
        raise Unreadable(FailureKind.UNREADABLE, f"cannot open the file ({exc.strerror}); check it and run again") from None
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise Unreadable(FailureKind.UNREADABLE, f"cannot stat the file ({exc.strerror}); check it and run again") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Vanished(path)
    return fd, st


def read_whole(path: str) -> FileBytes:
    """The file's bytes with the size and mtime they had. Raises Vanished or Unreadable."""
    fd, st = open_regular(path)
    try:
        if st.st_size > MAX_FILE_BYTES:
            raise Unreadable(FailureKind.TOO_LARGE, f"the file is {st.st_size >> 20} MiB, over the {MAX_FILE_BYTES >> 20} MiB limit")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return FileBytes(st.st_size, st.st_mtime_ns, b"".join(chunks))
    except OSError as exc:
        raise Unreadable(FailureKind.UNREADABLE, f"read error ({exc.strerror}); check the disk and run again") from None
    finally:
        os.close(fd)


def hash_fd(fd: int) -> str:
    """content_hash of everything an open descriptor reads from its current offset, in bounded memory
    (videos are far larger than photos)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    except OSError as exc:
        raise Unreadable(FailureKind.UNREADABLE, f"read error ({exc.strerror}); check the disk and run again") from None
    return h.hexdigest()


@dataclass(frozen=True)
class FileHash:
    size: int
    mtime_ns: int
    content_hash: str


def hash_file(path: str) -> FileHash:
    """The content hash of a file read in chunks, with the size and mtime it had. Raises Vanished or Unreadable."""
    fd, st = open_regular(path)
    try:
        return FileHash(st.st_size, st.st_mtime_ns, hash_fd(fd))
    finally:
        os.close(fd)
