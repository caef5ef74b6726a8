"""Metadata filters: `key=value` strings -> a mapping, parsed the same way for the CLI, Python and the web."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import DinosearchError

MAX_FILTER_LENGTH = 1000  # characters of one key=value


class FilterError(DinosearchError):
    """A filter that is not key=value, or too many of them. The message names the bad item."""


def parse_where(items: Iterable[str], *, max_filters: int | None = None) -> dict[str, str]:
    """["colour=red", "size = M"] -> {"colour": "red", "size": "M"}: spaces around key and value are
    dropped; a later filter on the same key replaces an earlier one. Raises FilterError."""
    items = list(items)
    if max_filters is not None and len(items) > max_filters:
        raise FilterError(f"at most {max_filters} filters")
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or len(item) > MAX_FILTER_LENGTH:
            raise FilterError(f"each filter is key=value, e.g. colour=red; got {item[:80]!r}")
        out[key] = value.strip()
    return out
