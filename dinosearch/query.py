"""The one query path: whatever becomes a query vector goes through here, for the CLI, the Python API
and the web app alike.

Cheapest first: an indexed file unchanged since indexing uses its stored vector; any bytes whose
content is already indexed (a copy, an upload of an indexed photo) use the stored vector of that
content; only new content is decoded and meets the model. A URL (CLI and Python only) is fetched and
then treated as bytes. A region (`crop`) is always decoded and embedded on its own.

Several query images combine into one vector: the weighted mean of the positives minus
NEGATIVE_WEIGHT times the weighted mean of the negatives, normalised (`combine`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .embed import l2_normalise
from .errors import ImageError, QueryError, UnknownImageError
from .fetch import fetch, is_url
from .model import ModelSlot
from .read import Unreadable, Vanished, content_hash, read_whole
from .records import MAX_PIXELS, FailureKind
from .region import Crop
from .store.catalogue import Catalogue, vector_from

ImageLike = Any  # a path (str / os.PathLike), file bytes, or a PIL.Image.Image


@dataclass(frozen=True)
class QueryVector:
    vector: np.ndarray  # (dim,) float32, unit length
    same_id: int | None  # the indexed image that is this very file: kept out of its own results


# How much of the negatives' mean is taken away from the positives' mean. At 1, a negative identical
# to the positive would cancel it; at 0.5, "like A but not like B" keeps A's direction dominant.
NEGATIVE_WEIGHT = 0.5


def combine(
    vectors: Sequence[np.ndarray],
    *,
    weights: Sequence[float] | None = None,
    negatives: Sequence[np.ndarray] = (),
    negative_weights: Sequence[float] | None = None,
    negative_weight: float = NEGATIVE_WEIGHT,
) -> np.ndarray:
    """Query vectors -> one (dim,) float32 unit vector:
    normalise(sum(w_i p_i) / sum(w_i) - negative_weight * sum(u_j n_j) / sum(u_j)).

    `vectors` (the positives) and `negatives` are (dim,) unit vectors; weights default to 1 and must
    be > 0. Raises QueryError when there is no positive, a weight is not > 0, or the negatives cancel
    the positives out.
    """
    if len(vectors) == 0:
        raise QueryError("a query needs at least one image to look like")
    q = _weighted_mean(vectors, weights)
    if len(negatives):
        q = q - negative_weight * _weighted_mean(negatives, negative_weights)
    if float(np.linalg.norm(q)) < 1e-6:
        raise QueryError("the images to avoid cancel out the images to look like; drop a --minus image or lower its weight")
    return l2_normalise(q.reshape(1, -1))[0]


def _weighted_mean(vectors: Sequence[np.ndarray], weights: Sequence[float] | None) -> np.ndarray:
    w = np.ones(len(vectors), np.float64) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(vectors),) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise QueryError(f"query weights must be numbers > 0, one per image (got {list(weights or [])})")
    stacked = np.stack([np.asarray(v, np.float64) for v in vectors])
    return ((w[:, None] * stacked).sum(axis=0) / w.sum()).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Term:
    """One image of a query: exactly one of `image` (a path, an http(s) URL, bytes or a PIL image),
    `id` (an indexed image) or `vector` (a (dim,) vector already computed); its weight (> 0); whether
    to look unlike it (`negative`); and an optional region of it (`crop`; not with `vector`)."""

    image: Any = None
    id: int | None = None
    vector: np.ndarray | None = None
    weight: float = 1.0
    negative: bool = False
    crop: Crop | None = None


@dataclass(frozen=True, eq=False)
class Query:
    vector: np.ndarray  # (dim,) float32, unit length
    exclude_ids: frozenset[int]  # indexed images named in the query (either side): never in its results


_WEIGHTED = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(.+)$")


def parse_term(text: str, *, negative: bool = False) -> Term:
    """A command-line query argument -> Term: "a.jpg", "https://.../a.jpg", or "2:a.jpg" / "0.5:a.jpg"
    (a weight, then the image). An existing file whose name looks weighted is taken as the file."""
    match = _WEIGHTED.match(text)
    if match and not os.path.exists(text):
        weight = float(match.group(1))
        if weight <= 0:
            raise QueryError(f"{text!r}: a weight must be > 0")
        return Term(image=match.group(2), weight=weight, negative=negative)
    return Term(image=text, negative=negative)


def as_term(item: Any, *, negative: bool = False) -> Term:
    """What a caller passes as a query image -> Term: a Term as it is (its side set by `negative`),
    an (image, weight) pair, or an image."""
    if isinstance(item, Term):
        return item if item.negative == negative else replace(item, negative=negative)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, float)):
        return Term(image=item[0], weight=float(item[1]), negative=negative)
    return Term(image=item, negative=negative)


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
        if isinstance(image, str) and is_url(image):
            return QueryVector(self.of_bytes(fetch(image), name=image, max_pixels=max_pixels), None)
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
        same_file = found[0].id if found is not None else None
        return QueryVector(self.of_bytes(_read(path), name=path, max_pixels=max_pixels), same_file)

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
        query = self.build([as_term(image) for image in images])
        return query.vector, set(query.exclude_ids)

    def build(self, terms: Sequence[Term], *, max_pixels: int = MAX_PIXELS) -> Query:
        """Terms -> the Query: `combine` of their vectors, and the indexed images they name.

        Raises ImageError, QueryError, FetchError, UnknownImageError (an id that is not indexed).
        """
        found = [(t, self.of_term(t, max_pixels=max_pixels)) for t in terms]
        pos = [(t.weight, q.vector) for t, q in found if not t.negative]
        neg = [(t.weight, q.vector) for t, q in found if t.negative]
        vector = combine(
            [v for _, v in pos], weights=[w for w, _ in pos],
            negatives=[v for _, v in neg], negative_weights=[w for w, _ in neg],
        )
        return Query(vector, frozenset(q.same_id for _, q in found if q.same_id is not None))

    def of_term(self, term: Term, *, max_pixels: int = MAX_PIXELS) -> QueryVector:
        """One Term -> its QueryVector (same_id: the indexed image it names, if any)."""
        if sum(x is not None for x in (term.image, term.id, term.vector)) != 1:
            raise QueryError("a query term names exactly one of an image, an indexed id or a vector")
        if term.vector is not None:
            if term.crop is not None:
                raise QueryError("a region can be taken from an image, not from a vector")
            return QueryVector(l2_normalise(np.asarray(term.vector, np.float32).reshape(1, -1))[0], None)
        if term.id is not None:
            return self._of_id(int(term.id), term.crop, max_pixels=max_pixels)
        if term.crop is not None:
            return self.region(term.image, term.crop, max_pixels=max_pixels)
        return self.of(term.image, max_pixels=max_pixels)

    def _of_id(self, image_id: int, crop: Crop | None, *, max_pixels: int) -> QueryVector:
        if crop is None:
            vector = self.catalogue.vector_of(image_id)
            if vector is None:
                raise UnknownImageError(f"no indexed image has id {image_id}")
            return QueryVector(vector, image_id)
        row = self.catalogue.file_of(image_id)
        if row is None:
            raise UnknownImageError(f"no indexed image has id {image_id}")
        return QueryVector(self.region(row["path"], crop, max_pixels=max_pixels).vector, image_id)

    def region(self, image: ImageLike, crop: Crop, *, max_pixels: int = MAX_PIXELS) -> QueryVector:
        """A region of a path, URL, bytes or PIL image -> its QueryVector: the box alone is decoded
        at full resolution and embedded. Raises ImageError, QueryError (a box outside the image)."""
        pixels = self.pixels(Term(image=image, crop=crop), max_pixels=max_pixels)
        same_id = None
        if isinstance(image, (str, os.PathLike)) and not (isinstance(image, str) and is_url(image)):
            found = self.catalogue.lookup_path(os.path.abspath(os.path.expanduser(os.fspath(image))))
            same_id = found[0].id if found is not None else None
        return QueryVector(self.of_pixels(pixels), same_id)

    def source(self, term: Term) -> tuple[Any, str]:
        """The image a Term names (a path, URL, bytes, PIL image or indexed id), undecoded: (file bytes,
        or the PIL image as given; a name for messages). Raises ImageError, FetchError,
        UnknownImageError, QueryError (a vector has no image)."""
        from PIL import Image

        if term.vector is not None or (term.image is None) == (term.id is None):
            raise QueryError("name one image or one indexed id (a vector has no pixels)")
        if term.id is not None:
            row = self.catalogue.file_of(int(term.id))
            if row is None:
                raise UnknownImageError(f"no indexed image has id {term.id}")
            return _read(row["path"]), row["path"]
        image = term.image
        if isinstance(image, Image.Image):
            return image, "the image"
        if isinstance(image, (bytes, bytearray, memoryview)):
            return bytes(image), "the image"
        if isinstance(image, str) and is_url(image):
            return fetch(image), image
        name = os.path.abspath(os.path.expanduser(os.fspath(image)))
        return _read(name), name

    def pixels(self, term: Term, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """A Term's image (its region with a crop), decoded afresh and prepared for the model as its
        vector is: (crop_h, crop_w, 3) uint8. Raises as `source`, and QueryError for a box outside it."""
        from PIL import Image

        from .decode import DecodeError, decode, prepare_pil
        from .region import decode_region, region_of_pil

        data, name = self.source(term)
        pre = self.model.get().preprocess
        if isinstance(data, Image.Image):
            return region_of_pil(data, pre, term.crop) if term.crop is not None else prepare_pil(data, pre)
        try:
            if term.crop is not None:
                return decode_region(data, pre, term.crop, max_pixels=max_pixels).pixels
            return decode(data, pre, max_pixels=max_pixels).pixels
        except DecodeError as exc:
            raise ImageError(f"{name}: {exc.message}", kind=exc.kind) from None


def _read(path: str) -> bytes:
    if not os.path.exists(path):
        raise ImageError(f"{path} does not exist", kind=FailureKind.NOT_FOUND)
    try:
        return read_whole(path).data
    except Vanished:
        raise ImageError(f"cannot read {path}: not a regular file", kind=FailureKind.UNREADABLE) from None
    except Unreadable as exc:
        raise ImageError(f"cannot read {path}: {exc.message}", kind=FailureKind.UNREADABLE) from None


@dataclass(frozen=True)
class Terms:
    positives: tuple[Term, ...]
    negatives: tuple[Term, ...]


def query_terms(
    images: Sequence[str],
    *,
    ids: Sequence[int] = (),
    minus: Sequence[str] = (),
    minus_ids: Sequence[int] = (),
    crop: str | None = None,
) -> Terms:
    """Command-line query arguments -> Terms. `crop` ("x,y,w,h") applies to the one positive (an
    image or an id). Raises QueryError."""
    from .region import parse_crop

    positives = [parse_term(text) for text in images] + [Term(id=int(i)) for i in ids]
    if crop is not None:
        if len(positives) != 1:
            raise QueryError("--crop takes exactly one query image (or one --id)")
        positives = [replace(positives[0], crop=parse_crop(crop))]
    negatives = [parse_term(text, negative=True) for text in minus] + [Term(id=int(i), negative=True) for i in minus_ids]
    return Terms(tuple(positives), tuple(negatives))
