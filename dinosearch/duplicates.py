"""Duplicates: groups of copies of one image, each with a keeper chosen by a documented rule.

Three levels: `exact` (same content hash; no vectors), `near` (re-encodes, resizes, small crops and
edits: cosine >= NEAR) and `similar` (bursts, the same scene shot twice: cosine >= SIMILAR). Vector
levels include the copies of the levels above them.

Groups never chain: images are visited best keeper first, and an image that is still ungrouped takes
every ungrouped neighbour within the threshold of itself. Every duplicate is therefore within the
threshold of its group's keeper (star linkage); two duplicates of one keeper may be less alike to
each other. The neighbours come from a k-nearest-neighbour search of every vector (neighbours.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import DinosearchError
from .records import display_path

if TYPE_CHECKING:
    import numpy as np

# NumPy is imported where used: the CLI imports this module for its help text, and starts faster without.

# Cosine thresholds of the vector levels, for the CLS token of dinov2-small. Random weights put every
# photo within 0.9 of every other: re-check these on real weights (README, "Duplicates").
LEVELS: dict[str, float] = {"exact": 1.0, "near": 0.93, "similar": 0.80}
KEEP_RULES = ("largest", "oldest", "newest", "path-prefix=PREFIX")


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group; `score` is its cosine to the keeper (1.0 for the keeper and exact copies)."""

    id: int
    path: str
    root: str  # the indexed PATH it was found under
    score: float
    width: int | None
    height: int | None
    size: int  # bytes
    mtime_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": display_path(self.path),
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "size": self.size,
            "mtime": datetime.fromtimestamp(self.mtime_ns / 1e9, timezone.utc).isoformat(timespec="seconds"),
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """A keeper and its duplicates (best score first); `reason` says why this one is the keeper."""

    keeper: DuplicateMember
    duplicates: tuple[DuplicateMember, ...]
    reason: str

    @property
    def members(self) -> tuple[DuplicateMember, ...]:
        return (self.keeper, *self.duplicates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keeper": self.keeper.to_dict(),
            "reason": self.reason,
            "duplicates": [m.to_dict() for m in self.duplicates],
        }


@dataclass(frozen=True)
class KeepRule:
    """Which member of a group to keep: `largest` (resolution, then file size, then the oldest),
    `oldest`, `newest` (by mtime, then resolution and size), or `path-prefix=PREFIX` (a file under
    PREFIX first, then `largest`). Ties end with the path, so the choice is deterministic."""

    kind: str
    prefix: str | None = None

    @classmethod
    def parse(cls, text: str) -> "KeepRule":
        """Raises DinosearchError for anything but the rules above."""
        kind, sep, prefix = text.partition("=")
        if kind == "path-prefix" and sep and prefix:
            return cls(kind, os.path.abspath(os.path.expanduser(prefix)))
        if not sep and kind in ("largest", "oldest", "newest"):
            return cls(kind)
        raise DinosearchError(f"--keep takes largest, oldest, newest or path-prefix=PREFIX, not {text!r}")

    def __str__(self) -> str:
        return f"{self.kind}={self.prefix}" if self.prefix else self.kind

    def _criteria(self) -> tuple[str, ...]:
        return {
            "largest": ("pixels", "size", "oldest", "path"),
            "oldest": ("oldest", "pixels", "size", "path"),
            "newest": ("newest", "pixels", "size", "path"),
            "path-prefix": ("prefix", "pixels", "size", "oldest", "path"),
        }[self.kind]

    def _value(self, criterion: str, m: DuplicateMember) -> Any:
        if criterion == "pixels":
            return -((m.width or 0) * (m.height or 0))
        if criterion == "size":
            return -m.size
        if criterion == "oldest":
            return m.mtime_ns
        if criterion == "newest":
            return -m.mtime_ns
        if criterion == "prefix":
            assert self.prefix is not None
            return 0 if (m.path == self.prefix or m.path.startswith(self.prefix.rstrip(os.sep) + os.sep)) else 1
        return os.fsencode(m.path)

    def key(self, m: DuplicateMember) -> tuple[Any, ...]:
        """Smaller is a better keeper."""
        return tuple(self._value(c, m) for c in self._criteria())

    def reason(self, keeper: DuplicateMember, others: Iterable[DuplicateMember]) -> str:
        """The criteria that decided against each other member, in the rule's order, in words."""
        criteria = self._criteria()
        decisive: set[int] = set()
        for other in others:
            for i, c in enumerate(criteria):
                if self._value(c, keeper) != self._value(c, other):
                    decisive.add(i)
                    break
        words = [self._words(criteria[i], keeper) for i in sorted(decisive)]
        return ", then ".join(words) if words else "first by path"

    def _words(self, criterion: str, keeper: DuplicateMember) -> str:
        if criterion == "pixels":
            return f"largest resolution ({keeper.width}x{keeper.height})"
        if criterion == "size":
            return f"larger file ({keeper.size:,} bytes)"
        if criterion in ("oldest", "newest"):
            when = datetime.fromtimestamp(keeper.mtime_ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            return f"{criterion} modification time ({when})"
        if criterion == "prefix":
            return f"under {display_path(self.prefix or '')}"
        return "first by path"


def member(image_id: int, facts: dict[str, Any], score: float = 1.0) -> DuplicateMember:
    """A member from a catalogue row of `Catalogue.facts_by_id`."""
    return DuplicateMember(
        id=int(image_id), path=facts["path"], root=facts["root"], score=float(min(1.0, score)),
        width=facts["width"], height=facts["height"], size=int(facts["size"]), mtime_ns=int(facts["mtime_ns"]),
    )


def exact_groups(id_lists: Iterable[Sequence[int]], facts: dict[int, dict[str, Any]], rule: KeepRule) -> list[DuplicateGroup]:
    """Groups of images with the same content hash (`id_lists`: one list of ids per hash)."""
    groups = []
    for ids in id_lists:
        # A video's frames share its content hash: the file counts once (its first frame's row).
        one_per_file = {facts[i]["path"]: i for i in sorted(ids, reverse=True) if i in facts}
        members = sorted((member(i, facts[i]) for i in one_per_file.values()), key=rule.key)
        if len(members) > 1:
            groups.append(_group(members[0], members[1:], rule))
    return sort_groups(groups)


def star_groups(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray], facts: dict[int, dict[str, Any]], rule: KeepRule
) -> list[DuplicateGroup]:
    """Groups from similar pairs (a (m,) int64, b (m,) int64, cosine (m,) float32), without chaining.

    Visiting images best keeper first, an ungrouped image takes every ungrouped neighbour of its own:
    since pairs are symmetric, a keeper always ranks above its duplicates under `rule`.
    """
    a, b, s = pairs
    neighbours: dict[int, dict[int, float]] = {}
    for x, y, score in zip(a.tolist(), b.tolist(), s.tolist()):
        # Frames of one video (one path) are never duplicates of each other.
        if x in facts and y in facts and x != y and facts[x]["path"] != facts[y]["path"]:
            neighbours.setdefault(x, {})[y] = score
            neighbours.setdefault(y, {})[x] = score
    people = {i: member(i, facts[i]) for i in neighbours}
    grouped: set[int] = set()
    groups = []
    for i in sorted(people, key=lambda i: rule.key(people[i])):
        if i in grouped:
            continue
        near = [j for j in neighbours[i] if j not in grouped]
        best: dict[str, int] = {}  # one member per file: a video by its frame nearest the keeper
        for j in near:
            path = facts[j]["path"]
            if path not in best or neighbours[i][j] > neighbours[i][best[path]]:
                best[path] = j
        taken = list(best.values())
        if not taken:
            continue
        grouped.update(near, (i,))
        dups = [member(j, facts[j], neighbours[i][j]) for j in taken]
        groups.append(_group(people[i], dups, rule))
    return sort_groups(groups)


def _group(keeper: DuplicateMember, dups: Sequence[DuplicateMember], rule: KeepRule) -> DuplicateGroup:
    ordered = sorted(dups, key=lambda m: (-m.score, os.fsencode(m.path)))
    return DuplicateGroup(keeper, tuple(ordered), rule.reason(keeper, ordered))


def sort_groups(groups: list[DuplicateGroup]) -> list[DuplicateGroup]:
    """Largest groups first, then by the keeper's path: the order every front end shows."""
    return sorted(groups, key=lambda g: (-len(g.duplicates), os.fsencode(g.keeper.path)))


def threshold_for(level: str, threshold: float | None) -> float:
    """The cosine threshold of a level (`threshold` overrides a vector level's default)."""
    if level not in LEVELS:
        raise DinosearchError(f"the level is exact, near or similar, not {level!r}")
    if level == "exact":
        if threshold is not None:
            raise DinosearchError("a threshold does not apply to the exact level (same content hash); use near or similar")
        return 1.0
    if threshold is None:
        return LEVELS[level]
    if not 0.0 < threshold <= 1.0:
        raise DinosearchError(f"the threshold is a cosine in (0, 1], not {threshold}")
    return float(threshold)


def find_duplicates(
    catalogue: Any, *, level: str = "near", threshold: float | None = None, keep: str | KeepRule = "largest",
    under: str | os.PathLike[str] | None = None,
) -> list[DuplicateGroup]:
    """Groups of duplicates among the indexed images (those under `under` only, when given).

    `catalogue` is a store.catalogue.Catalogue; the stored vectors are used, the model never loaded.
    Raises DinosearchError for an unknown level or keep rule, a threshold outside (0, 1], or an
    `under` path holding no indexed image.
    """
    import numpy as np

    from .neighbours import build_search_index, similar_pairs

    cut = threshold_for(level, threshold)
    rule = keep if isinstance(keep, KeepRule) else KeepRule.parse(keep)
    scope = _ids_under(catalogue, under)
    if level == "exact":
        lists = catalogue.same_hash_ids()
        if scope is not None:
            lists = [[i for i in ids if i in scope] for ids in lists]
        lists = [ids for ids in lists if len(ids) > 1]
        return exact_groups(lists, catalogue.facts_by_id(i for ids in lists for i in ids), rule)

    def chunks() -> Any:
        for ids, vecs in catalogue.iter_vectors():
            if scope is not None:
                mask = np.isin(ids, scope_ids)
                ids, vecs = ids[mask], vecs[mask]
            if len(ids):
                yield ids, vecs

    scope_ids = np.fromiter(scope, dtype=np.int64) if scope is not None else None
    count = len(scope) if scope is not None else catalogue.count_images()
    first = next(chunks(), None)
    if first is None or count < 2:
        return []
    index = build_search_index(chunks, count=count, dim=first[1].shape[1])
    pairs = similar_pairs(index, chunks, threshold=cut)
    return star_groups(pairs, catalogue.facts_by_id(np.unique(np.concatenate(pairs[:2])).tolist()), rule)


def _ids_under(catalogue: Any, under: str | os.PathLike[str] | None) -> set[int] | None:
    if under is None:
        return None
    path = os.path.abspath(os.path.expanduser(os.fspath(under)))
    ids = {k.id for k in catalogue.known_under([path]).values()}
    if not ids:
        raise DinosearchError(f"no indexed image is under {display_path(path)}")
    return ids
