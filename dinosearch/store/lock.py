"""One writer at a time per index, guarded by an OS file lock that dies with its process."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import DinosearchError, IndexLockedError
from .layout import LOCK_NAME

MAX_CMD = 400  # characters of the holder's command line kept in the lock file


class WriterLock:
    """Exclusive, non-blocking: a second writer fails fast with a message naming the holder."""

    def __init__(self, index_dir: Path):
        self.path = Path(index_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DinosearchError(
                f"cannot open the lock file {self.path} ({exc.strerror}); check that you may write to {self.path.parent}"
            ) from None
        try:
            _lock(fd)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise IndexLockedError(
                f"another dinosearch process is writing to {self.path.parent} ({holder}); "
                "wait for it to finish, or stop it"
            ) from None
        os.ftruncate(fd, 0)
        cmd = " ".join(sys.argv)
        cmd = cmd if len(cmd) <= MAX_CMD else cmd[: MAX_CMD - 3] + "..."  # the holder's note stays readable whole
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "cmd": cmd}
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing drops the lock

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 1 << 16) or b"{}")
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or "pid" not in info:
        return "a process that is just starting, or holder unknown"  # locked, its note not yet written
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, `{info.get('cmd', '?')}`, since {started}"


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
