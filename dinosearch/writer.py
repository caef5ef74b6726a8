"""Write, sweep, report: the end of an index run, whichever executor decoded and embedded its files.

Rows and failures are committed in chunks (every `commit_every` records or `commit_seconds`), so a run
that is interrupted keeps what it finished. Only the process that holds the writer lock runs this.
"""

from __future__ import annotations

import time

from .plan import Plan, retry_note
from .records import IndexReport, ImageFile
from .store.catalogue import Catalogue, FailureRow, FrameRow, ImageRow, Known


class Writer:
    """Collects one run's rows and failures, commits them in chunks, then sweeps and reports."""

    def __init__(self, catalogue: Catalogue, plan: Plan, *, commit_every: int = 256, commit_seconds: float = 5.0):
        self.catalogue, self.plan = catalogue, plan
        self.commit_every, self.commit_seconds = commit_every, commit_seconds
        self.added = self.updated = self.embedded = 0
        self.failed = plan.failed_unchanged
        self.changed = False  # whether anything was committed
        self.upserted: list[int] = []  # ids of the rows this run wrote (new, or new content under an old id)
        self.removed_ids: list[int] = []  # ids of the rows this run deleted (files gone, or failing now)
        self.exact_changes = True  # whether upserted and removed_ids are the whole of this run's changes
        self._rows: list[ImageRow] = []
        self._failures: list[FailureRow] = []
        self._replace: list[str] = []  # paths whose rows are all replaced (videos, whose frames change)
        self._last_commit = time.monotonic()

    def add(
        self,
        f: ImageFile,
        content_hash: str,
        vector: bytes,
        *,
        width: int | None = None,
        height: int | None = None,
        format: str | None = None,
        embedded: bool = False,
    ) -> None:
        """A file's row: a new image, or new content for the id its path already has."""
        k = self._count(f)
        self.embedded += embedded
        if k is not None and k.video:  # was a video's frames: they all go
            self._replace.append(f.path)
            k = None
        self._rows.append(
            ImageRow(f.path, f.root, f.size, f.mtime_ns, content_hash, vector, width=width, height=height,
                     format=format, id=k.id if k else None)
        )

    def add_frames(self, f: ImageFile, content_hash: str, frames: list[FrameRow], *, embedded: int = 0) -> None:
        """A video's rows, one per frame, replacing whatever rows its path had. All in one commit."""
        self._count(f)
        self.embedded += embedded
        self._replace.append(f.path)
        self._rows.extend(
            ImageRow(f.path, f.root, f.size, f.mtime_ns, content_hash, fr.vector, width=fr.width, height=fr.height,
                     format=fr.format, timestamp=fr.timestamp, thumbnail=fr.thumbnail)
            for fr in frames
        )

    def _count(self, f: ImageFile) -> Known | None:
        k = self.plan.known.get(f.path)
        if k is not None:
            self.updated += 1
        else:
            self.added += 1
        return k

    def fail(self, f: ImageFile, error: str, message: str) -> None:
        self.failed += 1
        message += retry_note(error, self.plan.failed_before.get(f.path), f)
        self._failures.append(FailureRow(f.path, f.root, f.size, f.mtime_ns, str(error), message))

    def maybe_commit(self) -> None:
        if len(self._rows) + len(self._failures) >= self.commit_every or time.monotonic() - self._last_commit > self.commit_seconds:
            self.commit()

    def commit(self) -> None:
        if self._rows or self._failures or self._replace:
            self.upserted += self.catalogue.write(self._rows, self._failures, replace_paths=self._replace)
            self.removed_ids += [k.id for f in self._failures if (k := self.plan.known.get(f.path)) is not None]
            # A video's rows are many per path: which ids went is not tracked here, so the vector
            # index is rebuilt from SQLite rather than updated in place.
            self.exact_changes = self.exact_changes and not self._replace
            self.changed = True
        self._rows, self._failures, self._replace, self._last_commit = [], [], [], time.monotonic()

    def finish(self, started: float) -> tuple[IndexReport, bool]:
        """Commit what is left, sweep rows of files gone from disk; (the report, whether anything changed)."""
        self.commit()
        p = self.plan
        removed = self.catalogue.remove(p.gone, p.gone_failures) if (p.gone or p.gone_failures) else 0
        self.removed_ids += [p.known[path].id for path in p.gone if path in p.known]
        self.exact_changes = self.exact_changes and not any(p.known[path].video for path in p.gone if path in p.known)
        report = IndexReport(
            added=self.added,
            updated=self.updated,
            removed=removed,
            unchanged=p.unchanged,
            failed=self.failed,
            seconds=time.monotonic() - started,
            embedded=self.embedded,
            warnings=tuple(p.warnings),
        )
        return report, self.changed or bool(p.gone or p.gone_failures)
