"""The model of an index: loaded on first use, and checked against the one that made the index.

An index records the fingerprint of the model that made its vectors (records.ModelFingerprint);
querying or adding with another model is refused. Loading is lazy and thread-safe, so commands and
routes that need no model (queries by indexed files, stats) never load it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .embed import Embedder
from .errors import ModelMismatchError
from .records import IndexReport, ModelFingerprint
from .store.catalogue import Catalogue
from .store.layout import CACHE_DIR, MODEL_KEY

DEFAULT_MODEL = "facebook/dinov2-small"


@dataclass(frozen=True)
class ModelSpec:
    """What ModelSlot.get would load, for a process that loads it elsewhere (a Ray actor): a hub id or
    an absolute checkpoint folder, and the options of embed.Dinov2Embedder."""

    model: str
    device: str
    precision: str
    backend: str
    batch_size: int | None
    preparation: tuple[tuple[str, Any], ...] = ()  # crop_mode, resolution, pooling (prepare.py)

    def options(self) -> dict[str, Any]:
        """Keyword arguments of embed.Dinov2Embedder besides the model."""
        return {"device": self.device, "precision": self.precision, "batch_size": self.batch_size,
                "backend": self.backend, **dict(self.preparation)}


def model_source(model: str) -> str:
    """A local checkpoint folder is recorded by its absolute path, so it names the same model from any
    working directory; hub ids stay as they are."""
    expanded = os.path.expanduser(model)
    return os.path.realpath(expanded) if os.path.isdir(expanded) else model


Loading = Callable[[str], AbstractContextManager[object]]


def _quiet(name: str) -> AbstractContextManager[object]:
    return nullcontext()


class ModelSlot:
    """The model for one index directory. `model` None: the model the index was made with (or
    DEFAULT_MODEL for a new index). `embedder` injects any object with the Embedder protocol.
    `loading(name)` is entered while the model loads (seconds), so a presenter can say so meanwhile.
    `preparation`: crop_mode, resolution and pooling asked for (None each: the index's own, see
    prepare.py); an index made one way refuses another, like another model."""

    def __init__(
        self,
        catalogue: Catalogue,
        *,
        model: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "torch",
        batch_size: int | None = None,
        embedder: Embedder | None = None,
        loading: Loading | None = None,
        preparation: dict[str, Any] | None = None,
    ):
        self.catalogue = catalogue
        self._asked_preparation = {k: v for k, v in (preparation or {}).items() if v is not None}
        self._loading = loading or _quiet
        self.asked = model_source(model) if model else None
        self._device, self._precision, self._backend, self._batch_size = device, precision, backend, batch_size
        self._embedder = embedder
        self._adopted: ModelFingerprint | None = None  # a model loaded elsewhere, checked (adopt)
        self._checked = False
        # Loading takes seconds (a first conversion for some backends): it has a lock of its own, so
        # searches by id, which need no model, are never held up by it.
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> ModelFingerprint | None:
        """The fingerprint the index recorded, or None for an index nothing was embedded into yet."""
        d = self.catalogue.get_setting(MODEL_KEY)
        return ModelFingerprint.from_dict(d) if d else None

    @property
    def name(self) -> str:
        fp = self.fingerprint
        return self.asked or (fp.model if fp else DEFAULT_MODEL)

    @property
    def loaded(self) -> Embedder | None:
        return self._embedder

    def get(self, *, record: bool = False) -> Embedder:
        """The model, loaded on first use and checked against the one that made this index.

        `record`: a new index records this model as its own (only indexing does; readers never write).
        Raises ModelLoadError, ModelMismatchError.
        """
        from .embed import Dinov2Embedder

        with self._lock:
            if self._embedder is None:
                with self._loading(self.name):
                    self._embedder = Dinov2Embedder(
                        self.name,
                        device=self._device,
                        precision=self._precision,
                        batch_size=self._batch_size,
                        backend=self._backend,
                        cache_dir=Path(self.catalogue.dir) / CACHE_DIR,
                        **self.preparation(),
                    )
            if not self._checked:
                self._checked = self._check(self._embedder.fingerprint, record=record)
            return self._embedder

    def preparation(self) -> dict[str, Any]:
        """Crop mode, resolution and pooling for the model: those asked for, else the index's own."""
        from .prepare import options_of

        fp = self.fingerprint
        made = options_of(fp) if fp else {"crop_mode": "center", "resolution": None, "pooling": "cls"}
        return {**made, **self._asked_preparation}

    @property
    def spec(self) -> ModelSpec:
        """How to load this model in another process or on another machine."""
        return ModelSpec(self.name, self._device, self._precision, self._backend, self._batch_size,
                         tuple(sorted(self.preparation().items())))

    def adopt(self, fp: ModelFingerprint) -> None:
        """A model loaded elsewhere from `spec` (a Ray actor): refused if it is not the index's model;
        a new index records it as its own. Raises ModelMismatchError."""
        with self._lock:
            self._check(fp, record=True)
            self._adopted = fp

    def check_before_write(self) -> None:
        """Another model or preparation named for an index that has one: load and check it before anything
        is written."""
        fp = self.fingerprint
        if fp and ((self.asked and self.asked != fp.model) or self._asked_preparation):
            self.get(record=True)

    def _check(self, fp: ModelFingerprint, *, record: bool) -> bool:
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

    def warn_mixed_precision(self, report: IndexReport, made_with: ModelFingerprint | None) -> IndexReport:
        """Say so when this run embedded images with another backend/precision than the index's first
        run: the model is the same (checked), the vectors are close but not identical."""
        if made_with is None or (self._embedder is None and self._adopted is None) or not report.embedded:
            return report
        now = (self._embedder.fingerprint if self._embedder is not None else self._adopted).precision  # type: ignore[union-attr]
        if now == made_with.precision:
            return report
        warning = (
            f"this run embedded {report.embedded} image(s) with {now}, the index's first ones with {made_with.precision}: "
            "their vectors are close but not identical; for the most consistent ranking keep one --backend/--precision per index"
        )
        return replace(report, warnings=(*report.warnings, warning))
