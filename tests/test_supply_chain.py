"""Security floors of the dependencies (NOTES.md): declared in pyproject.toml, and met by what is installed."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

# distribution -> the lowest version without the known vulnerabilities (cited in NOTES.md)
FLOORS = {
    "pillow": "12.3",  # decoder CVEs; Image.open(formats=...) closes most of the rest
    "python-multipart": "0.0.27",  # multipart parsing DoS
    "starlette": "1.3.1",
    "h11": "0.16",  # request smuggling
    "torch": "2.6",
    "pillow-heif": "1.3.0",  # CVE-2025-68431, CVE-2026-28231 in its bundled libheif  # torch.load(weights_only=True) by default: safe weights loading
}

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _declared() -> dict[str, Requirement]:
    if sys.version_info >= (3, 11):
        import tomllib

        deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    else:  # pragma: no cover - the list is simple enough to read without a TOML parser
        block = re.search(r"^dependencies = \[(.*?)^\]", PYPROJECT.read_text(), re.S | re.M).group(1)
        deps = re.findall(r'"([^"]+)"', block)
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_floor_is_declared(name: str) -> None:
    """The declared range admits no version below the floor (e.g. `>=12.3`, not `>=12` or unpinned)."""
    req = _declared().get(name)
    assert req is not None, f"{name} is not a declared dependency"
    floor = Version(FLOORS[name])
    lower = [Version(s.version) for s in req.specifier if s.operator in (">=", ">", "==", "~=")]
    assert lower, f"{req} has no lower bound; it must be at least {floor}"
    assert max(lower) >= floor, f"{req} admits versions below {floor}"
    below = Version(".".join(map(str, floor.release[:-1] + (floor.release[-1] - 1,)))) if floor.release[-1] else Version("0")
    assert not req.specifier.contains(below, prereleases=True), f"{req} admits {below} < {floor}"


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_installed_version_meets_the_floor(name: str) -> None:
    try:
        installed = Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is not installed")
    assert installed.release >= Version(FLOORS[name]).release, f"{name} {installed} is below the floor {FLOORS[name]}"


def test_installed_versions_satisfy_every_declared_requirement() -> None:
    """Not just the floors: what runs the tests is what pyproject allows."""
    wrong = []
    for name, req in _declared().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed")
            continue
        if not req.specifier.contains(Version(installed).public, prereleases=True) and not req.specifier.contains(
            Version(installed).base_version, prereleases=True
        ):
            wrong.append(f"{name} {installed} does not satisfy {req}")
    assert not wrong, wrong
