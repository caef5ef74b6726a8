"""The one query path: whatever becomes a query vector goes through here, for the CLI, the Python API
and the web app alike.

Cheapest first: an indexed file unchanged since indexing uses its stored vector; any bytes whose
content is already indexed (a copy, an upload of an indexed photo) use the stored vector of that
content; only new content is decoded and meets the model. Several query vectors combine into one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .embed import l2_normalise
from .errors import ImageError
from .model import ModelSlot
from .read import Unreadable, Vanished, content_hash, read_whole
from .records import MAX_PIXELS, FailureKind
from .store.catalogue import Catalogue, vector_from

ImageLike = Any  # a path (str / os.PathLike), file bytes, or a PIL.Image.Image


@dataclass(frozen=True)
class QueryVector:
    vector: np.ndarray  # (dim,) float32, unit length
    same_id: int | None  # the indexed image that is this very file: kept out of its own results


def combine(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Several query vectors -> one: the normalised mean of their unit vectors. (dim,) float32."""
    return l2_normalise(np.mean(np.stack(vectors), axis=0, keepdims=True))[0]


class QueryVectors:
    """Query images -> unit vectors for one index. Raises ImageError for an image that cannot be
    used (its `kind` is a FailureKind value), and ModelLoadError / ModelMismatchError from the model."""

    def __init__(self, catalogue: Catalogue, model: ModelSlot):
        self.catalogue = catalogue
        self.model = model

    def of(self, image: ImageLike, *, max_pixels: int = MAX_PIXELS) -> QueryVector:
        """A path, bytes or a PIL image -> its QueryVector."""
        from PIL import Image

        if isinstance(image, Image.Image):
            from .decode import prepare_pil

            return QueryVector(self.of_pixels(prepare_pil(image, self.model.get().preprocess)), None)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return QueryVector(self.of_bytes(bytes(image), max_pixels=max_pixels), None)
        return self.of_path(os.fspath(image), max_pixels=max_pixels)

    def of_path(self, path: str, *, max_pixels: int = MAX_PIXELS) -> QueryVector:
        path = os.path.abspath(os.path.expanduser(path))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ImageError(f"{path} does not exist", kind=FailureKind.NOT_FOUND) from None
        found = self.catalogue.lookup_path(path)
        if found is not None:
            known, vector = found
            if known.size == st.st_size and known.mtime_ns == st.st_mtime_ns:
                return QueryVector(vector, known.id)
        try:
            data = read_whole(path).data
        except Vanished:
            raise ImageError(f"cannot read {path}: not a regular file", kind=FailureKind.UNREADABLE) from None
        except Unreadable as exc:
            raise ImageError(f"cannot read {path}: {exc.message}", kind=FailureKind.UNREADABLE) from None
        same_file = found[0].id if found is not None else None
        return QueryVector(self.of_bytes(data, name=path, max_pixels=max_pixels), same_file)

    def stored(self, data: bytes) -> np.ndarray | None:
        """The stored vector of this content when it is indexed anywhere, else None. Never loads the model."""
        blob = self.catalogue.vector_for_hash(content_hash(data))
        return None if blob is None else vector_from(blob)

    def of_bytes(self, data: bytes, *, name: str = "the image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """Image file bytes -> (dim,) unit vector: the stored one for indexed content, else decoded and embedded."""
        stored = self.stored(data)
        if stored is not None:
            return stored
        from .decode import DecodeError, check_decodable, decode

        try:
            check_decodable(data, max_pixels=max_pixels)  # an image that cannot be used is refused before the model loads
            embedder = self.model.get()
            decoded = decode(data, embedder.preprocess, max_pixels=max_pixels)
        except DecodeError as exc:
            raise ImageError(f"{name}: {exc.message}", kind=exc.kind) from None
        return self.of_pixels(decoded.pixels)

    def of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 pixels prepared for the model -> (dim,) unit vector."""
        return self.model.get().embed(pixels[None])[0]

    def combined(self, images: Sequence[ImageLike]) -> tuple[np.ndarray, set[int]]:
        """Several query images -> (their combined (dim,) vector, the ids of indexed files among them)."""
        if not images:
            raise ImageError("no query image given")
        found = [self.of(image) for image in images]
        same = {q.same_id for q in found if q.same_id is not None}
        return combine([q.vector for q in found]), same
