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
from typing import TYPE_CHECKING, Any

import numpy as np

from dataclasses import replace

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

if TYPE_CHECKING:
    from .evaluate import Evaluation
    from .export import ExportReport
    from .label import Prediction


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
        crop_mode: str | None = None,
        resolution: int | None = None,
        pooling: str | None = None,
    ):
        self.dir = Path(directory).expanduser()
        if not create and not (self.dir / DB_NAME).exists():
            raise IndexNotFoundError(f"no index at {self.dir}; create one with `dinosearch index PATH --index {self.dir}`")
        self.catalogue = Catalogue(self.dir, create=create)
        self._model = _model_source(model) if model else None
        self._device, self._precision, self._backend = device, precision, backend
        self._batch_size, self._workers = batch_size, workers
        self._embedder = embedder
        # None: as the index was made (dinosearch.prepare), else the checkpoint's centre crop and CLS.
        self._prepare = {"crop_mode": crop_mode, "resolution": resolution, "pooling": pooling}
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
                    **self._preparation(),
                )
            if not self._checked:
                self._checked = self._check_model(self._embedder.fingerprint, record=record)
            return self._embedder

    def _preparation(self) -> dict[str, Any]:
        """Crop mode, resolution and pooling for the model: those asked for, else the index's own."""
        from .prepare import options_of

        fp = self.fingerprint
        made = options_of(fp) if fp else {"crop_mode": "center", "resolution": None, "pooling": "cls"}
        return {key: made[key] if asked is None else asked for key, asked in self._prepare.items()}

    def _check_model(self, fp: ModelFingerprint, *, record: bool) -> bool:
        """Raise if the index was made by another model; returns whether the check is settled."""
        recorded = self.fingerprint
        if recorded is None:
            if record:
                self.catalogue.set_settings({MODEL_KEY: fp.to_dict()})
            return record
        if recorded.weights == fp.weights and recorded.key() != fp.key():
            from .prepare import describe_options

            raise ModelMismatchError(
                f"this index was made with images prepared with {describe_options(recorded)}, not "
                f"{describe_options(fp)}; leave those options out to use the index's, or start a new index with --index NEW_DIR"
            )
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
        label_from_folder: bool = False,
    ) -> IndexReport:
        """Index (or re-index) folders and files; only what changed since the last run is done.

        `metadata`: a CSV or JSON-lines file whose `path` column (relative to a PATH) names an image;
        its other columns are attached to that image. Rows naming unknown files are reported.
        `label_from_folder`: each image under the PATHs gets its folder's name as metadata `label`,
        unless its metadata already has a `label` (a metadata file's column wins).
        """
        from . import index as indexer

        rows = read_metadata(metadata) if metadata is not None else None
        with WriterLock(self.dir):
            fp = self.fingerprint
            asked = any(v is not None for v in self._prepare.values())
            if fp and ((self._model and self._model != fp.model) or asked):
                self.embedder(record=True)  # another model or preparation named: check it now, before anything is written
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
            if label_from_folder:
                report = self._attach_folder_labels([os.path.abspath(os.fspath(p)) for p in paths], report)
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

    def _attach_folder_labels(self, roots: list[str], report: IndexReport) -> IndexReport:
        from .label import DEFAULT_KEY, folder_label

        indexed = self.catalogue.known_under(roots)
        n = self.catalogue.set_default_metadata({p: {DEFAULT_KEY: folder_label(p)} for p in indexed})
        return replace(report, labelled=n)

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

    def label(self, *images: ImageLike, by: str = "label", k: int = 20) -> list["Prediction"]:
        """Predict metadata `by` for each image (not their mean) by a similarity-weighted vote of
        its k nearest labelled images (dinosearch.label). A query file that is itself indexed does
        not vote for itself. Raises NoLabelsError when no indexed image has a value for `by`."""
        if not images:
            raise ImageError("no query image given")
        out = []
        for image in images:
            v, same = self.vector_of(image)
            query = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image"
            out.append(self.label_vector(v, by=by, k=k, exclude_ids={same} if same is not None else set(), query=query))
        return out

    def label_vector(
        self, vector: np.ndarray, *, by: str = "label", k: int = 20, exclude_ids: set[int] | frozenset[int] = frozenset(), query: str = "vector"
    ) -> "Prediction":
        """The vote of the k labelled images nearest to a (dim,) vector (normalised here)."""
        from .errors import NoLabelsError
        from .label import nearest_labelled, predict

        ids, _ = self.catalogue.labelled(by)
        loaded = self.refresh()
        if loaded is None or len(ids) == 0:
            raise NoLabelsError(
                f"no indexed image has a {by!r} value; index with --label-from-folder, or attach one with --metadata"
            )
        q = l2_normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        hits = nearest_labelled(self.catalogue, loaded.index, q, ids=ids, k=k, exclude_ids=exclude_ids)
        return predict(hits, by=by, query=query)

    def evaluate(
        self, *, by: str = "label", sample: int | None = None, k: int = 20, copies: str | os.PathLike[str] | None = None, seed: int = 0
    ) -> "Evaluation":
        """Leave-one-out Recall@1/5/10, mAP@R and k-NN accuracy of metadata `by` over the labelled
        images (dinosearch.evaluate); with `copies`, a folder of derived images named after their
        originals (`bag-red~crop.jpg` for `bag-red.jpg`), Recall@K of each copy's original too.
        `sample`: at most this many queries (seeded). Raises NoLabelsError without labels."""
        from . import evaluate as ev
        from .errors import NoLabelsError

        ids, values = self.catalogue.labelled(by)
        if len(ids) == 0:
            raise NoLabelsError(
                f"no indexed image has a {by!r} value; index with --label-from-folder, or attach one with --metadata"
            )
        chunks = list(self.catalogue.iter_vectors())
        all_ids = np.concatenate([i for i, _ in chunks])
        pos = np.minimum(np.searchsorted(all_ids, ids), len(all_ids) - 1)  # both in id order
        kept = all_ids[pos] == ids  # a row an `index` run deleted between the two reads is left out
        vectors = np.concatenate([v for _, v in chunks])[pos[kept]]
        values = [v for v, keep in zip(values, kept) if keep]
        scores, skipped = ev.leave_one_out(vectors, values, k=k, sample=sample, seed=seed)
        result = ev.Evaluation(by, len(values), len(set(values)), skipped, k, scores)
        if copies is None:
            return result
        ranks, unnamed = ev.copy_ranks(self, copies)
        return replace(result, duplicates=ev.duplicate_scores(ranks), duplicates_skipped=tuple(unnamed))

    def export(self, path: str | os.PathLike[str], *, format: str = "npy") -> "ExportReport":
        """Write ids, paths, metadata and vectors to `path` (format npy, jsonl or parquet; the layouts
        are in dinosearch.export). Raises DinosearchError on an empty index or a file that cannot be written."""
        from .export import export

        fp = self.fingerprint
        if fp is None:
            raise DinosearchError(f"the index at {self.dir} holds no images yet; nothing to export")
        return export(self.catalogue, fp, fmt=format, path=path)

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
