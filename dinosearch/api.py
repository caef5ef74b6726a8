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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .duplicates import DuplicateGroup, find_duplicates
from .embed import Embedder, l2_normalise
from .errors import DinosearchError, ImageError, IndexNotFoundError
from .explain import Explainer, Explanation, load_result
from .metadata import MetadataRows, read_metadata, resolve
from .model import Loading, ModelSlot
from .query import ImageLike, QueryVectors, Term, as_term
from .refine import refined
from .records import MAX_PIXELS, Failure, Hit, IndexReport, ModelFingerprint, Stats, VideoOptions
from .search import search
from .store.catalogue import Catalogue
from .store.layout import DB_NAME, GENERATION_KEY, index_fields
from .store.lock import WriterLock
from .store.vectorindex import Changes, LoadedVectors, VectorIndex, validate_index_type

# decode (Pillow) and index (the pipeline) are imported where used: `stats` and queries by indexed
# files start faster without them.
if TYPE_CHECKING:
    from .evaluate import Evaluation
    from .export import ExportReport
    from .label import Prediction



class Index:
    """An image index in one directory: SQLite catalogue + FAISS vectors + the model that made them.

    `model` is a hub id or a local checkpoint directory; None uses the model the index was made
    with (or model.DEFAULT_MODEL for a new index). `embedder` injects any object with the Embedder
    protocol. `on_model_load(name)` returns a context manager entered while the model loads (seconds,
    and only when a query or run needs it), e.g. to show a notice. Raises IndexNotFoundError when
    `create` is False and there is no index.
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
        index_type: str | None = None,
        index_memory_mb: float | None = None,
        on_model_load: Loading | None = None,
        crop_mode: str | None = None,
        resolution: int | None = None,
        pooling: str | None = None,
    ):
        self.dir = Path(directory).expanduser()
        if not create and not (self.dir / DB_NAME).exists():
            raise IndexNotFoundError(f"no index at {self.dir}; create one with `dinosearch index PATH --index {self.dir}`")
        self.catalogue = Catalogue(self.dir, create=create)
        self.model = ModelSlot(
            self.catalogue, model=model, device=device, precision=precision, backend=backend,
            batch_size=batch_size, embedder=embedder, loading=on_model_load,
            preparation={"crop_mode": crop_mode, "resolution": resolution, "pooling": pooling},
        )
        self.queries = QueryVectors(self.catalogue, self.model)
        self.vectors = VectorIndex(self.catalogue)
        self.explainer = Explainer(self.model)
        self._batch_size, self._workers = batch_size, workers
        # The vector index kind asked for ("auto", "flat" or a FAISS factory string; None: as recorded)
        # and the memory budget for it; applied by the next `add`.
        self._index_type = index_type
        self._index_budget = int(index_memory_mb * 2**20) if index_memory_mb else None

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
        video: VideoOptions | None = None,
        ray: str | None = None,
        label_from_folder: bool = False,
    ) -> IndexReport:
        """Index (or re-index) folders and files; only what changed since the last run is done.

        `metadata`: a CSV or JSON-lines file whose `path` column (relative to a PATH) names an image;
        its other columns are attached to that image. Rows naming unknown files are reported.
        `video`: also index videos, one row per sampled frame (needs PyAV: the `video` extra).
        `ray`: decode and embed on a Ray cluster at this address ("auto": RAY_ADDRESS, else a new local
        cluster; see ray_index.run); planning and writing stay in this process.
        Raises PathNotFoundError, IndexLockedError, ModelLoadError, ModelMismatchError, and
        DinosearchError for `video` without PyAV, or when `ray` is given and Ray is missing or its
        cluster cannot be used.
        `label_from_folder`: each image under the PATHs gets its folder's name as metadata `label`,
        unless its metadata already has a `label` (a metadata file's column wins).
        """
        from . import index as indexer

        # The model's OpenMP threads should sleep, not spin, between operations: spinning threads steal
        # the cores the decode workers need (measured on 2 cores: +35% images/s). Set before anything
        # here loads the model (it only takes effect when torch is imported after it); a user's setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

        paths = tuple(os.path.expanduser(os.fspath(p)) for p in paths)  # "~/Pictures", as the constructor does
        if ray is not None:
            from . import ray_index

        rows = read_metadata(metadata) if metadata is not None else None
        with WriterLock(self.dir):
            made_with = self.fingerprint
            self.model.check_before_write()
            if self._index_type not in (None, "auto", "flat"):
                # A bad --index-type fails before any work; a new index learns its dim from the model.
                dim = made_with.dim if made_with is not None else self.model.get().fingerprint.dim
                validate_index_type(self._index_type, dim)
            base_version = self.catalogue.version()
            changes: list[Changes] = []
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
                on_changes=lambda upserted, removed: changes.append(Changes(base_version, upserted, removed)),
                video=video,
            )
            if rows is not None:
                report = self._attach_metadata(rows, [os.path.abspath(os.fspath(p)) for p in paths], report)
            if label_from_folder:
                report = self._attach_folder_labels([os.path.abspath(os.fspath(p)) for p in paths], report)
            fp = self.fingerprint
            if fp is not None:
                notes = self.vectors.sync(fp.dim, force=changed, changes=changes[0] if changes else None,
                                          requested=self._index_type, budget=self._index_budget)
                report = replace(report, warnings=report.warnings + tuple(notes))
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

    def _attach_folder_labels(self, roots: list[str], report: IndexReport) -> IndexReport:
        from .label import DEFAULT_KEY, folder_label

        indexed = self.catalogue.known_under(roots)
        n = self.catalogue.set_default_metadata({p: {DEFAULT_KEY: folder_label(p)} for p in indexed})
        return replace(report, labelled=n)

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

    def thumbnail_of(self, image_id: int) -> bytes | None:
        """A video frame's JPEG thumbnail, stored at indexing; None for a photo or an unknown id."""
        return self.catalogue.thumbnail_of(int(image_id))

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
        minus: Sequence[ImageLike | Term] = (),
        within: float | None = None,
        collapse: float | None = None,
        exact: bool = False,
        nprobe: int | None = None,
        all_frames: bool = False,
    ) -> list[Hit]:
        """Images like these and, with `minus`, unlike those.

        Each image is a path, an http(s) URL, file bytes, a PIL image, an (image, weight) pair, or a
        query.Term (an indexed id, a region: `Term(image="a.jpg", crop=Crop(0.1, 0.1, 0.5, 0.5))`).
        The query vector is query.combine's: the weighted mean of the positives minus
        query.NEGATIVE_WEIGHT times the weighted mean of `minus`, normalised. Indexed images named on
        either side never appear in the results. `within`, `collapse`, `exact`, `nprobe`, `all_frames`:
        see search_vector. Raises ImageError, QueryError, FetchError, UnknownImageError.
        """
        if not images:
            raise ImageError("no query image given")
        query = self.queries.build([as_term(i) for i in images] + [as_term(m, negative=True) for m in minus])
        return self.search_vector(
            query.vector, k=k, min_score=min_score, where=where, exclude_ids=query.exclude_ids,
            within=within, collapse=collapse, exact=exact, nprobe=nprobe, all_frames=all_frames,
        )

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        min_score: float | None = None,
        where: Mapping[str, str] | None = None,
        exclude_ids: set[int] | frozenset[int] = frozenset(),
        within: float | None = None,
        collapse: float | None = None,
        exact: bool = False,
        nprobe: int | None = None,
        all_frames: bool = False,
    ) -> list[Hit]:
        """Nearest images to a (dim,) vector (normalised here).

        `within` D: only hits scoring at least the best score minus D. `collapse` T: a hit within
        cosine distance T (1 - cosine <= T) of a better-ranked one is folded into it (`Hit.folded`
        lists the ids folded into each); k then counts what is left. `exact`: search every stored
        vector exactly (slow on a large index); `nprobe`: lists an IVF index searches (more: higher
        recall, slower). A video counts once, by its best frame (`Hit.timestamp`), unless
        `all_frames`. Raises QueryError for a negative D or T.
        """
        loaded = self.refresh()
        if loaded is None:
            return []
        q = l2_normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        if q.shape[0] != loaded.index.d:
            raise DinosearchError(f"the query vector has {q.shape[0]} dimensions, the index {loaded.index.d}")
        return refined(
            lambda n: search(self.catalogue, loaded, q, k=n, min_score=min_score, exclude_ids=exclude_ids, where=where,
                             exact=exact, nprobe=nprobe, all_frames=all_frames),
            k=k, within_distance=within, collapse_threshold=collapse, vector_of=self.catalogue.vector_of,
        )

    def similar(
        self,
        image_id: int,
        *,
        k: int = 10,
        where: Mapping[str, str] | None = None,
        minus: Sequence[ImageLike | Term] = (),
        within: float | None = None,
        collapse: float | None = None,
        exact: bool = False,
        nprobe: int | None = None,
        all_frames: bool = False,
    ) -> list[Hit]:
        """More like an indexed image, from its stored vector (and, with `minus`, unlike those); the
        image itself is left out. The other options as for `search`. Raises UnknownImageError."""
        return self.search(Term(id=int(image_id)), k=k, where=where, minus=minus, within=within, collapse=collapse,
                           exact=exact, nprobe=nprobe, all_frames=all_frames)

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

        ids = self.catalogue.labelled_ids(by)
        loaded = self.refresh()
        if loaded is None or len(ids) == 0:
            raise NoLabelsError(
                f"no indexed image has a {by!r} value; index with --label-from-folder, or attach one with --metadata"
            )
        q = l2_normalise(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        hits = nearest_labelled(self.catalogue, loaded, q, ids=ids, k=k, exclude_ids=exclude_ids)
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

    def explain(
        self,
        query: ImageLike | Term | np.ndarray,
        result: ImageLike | Term,
        *,
        method: str = "patches",
        max_side: int | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> Explanation:
        """Why `result` matches `query`: a heat map over the result of how like the query each part of
        it is (explain.py). Both images meet the model again; nothing is stored.

        `query`: a path, URL, bytes, PIL image, or a query.Term (an indexed id `Term(id=N)`, a region
        `Term(image=..., crop=Crop(...))`); or (crop_h, crop_w, 3) uint8 pixels already prepared for
        the model. `result`: a path, URL, bytes, PIL image or `Term(id=N)`. `method`: "patches" (each
        result patch against the best matching query patch) or "cls" (against the query's CLS token).
        `max_side`: shrink the result to at most this many pixels along its longest side (None: its
        full size). `.png()` of the answer is the overlay. Raises ImageError, QueryError, FetchError,
        UnknownImageError, ModelLoadError.
        """
        if isinstance(query, np.ndarray):
            pixels = query
        else:
            pixels = self.queries.pixels(as_term(query), max_pixels=max_pixels)
        data, name = self.queries.source(as_term(result))
        image = load_result(data, name=name, max_side=max_side, max_pixels=max_pixels)
        return self.explainer.explain(pixels, image, method=method)

    def stats(self, *, measure_recall: bool = False) -> Stats:
        """What the index holds. `measure_recall`: measure recall@10 now, on a fresh sample of the
        collection's own vectors against exact search (else the figure recorded when it was tuned)."""
        fp = self.fingerprint
        vectors = 0
        measured = None
        if fp is not None:
            current = None if measure_recall else self.vectors.count_if_current(fp.dim)
            vectors = current if current is not None else self.vectors.refresh(fp.dim).count
            if measure_recall:
                measured = self.vectors.measure_recall(fp.dim)
        state = self.catalogue.get_setting(GENERATION_KEY) or {}
        fields = index_fields(state)
        if measured is not None:
            fields["recall"] = round(measured, 4)
        return Stats(images=self.catalogue.count_images(), vectors=vectors, failed=self.catalogue.count_failures(),
                     model=fp.model if fp else None, dim=fp.dim if fp else None, bytes=self.catalogue.disk_bytes(), **fields)

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
