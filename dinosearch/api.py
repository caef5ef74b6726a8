"""The Python API: one `Index` object over a directory, for the CLI, the web app and library users.

    from dinosearch import Index
    with Index("~/.dinosearch") as ix:
        ix.add("~/Pictures")
        for hit in ix.search("bag.jpg", k=5):
            print(hit.rank, f"{hit.score:.3f}", hit.path)

`Index` opens the directory and delegates: the model to model.ModelSlot, indexing to index.run, query
images to query.QueryVectors, the FAISS lifecycle to store.vectorindex.VectorIndex, ranking to search.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .embed import Embedder, l2_normalise
from .errors import DinosearchError, IndexNotFoundError, UnknownImageError
from .metadata import MetadataRows, read_metadata, resolve
from .model import ModelSlot
from .query import ImageLike, QueryVectors
from .records import MAX_PIXELS, Failure, Hit, IndexReport, ModelFingerprint, Stats
from .search import search
from .store.catalogue import Catalogue
from .store.layout import DB_NAME, GENERATION_KEY, recorded_type
from .store.lock import WriterLock
from .store.vectorindex import LoadedVectors, VectorIndex

# decode (Pillow) and index (the pipeline) are imported where used: `stats` and queries by indexed
# files start faster without them.

class Index:
    """An image index in one directory: SQLite catalogue + FAISS vectors + the model that made them.

    `model` is a hub id or a local checkpoint directory; None uses the model the index was made
    with (or model.DEFAULT_MODEL for a new index). `embedder` injects any object with the Embedder
    protocol. Raises IndexNotFoundError when `create` is False and there is no index.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        model: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "torch",
        batch_size: int | None = None,
        workers: int | None = None,
        embedder: Embedder | None = None,
        create: bool = True,
    ):
        self.dir = Path(directory).expanduser()
        if not create and not (self.dir / DB_NAME).exists():
            raise IndexNotFoundError(f"no index at {self.dir}; create one with `dinosearch index PATH --index {self.dir}`")
        self.catalogue = Catalogue(self.dir, create=create)
        self.model = ModelSlot(
            self.catalogue, model=model, device=device, precision=precision, backend=backend,
            batch_size=batch_size, embedder=embedder,
        )
        self.queries = QueryVectors(self.catalogue, self.model)
        self.vectors = VectorIndex(self.catalogue)
        self._batch_size, self._workers = batch_size, workers

    # model --------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> ModelFingerprint | None:
        return self.model.fingerprint

    @property
    def model_name(self) -> str:
        return self.model.name

    def embedder(self, *, record: bool = False) -> Embedder:
        """The model, loaded on first use and checked against the one that made this index."""
        return self.model.get(record=record)

    # writing ------------------------------------------------------------------------------------
    def add(
        self,
        *paths: str | os.PathLike[str],
        follow_symlinks: bool = False,
        metadata: str | os.PathLike[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        decode_timeout: float = 60.0,
        max_pixels: int = MAX_PIXELS,
        ray: str | None = None,
    ) -> IndexReport:
        """Index (or re-index) folders and files; only what changed since the last run is done.

        `metadata`: a CSV or JSON-lines file whose `path` column (relative to a PATH) names an image;
        its other columns are attached to that image. Rows naming unknown files are reported.
        `ray`: decode and embed on a Ray cluster at this address ("auto": RAY_ADDRESS, else a new local
        cluster; see ray_index.run); planning and writing stay in this process.
        Raises PathNotFoundError, IndexLockedError, ModelLoadError, ModelMismatchError, and
        DinosearchError when `ray` is given and Ray is missing or its cluster cannot be used.
        """
        from . import index as indexer

        if ray is not None:
            from . import ray_index

        rows = read_metadata(metadata) if metadata is not None else None
        with WriterLock(self.dir):
            made_with = self.fingerprint
            self.model.check_before_write()
            run = indexer.run if ray is None else ray_index.runner(model=self.model, address=ray)
            report, changed = run(
                self.catalogue,
                [os.fspath(p) for p in paths],
                load_embedder=lambda: self.model.get(record=True),
                batch_size=self._batch_size,
                workers=self._workers,
                decode_timeout=decode_timeout,
                max_pixels=max_pixels,
                follow_symlinks=follow_symlinks,
                progress=progress,
            )
            if rows is not None:
                report = self._attach_metadata(rows, [os.path.abspath(os.fspath(p)) for p in paths], report)
            fp = self.fingerprint
            if fp is not None:
                self.vectors.sync(fp.dim, force=changed)
        return self.model.warn_mixed_precision(report, made_with)

    def _attach_metadata(self, rows: MetadataRows, roots: list[str], report: IndexReport) -> IndexReport:
        indexed = set(self.catalogue.known_under(roots))
        matched, unknown = resolve(rows, roots, indexed)
        self.catalogue.set_metadata(matched)
        warnings = list(report.warnings)
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            warnings.append(f"{rows.source}: {len(unknown)} row(s) name files that are not indexed: {shown}")
        return replace(report, warnings=tuple(warnings), metadata_matched=len(matched), metadata_unknown=tuple(unknown))

    # reading ------------------------------------------------------------------------------------
    def refresh(self) -> LoadedVectors | None:
        """Bring the in-memory vectors up to date and return them (None: nothing indexed yet).

        A new FAISS generation is loaded (or rebuilt from SQLite if it does not match). Between
        generations, rows that a running `index` has committed are added from SQLite, so new images
        are searchable within seconds without rebuilding anything; rows it deleted are dropped from
        results by `search`. Thread-safe.
        """
        fp = self.fingerprint
        return None if fp is None else self.vectors.refresh(fp.dim)

    def file_of(self, image_id: int) -> dict[str, Any] | None:
        """path, size, mtime_ns, content_hash and format of an indexed image, or None."""
        return self.catalogue.file_of(int(image_id))

    def vector_of(self, image: ImageLike) -> tuple[np.ndarray, int | None]:
        """One query image -> ((dim,) unit vector, the id of the same indexed file or None).

        An indexed file unchanged since indexing, or any file whose content is already indexed, uses
        the stored vector without loading the model. Raises ImageError.
        """
        q = self.queries.of(image)
        return q.vector, q.same_id

    def vector_of_bytes(self, data: bytes, *, name: str = "the image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """Image file bytes -> (dim,) unit vector. Raises ImageError."""
        return self.queries.of_bytes(data, name=name, max_pixels=max_pixels)

    def search(
        self,
        *images: ImageLike,
        k: int = 10,
        min_score: float | None = None,
        where: Mapping[str, str] | None = None,
    ) -> list[Hit]:
        """Images like these (paths, bytes or PIL images; several: their mean). The query files
        themselves never appear in their own results. Raises ImageError."""
        vector, exclude = self.queries.combined(images)
        return self.search_vector(vector, k=k, min_score=min_score, where=where, exclude_ids=exclude)

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        min_score: float | None = None,
        where: Mapping[str, str] | None = None,
        exclude_ids: set[int] | frozenset[int] = frozenset(),
    ) -> list[Hit]:
        """Nearest images to a (dim,) vector (normalised here)."""
        loaded = self.refresh()
        if loaded is None:
            return []
        q = l2_normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        if q.shape[0] != loaded.index.d:
            raise DinosearchError(f"the query vector has {q.shape[0]} dimensions, the index {loaded.index.d}")
        return search(self.catalogue, loaded.index, q, k=k, min_score=min_score, exclude_ids=exclude_ids, where=where)

    def similar(self, image_id: int, *, k: int = 10, where: Mapping[str, str] | None = None) -> list[Hit]:
        """More like an indexed image, from its stored vector; the image itself is left out."""
        vector = self.catalogue.vector_of(int(image_id))
        if vector is None:
            raise UnknownImageError(f"no indexed image has id {image_id}")
        return self.search_vector(vector, k=k, where=where, exclude_ids={int(image_id)})

    def stats(self) -> Stats:
        fp = self.fingerprint
        vectors = 0
        if fp is not None:
            current = self.vectors.count_if_current(fp.dim)
            vectors = current if current is not None else self.vectors.refresh(fp.dim).count
        return Stats(
            images=self.catalogue.count_images(),
            vectors=vectors,
            failed=self.catalogue.count_failures(),
            model=fp.model if fp else None,
            dim=fp.dim if fp else None,
            index_type=recorded_type(self.catalogue.get_setting(GENERATION_KEY) or {}),
            bytes=self.catalogue.disk_bytes(),
        )

    def failures(self) -> list[Failure]:
        return self.catalogue.list_failures()

    def close(self) -> None:
        self.catalogue.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def embed_images(embedder: Embedder, images: list[ImageLike]) -> np.ndarray:
    """Embed images with any embedder, outside an index. (n, dim) float32."""
    from PIL import Image

    from .decode import decode, prepare_pil

    rows = []
    for image in images:
        if isinstance(image, Image.Image):
            rows.append(prepare_pil(image, embedder.preprocess))
        else:
            data = bytes(image) if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()
            rows.append(decode(data, embedder.preprocess).pixels)
    return l2_normalise(embedder.embed(np.stack(rows)))
