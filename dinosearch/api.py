"""The Python API: one `Index` object over a directory, for the CLI, the web app and library users.

    from dinosearch import Index
    with Index("~/.dinosearch") as ix:
        ix.add("~/Pictures")
        for hit in ix.search("bag.jpg", k=5):
            print(hit.rank, f"{hit.score:.3f}", hit.path)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dataclasses import replace

from .duplicates import DuplicateGroup, find_duplicates
from .embed import Dinov2Embedder, Embedder, l2_normalise
from .metadata import MetadataRows, read_metadata, resolve
from .errors import DinosearchError, ImageError, IndexLockedError, IndexNotFoundError, ModelMismatchError, UnknownImageError
from .records import Failure, Hit, IndexReport, ModelFingerprint, Stats
from .search import mean_query, search
from .store import vectors as vector_store
from .store.catalogue import Catalogue, vector_from
from .store.layout import CACHE_DIR, DB_NAME, GENERATION_KEY, INDEX_TYPE, MODEL_KEY, vectors_file
from .store.lock import WriterLock

# decode (Pillow) and index (the pipeline) are imported where used: `stats` and queries by indexed
# files start faster without them.
MAX_PIXELS = 2 * 89_478_485  # = decode.MAX_PIXELS, checked by a test

DEFAULT_MODEL = "facebook/dinov2-small"

ImageLike = Any  # a path (str / os.PathLike), file bytes, or a PIL.Image.Image


def _warn_mixed_precision(report: IndexReport, made_with: ModelFingerprint | None, embedder: Embedder | None) -> IndexReport:
    """Say so when this run embedded images with another backend/precision than the index's first run:
    the model is the same (checked), the vectors are close but not identical."""
    if made_with is None or embedder is None or not report.embedded:
        return report
    now = embedder.fingerprint.precision
    if now == made_with.precision:
        return report
    warning = (
        f"this run embedded {report.embedded} image(s) with {now}, the index's first ones with {made_with.precision}: "
        "their vectors are close but not identical; for the most consistent ranking keep one --backend/--precision per index"
    )
    return replace(report, warnings=(*report.warnings, warning))


def _model_source(model: str) -> str:
    """A local checkpoint folder is recorded by its absolute path, so it names the same model from any
    working directory; hub ids stay as they are."""
    expanded = os.path.expanduser(model)
    return os.path.realpath(expanded) if os.path.isdir(expanded) else model


class Index:
    """An image index in one directory: SQLite catalogue + FAISS vectors + the model that made them.

    `model` is a hub id or a local checkpoint directory; None uses the model the index was made
    with (or DEFAULT_MODEL for a new index). `embedder` injects any object with the Embedder protocol.
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
        self._model = _model_source(model) if model else None
        self._device, self._precision, self._backend = device, precision, backend
        self._batch_size, self._workers = batch_size, workers
        self._embedder = embedder
        self._checked = False
        self._lock = threading.RLock()  # the in-memory vectors are shared by a server's threads
        # Loading the model (seconds; a first conversion for some backends) must not hold up searches
        # by id, which need _lock alone.
        self._model_lock = threading.Lock()
        self._vectors: vector_store.LoadedVectors | None = None
        self._vectors_version = -1
        self._max_id = 0  # the highest id in the in-memory vectors

    # model --------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> ModelFingerprint | None:
        d = self.catalogue.get_setting(MODEL_KEY)
        return ModelFingerprint.from_dict(d) if d else None

    @property
    def model_name(self) -> str:
        fp = self.fingerprint
        return self._model or (fp.model if fp else DEFAULT_MODEL)

    def embedder(self, *, record: bool = False) -> Embedder:
        """The model, loaded on first use and checked against the one that made this index.

        `record`: a new index records this model as its own (only indexing does; readers never write).
        """
        with self._model_lock:
            if self._embedder is None:
                self._embedder = Dinov2Embedder(
                    self.model_name,
                    device=self._device,
                    precision=self._precision,
                    batch_size=self._batch_size,
                    backend=self._backend,
                    cache_dir=self.dir / CACHE_DIR,
                )
            if not self._checked:
                self._checked = self._check_model(self._embedder.fingerprint, record=record)
            return self._embedder

    def _check_model(self, fp: ModelFingerprint, *, record: bool) -> bool:
        """Raise if the index was made by another model; returns whether the check is settled."""
        recorded = self.fingerprint
        if recorded is None:
            if record:
                self.catalogue.set_settings({MODEL_KEY: fp.to_dict()})
            return record
        if recorded.key() != fp.key():
            raise ModelMismatchError(
                f"this index was made with model '{recorded.model}' (dim {recorded.dim}, weights {recorded.weights[:12]}), "
                f"not '{fp.model}' (dim {fp.dim}, weights {fp.weights[:12]}); use --model {recorded.model}, "
                f"or start a new index with --index NEW_DIR"
            )
        return True

    # writing ------------------------------------------------------------------------------------
    def add(
        self,
        *paths: str | os.PathLike[str],
        follow_symlinks: bool = False,
        metadata: str | os.PathLike[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        decode_timeout: float = 60.0,
        max_pixels: int = MAX_PIXELS,
    ) -> IndexReport:
        """Index (or re-index) folders and files; only what changed since the last run is done.

        `metadata`: a CSV or JSON-lines file whose `path` column (relative to a PATH) names an image;
        its other columns are attached to that image. Rows naming unknown files are reported.
        """
        from . import index as indexer

        rows = read_metadata(metadata) if metadata is not None else None
        with WriterLock(self.dir):
            fp = self.fingerprint
            if self._model and fp and self._model != fp.model:
                self.embedder(record=True)  # another model named: check it now, before anything is written
            report, changed = indexer.run(
                self.catalogue,
                [os.fspath(p) for p in paths],
                load_embedder=lambda: self.embedder(record=True),
                batch_size=self._batch_size,
                workers=self._workers,
                decode_timeout=decode_timeout,
                max_pixels=max_pixels,
                follow_symlinks=follow_symlinks,
                progress=progress,
            )
            if rows is not None:
                report = self._attach_metadata(rows, [os.path.abspath(os.fspath(p)) for p in paths], report)
            self._sync_vectors(force=changed)
        return _warn_mixed_precision(report, fp, self._embedder)

    def _attach_metadata(self, rows: MetadataRows, roots: list[str], report: IndexReport) -> IndexReport:
        indexed = set(self.catalogue.known_under(roots))
        matched, unknown = resolve(rows, roots, indexed)
        self.catalogue.set_metadata(matched)
        warnings = list(report.warnings)
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            warnings.append(f"{rows.source}: {len(unknown)} row(s) name files that are not indexed: {shown}")
        return replace(report, warnings=tuple(warnings), metadata_matched=len(matched), metadata_unknown=tuple(unknown))

    def _sync_vectors(self, *, force: bool) -> None:
        """Make the FAISS file match SQLite (writer lock held)."""
        fp = self.fingerprint
        if fp is None:
            return
        state = self.catalogue.get_setting(GENERATION_KEY) or {}
        version = self.catalogue.version()
        if not force and state.get("version") == version and vectors_file(self.dir, state.get("generation", 0)).exists():
            # Nothing to write; still clear generations a killed run left behind.
            vector_store.remove_stale(self.dir, keep=int(state.get("generation", 0)))
            return
        index = vector_store.build(self.catalogue, fp.dim)
        generation = vector_store.save(index, self.catalogue, fp.dim, version)
        with self._lock:
            self._set_vectors(vector_store.LoadedVectors(index, generation, rebuilt=False), version)

    def repair(self) -> bool:
        """Rebuild the FAISS file from SQLite if it does not match; returns True if it was rebuilt."""
        with WriterLock(self.dir):
            loaded = vector_store.load(self.catalogue, self.fingerprint.dim) if self.fingerprint else None
            if loaded is not None and loaded.rebuilt:
                self._sync_vectors(force=True)
                return True
        return False

    # reading ------------------------------------------------------------------------------------
    def refresh(self) -> vector_store.LoadedVectors | None:
        """Bring the in-memory vectors up to date and return them (None: nothing indexed yet).

        A new FAISS generation is loaded (or rebuilt from SQLite if it does not match). Between
        generations, rows that a running `index` has committed are added from SQLite, so new images
        are searchable within seconds without rebuilding anything; rows it deleted are dropped from
        results by `search`. Thread-safe.
        """
        with self._lock:
            fp = self.fingerprint
            if fp is None:
                return None
            state = self.catalogue.get_setting(GENERATION_KEY) or {}
            generation = int(state.get("generation", 0))
            version = self.catalogue.version()
            if self._vectors is None or generation != self._vectors.generation:
                self._set_vectors(vector_store.load(self.catalogue, fp.dim), version)
                if self._vectors is not None and self._vectors.rebuilt and self._vectors.count:
                    self._persist_rebuild()
            elif version != self._vectors_version:
                for ids, vecs in self.catalogue.iter_vectors(after=self._max_id):
                    self._vectors.index.add_with_ids(np.ascontiguousarray(vecs), ids)
                    self._max_id = int(ids[-1])
                self._vectors_version = version
            return self._vectors

    def _set_vectors(self, loaded: vector_store.LoadedVectors, version: int) -> None:
        self._vectors, self._vectors_version = loaded, version
        self._max_id = vector_store.max_id(loaded.index)

    def _persist_rebuild(self) -> None:
        # A reader that had to rebuild saves its work when no writer is busy; otherwise the writer will.
        try:
            with WriterLock(self.dir):
                assert self._vectors is not None and self.fingerprint is not None
                if self.catalogue.version() == self._vectors_version:
                    self._vectors.generation = vector_store.save(
                        self._vectors.index, self.catalogue, self.fingerprint.dim, self._vectors_version
                    )
        except (IndexLockedError, DinosearchError, OSError):
            pass

    def file_of(self, image_id: int) -> dict[str, Any] | None:
        """path, size, mtime_ns, content_hash and format of an indexed image, or None."""
        return self.catalogue.file_of(int(image_id))

    def vector_of(self, image: ImageLike) -> tuple[np.ndarray, int | None]:
        """One query image -> ((dim,) unit vector, the id of the same indexed file or None).

        An indexed file unchanged since indexing, or any file whose content is already indexed, uses
        the stored vector without loading the model.
        """
        from PIL import Image

        from . import index as indexer
        from .decode import prepare_pil

        if isinstance(image, Image.Image):
            return self._embed_pixels(prepare_pil(image, self.embedder().preprocess)), None
        if isinstance(image, (bytes, bytearray, memoryview)):
            return self.vector_of_bytes(bytes(image)), None
        path = os.path.abspath(os.fspath(image))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ImageError(f"{path} does not exist", kind="not-found") from None
        found = self.catalogue.lookup_path(path)
        if found is not None:
            known, vector = found
            if known.size == st.st_size and known.mtime_ns == st.st_mtime_ns:
                return vector, known.id
        read = indexer.read_file(indexer.ImageFile(path, path, st.st_size, st.st_mtime_ns))
        if not isinstance(read, indexer._Read):
            raise ImageError(f"cannot read {path}: {getattr(read, 'message', 'not a regular file')}", kind="unreadable")
        same_file = found[0].id if found is not None else None
        stored = self.catalogue.vector_for_hash(read.content_hash)
        if stored is not None:
            return vector_from(stored), same_file
        return self.vector_of_bytes(read.data, name=path), same_file

    def vector_of_bytes(self, data: bytes, *, name: str = "the image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
        from .decode import DecodeError, decode

        embedder = self.embedder()
        try:
            d = decode(data, embedder.preprocess, max_pixels=max_pixels)
        except DecodeError as exc:
            raise ImageError(f"{name}: {exc.message}", kind=exc.kind) from None
        return self._embed_pixels(d.pixels)

    def _embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.embedder().embed(pixels[None])[0]

    def search(
        self,
        *images: ImageLike,
        k: int = 10,
        min_score: float | None = None,
        where: Mapping[str, str] | None = None,
    ) -> list[Hit]:
        """Images like these (paths, bytes or PIL images; several: their mean). The query files
        themselves never appear in their own results."""
        if not images:
            raise ImageError("no query image given")
        vectors, exclude = [], set()
        for image in images:
            v, same = self.vector_of(image)
            vectors.append(v)
            if same is not None:
                exclude.add(same)
        return self.search_vector(mean_query(vectors), k=k, min_score=min_score, where=where, exclude_ids=exclude)

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
            current = None if self._vectors is not None else vector_store.count_if_current(self.catalogue, fp.dim)
            vectors = current if current is not None else self.refresh().count  # type: ignore[union-attr]
        return Stats(
            images=self.catalogue.count_images(),
            vectors=vectors,
            failed=self.catalogue.count_failures(),
            model=fp.model if fp else None,
            dim=fp.dim if fp else None,
            index_type=INDEX_TYPE,
            bytes=self.catalogue.disk_bytes(),
        )

    def failures(self) -> list[Failure]:
        return self.catalogue.list_failures()

    def duplicates(
        self, *, level: str = "near", threshold: float | None = None, keep: str = "largest",
        under: str | os.PathLike[str] | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of copies among the indexed images, largest groups first, each with its keeper.

        `level`: exact (same content hash), near or similar (cosine >= the level's default, or
        `threshold`); `keep`: largest, oldest, newest or path-prefix=PREFIX; `under`: only images
        below this path. From the stored vectors: the model is never loaded. Raises DinosearchError
        for a bad level, threshold or rule, or an `under` that holds no indexed image.
        """
        return find_duplicates(self.catalogue, level=level, threshold=threshold, keep=keep, under=under)

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
