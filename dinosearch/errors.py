"""Run-level errors. Per-file problems are data (records.Failure), never exceptions.

Only the entry points (cli, web) decide exit codes and HTTP statuses for these.
"""


class DinosearchError(Exception):
    """Base class: the message is one line a user can act on."""


class ModelLoadError(DinosearchError):
    """The model cannot be loaded (not downloaded, no network, not a DINOv2 checkpoint)."""


class ModelMismatchError(DinosearchError):
    """The index was made with another model than the one asked for."""


class PathNotFoundError(DinosearchError):
    """A PATH given to index does not exist."""


class IndexNotFoundError(DinosearchError):
    """There is no index at the given directory."""


class IndexLockedError(DinosearchError):
    """Another process is writing to this index."""


class SchemaTooNewError(DinosearchError):
    """The index was written by a newer dinosearch."""


class ImageError(DinosearchError):
    """A query image cannot be used (not an image, unsupported, corrupt, too large)."""

    def __init__(self, message: str, kind: str = "not-an-image"):
        super().__init__(message)
        self.kind = kind


class UnknownImageError(DinosearchError):
    """No indexed image has this id."""


class QueryError(DinosearchError):
    """A query that cannot be built as asked: a crop outside its image, weights that cancel out."""


class FetchError(DinosearchError):
    """A query image named by URL could not be fetched (offline, refused, too large, too slow)."""


class NoLabelsError(DinosearchError):
    """No indexed image has a value for the metadata key a command needs (label, eval)."""
