"""What C codecs write to stderr, kept off the user's terminal and read back for the failure message."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .decode_errors import DecodeError


class CodecOutput:
    """What C codecs write to this process's stderr (libtiff prints hundreds of lines for some damaged
    files), kept off the user's terminal: fd 2 goes to a temporary file, read back per file. For a
    decode worker, which owns its stderr; see `quiet_codecs` for a one-off decode elsewhere."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)

    def clear(self) -> None:
        os.lseek(2, 0, os.SEEK_SET)
        os.ftruncate(2, 0)

    def said(self) -> str:
        """The first line the codec wrote since `clear` (without the name of Pillow's temporary file)."""
        os.lseek(2, 0, os.SEEK_SET)
        return _first_line(os.read(2, 4096))


def _first_line(raw: bytes) -> str:
    line = next((ln.strip() for ln in raw.decode("utf-8", "replace").splitlines() if ln.strip()), "")
    return line.removeprefix("tempfile.tif: ")[:200]


_QUIET = threading.Lock()


@contextmanager
def quiet_codecs() -> Iterator[None]:
    """Run a decode with this process's stderr (fd 2) set aside; a DecodeError raised inside gets the
    codec's first line appended to its message."""
    with _QUIET, tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield
        except DecodeError as exc:
            sink.seek(0)
            said = _first_line(sink.read(4096))
            if said:
                exc.message = f"{exc.message} (the decoder said: {said})"
                exc.args = (exc.message,)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
