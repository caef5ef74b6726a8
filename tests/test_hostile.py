"""Hostile and broken files: each is a recorded failure with a clear message, or quietly skipped; the run
goes on, never hangs, never opens a codec outside the allowlist, and its memory stays bounded.

One real `dinosearch index` run over a folder of every kind of bad file (plus a few good ones), then
`failures`, `stats` and `query` on what it stored; and unit tests for what a folder cannot show.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinosearch.decode import DecodeError, decode, load_rgb
from dinosearch.records import Preprocess, display_path
from dinosearch.walk import walk

from . import hostile as H
from .conftest import run_cli
from .images import jpeg_bytes, photo

pytestmark = pytest.mark.skipif(os.name == "nt", reason="FIFOs, symlinks and POSIX permissions")

PRE = Preprocess(256, 224, 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FAULTS_ENV = "DINOSEARCH_TEST_DECODE_FAULTS"
GIB = 1 << 30

INDEXED, SKIPPED = "indexed", "skipped"


def failed(kind: str, *words: str) -> tuple[str, ...]:
    return ("failed", kind, *words)


def _files() -> dict[str, tuple[bytes, object]]:
    """name -> (bytes, expectation). Expectation: INDEXED, SKIPPED, failed(kind, words...) or a set of outcomes."""
    icc = H.cmyk_icc_profile(H.rotated_rgb)
    return {
        "good-1.jpg": (jpeg_bytes(photo(320, 240, seed=1)), INDEXED),
        "good-2.png": (H.encode(photo(200, 300, seed=2), "PNG"), INDEXED),
        "empty.jpg": (b"", failed("empty", "empty")),
        "random.jpg": (H.random_bytes(), failed("not-an-image", "supported formats")),
        "text.png": (H.TEXT, failed("not-an-image", "text")),
        "page.jpg": (H.HTML, failed("not-an-image", "HTML")),
        "truncated.jpg": (jpeg_bytes(photo(320, 240, seed=3))[:5000], failed("corrupt", "truncated")),
        "truncated.png": (H.encode(photo(200, 150, seed=4), "PNG")[:3000], failed("corrupt", "truncated")),
        "header-only.jpg": (H.jpeg_header_only(seed=5), failed("corrupt")),
        "bitflip-tables.jpg": (H.jpeg_bitflip_header(seed=6), failed("corrupt")),
        # Flips in entropy-coded data: libjpeg may decode garbage pixels or give up; both are fine.
        "bitflip-scan.jpg": (H.jpeg_bitflip_scan(seed=7), {INDEXED, failed("corrupt")}),
        "bomb-40000.png": (H.png(40000, 40000, rows=8), failed("too-large")),
        "absurd-65535.png": (H.png(65535, 65535, rows=1), failed("too-large")),
        "screen-65535.gif": (_gif_with_screen(65535, 65535), failed("too-large")),
        "zero-width.png": (H.png(0, 64), failed("corrupt", "PNG")),
        # 100 MP: above Pillow's warning threshold, below its error: indexed within bounded memory (or refused).
        "between-thresholds.png": (H.png(10_000, 10_000), {INDEXED, failed("too-large")}),
        "strip-1x100000.png": (H.png(1, 100_000, fill=128), INDEXED),
        "strip-100000x1.png": (H.png(100_000, 1, fill=128), INDEXED),
        "animated-300.gif": (H.animated_gif(300), INDEXED),
        "animated-300.webp": (H.animated_webp(300), INDEXED),
        "pages-3.tiff": (H.multipage_tiff(3), INDEXED),
        "cmyk.jpg": (H.cmyk_jpeg(), INDEXED),
        "cmyk-icc.jpg": (H.cmyk_jpeg(icc), INDEXED),
        "cmyk-broken-icc.jpg": (H.cmyk_jpeg(b"not an ICC profile at all"), INDEXED),
        "grey-16bit.png": (H.grey16_png(), INDEXED),
        "rgb-48bit.png": (H.png(64, 64, bit_depth=16, colour_type=2, fill=200), INDEXED),
        "palette-alpha.png": (H.palette_alpha_png(), INDEXED),
        "exif-malformed.jpg": (H.jpeg_bad_exif(seed=8), INDEXED),
        "exif-orientation-99.jpg": (H.jpeg_exif_orientation(99, seed=9), INDEXED),
        # Other formats under their own names are not images at all: ignored. Disguised: recorded, named.
        "drawing.eps": (H.EPS, SKIPPED),
        "doc.pdf": (H.PDF, SKIPPED),
        "layers.psd": (H.PSD, SKIPPED),
        "drawing.svg": (H.SVG, SKIPPED),
        "eps.jpg": (H.EPS, failed("not-an-image", "EPS")),
        "dos-eps.tif": (H.DOS_EPS, failed("not-an-image", "EPS")),
        "pdf.jpg": (H.PDF, failed("not-an-image", "PDF")),
        "psd.png": (H.PSD, failed("not-an-image", "PSD")),
        "svg.jpg": (H.SVG, failed("not-an-image", "SVG")),
        # A decoder that crashes costs that file only (DINOSEARCH_TEST_DECODE_FAULTS=1 for this run).
        "codec-segfault.jpg": (H.fault("segfault"), failed("crashed", "SIGSEGV")),
        "codec-abort.jpg": (H.fault("abort"), failed("crashed", "SIGABRT")),
        # Names: stored as the file system's bytes, printed escaped, valid JSON.
        "names/new\nline.jpg": (jpeg_bytes(photo(160, 120, seed=20)), INDEXED),
        "names/100%.jpg": (jpeg_bytes(photo(160, 120, seed=21)), INDEXED),
        "names/under_score.jpg": (jpeg_bytes(photo(160, 120, seed=22)), INDEXED),
        "names/-dash.jpg": (jpeg_bytes(photo(160, 120, seed=23)), INDEXED),
        "names/tab\tand\x1b[31mescape.jpg": (jpeg_bytes(photo(160, 120, seed=24)), INDEXED),
        "names/bad\nname.jpg": (H.TEXT, failed("not-an-image")),
        "locked/inside.jpg": (jpeg_bytes(photo(160, 120, seed=25)), INDEXED),
    }


NON_UTF8 = b"names/caf\xe9-latin1.jpg"  # a name that is not UTF-8: stored and shown escaped
NON_UTF8_BAD = b"names/\xff\xfe-broken.png"


def _gif_with_screen(width: int, height: int) -> bytes:
    gif = H.encode(Image.new("RGB", (4, 4), (200, 0, 0)), "GIF")
    return gif[:6] + width.to_bytes(2, "little") + height.to_bytes(2, "little") + gif[10:]


def _special(root: Path) -> dict[str, object]:
    """Things that are not plain files: built in place. name -> expectation."""
    out: dict[str, object] = {}
    os.mkfifo(root / "fifo.jpg")
    out["fifo.jpg"] = SKIPPED
    os.symlink(root / "does-not-exist.jpg", root / "broken-link.jpg")
    out["broken-link.jpg"] = SKIPPED
    os.symlink(root / "loop-b.jpg", root / "loop-a.jpg")
    os.symlink(root / "loop-a.jpg", root / "loop-b.jpg")
    out["loop-a.jpg"] = out["loop-b.jpg"] = SKIPPED
    os.symlink(root, root / "dir-loop")  # a folder that contains itself
    (root / "folder.jpg").mkdir()  # a folder named like an image, holding one
    (root / "folder.jpg" / "in-folder.jpg").write_bytes(jpeg_bytes(photo(120, 90, seed=30)))
    out["folder.jpg/in-folder.jpg"] = INDEXED
    huge = root / "huge.jpg"  # 2 GiB, sparse: refused by size before a byte is read
    with open(huge, "wb") as f:
        f.truncate(2 * GIB)
    out["huge.jpg"] = failed("too-large", "MiB")
    return out


def _can_drop_file_permissions() -> list[str] | None:
    """A command prefix under which file permissions hold: [] for a normal user, setpriv for root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    caps = "-dac_override,-dac_read_search"
    probe = subprocess.run([setpriv, f"--bounding-set={caps}", "true"], capture_output=True)
    return [setpriv, f"--bounding-set={caps}"] if probe.returncode == 0 else None


class Run:
    """The hostile folder, indexed once by a real `dinosearch index` run; shared by the tests below."""

    def __init__(self, base: Path, model: str):
        self.root = base / "photos"
        self.index = base / "index"
        self.root.mkdir()
        self.expect: dict[str, object] = {}
        for name, (data, expectation) in _files().items():
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.expect[name] = expectation
        for name, data, expectation in ((NON_UTF8, jpeg_bytes(photo(160, 120, seed=26)), INDEXED), (NON_UTF8_BAD, H.random_bytes(seed=1), failed("not-an-image"))):
            with open(os.path.join(os.fsencode(self.root), name), "wb") as f:
                f.write(data)
            self.expect[os.fsdecode(name)] = expectation
        self.expect.update(_special(self.root))
        # A fake Ghostscript first on PATH: if any codec ever ran it, the marker would appear.
        self.bin = base / "bin"
        self.bin.mkdir()
        self.gs_marker = base / "ghostscript-ran"
        gs = self.bin / "gs"
        gs.write_text(f"#!/bin/sh\ntouch '{self.gs_marker}'\nexit 1\n")
        gs.chmod(0o755)
        self.env = {
            **os.environ,
            "DINOSEARCH_INDEX": str(self.index),
            "DINOSEARCH_MODEL": model,
            FAULTS_ENV: "1",
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        # Through a parent that reports the largest resident set of its process tree (decode workers
        # included: each is waited for by the indexer, whose own children's peak the kernel passes up).
        measure = (
            "import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:])\n"
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(p.returncode)\n"
        )
        self.proc = subprocess.run(
            [sys.executable, "-c", measure, sys.executable, "-m", "dinosearch", "index", str(self.root), "--json"],
            capture_output=True, text=True, env=self.env, timeout=240,
        )
        peak = [line for line in self.proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
        self.peak_rss = int(peak[-1].split()[1]) * 1024 if peak else None

        self._failures: dict[str, dict[str, str]] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(*args, env=self.env, check=check, timeout=120)

    def failures(self) -> dict[str, dict[str, str]]:
        """`dinosearch failures --json`, by displayed path (run once per state of the index)."""
        if self._failures is None:
            self._failures = {f["path"]: f for f in json.loads(self.cli("failures", "--json").stdout)}
        return self._failures

    def indexed(self) -> set[str]:
        from dinosearch.store.catalogue import Catalogue

        cat = Catalogue(self.index, create=False)
        try:
            return {p for p in cat.known_under([str(self.root)])}
        finally:
            cat.close()

    def shown(self, name: str) -> str:
        return display_path(str(self.root / name))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Run:
    return Run(tmp_path_factory.mktemp("hostile"), tiny_model)


def test_the_run_finishes_and_reports(run: Run) -> None:
    assert run.proc.returncode == 0, run.proc.stderr
    report = json.loads(run.proc.stdout)
    n_failed = sum(1 for e in run.expect.values() if isinstance(e, tuple))
    n_indexed = sum(1 for e in run.expect.values() if e == INDEXED)
    assert report["added"] >= n_indexed and report["failed"] >= n_failed
    assert report["added"] + report["failed"] == len([e for e in run.expect.values() if e != SKIPPED])
    assert "Traceback" not in run.proc.stderr


def test_every_file_is_indexed_recorded_or_skipped(run: Run) -> None:
    failures, indexed = run.failures(), run.indexed()
    wrong = []
    for name, expectation in sorted(run.expect.items()):
        path = str(run.root / name)
        f = failures.get(display_path(path))
        if path in indexed:
            outcome: object = INDEXED
        elif f is not None:
            outcome = ("failed", f["error"])
        else:
            outcome = SKIPPED
        allowed = expectation if isinstance(expectation, set) else {expectation}
        ok = False
        for e in allowed:
            if isinstance(e, tuple) and isinstance(outcome, tuple) and f is not None:
                ok = ok or (e[1] == outcome[1] and all(w in f["message"] for w in e[2:]))
            else:
                ok = ok or e == outcome
        if not ok:
            wrong.append(f"{name!r}: expected {expectation}, got {outcome} {f['message'] if f else ''}")
    assert not wrong, "\n".join(wrong)


def test_failure_messages_say_what_to_do(run: Run) -> None:
    for f in run.failures().values():
        assert f["error"] in {"empty", "not-an-image", "unsupported", "corrupt", "too-large", "unreadable", "crashed", "timeout"}
        message = f["message"]
        assert len(message) > 20 and "Traceback" not in message
        assert any(w in message for w in ("re-export", "re-copy", "supported", "downscale", "limit", "readable")), message


def test_no_codec_outside_the_allowlist_ran(run: Run) -> None:
    assert not run.gs_marker.exists(), "Ghostscript was started for an EPS file"


def test_memory_stays_bounded(run: Run) -> None:
    if run.peak_rss is None:
        pytest.skip("no peak RSS reported on this platform")
    # A 100 MP PNG decodes in ~0.5 GB; the 1x100000 strips would have needed 19 GB each before
    # the crop-aware resize. Model, FAISS and workers stay well under this.
    assert run.peak_rss < 1.5 * GIB, f"peak RSS {run.peak_rss / GIB:.2f} GiB"


def test_stats_match_the_rows(run: Run) -> None:
    stats = json.loads(run.cli("stats", "--json").stdout)
    assert stats["images"] == len(run.indexed()) == stats["vectors"]
    assert stats["failed"] == len(run.failures())


# Names ------------------------------------------------------------------------------------------
def test_names_are_printed_escaped_and_valid_json(run: Run) -> None:
    failures = run.failures()  # json.loads succeeded: valid JSON
    assert run.shown("names/bad\nname.jpg") in failures
    assert display_path(os.fsdecode(os.path.join(os.fsencode(run.root), NON_UTF8_BAD))) in failures
    assert any("\\xff\\xfe-broken.png" in p for p in failures)
    text = run.cli("failures").stdout
    # Two lines per failure (path, then an indented reason): no name may break a line or carry an escape.
    lines = text.splitlines()
    assert len(lines) == 2 * len(failures)
    assert all(line.startswith("    ") for line in lines[1::2])
    assert "bad\\nname.jpg" in text and "\x1b" not in text


def test_odd_names_are_queryable(run: Run, tmp_path: Path) -> None:
    from dinosearch import Index

    names = ["names/new\nline.jpg", "names/100%.jpg", "names/under_score.jpg", "names/-dash.jpg",
             "names/tab\tand\x1b[31mescape.jpg", os.fsdecode(NON_UTF8)]
    with Index(run.index, create=False) as ix:
        for name in names:
            path = str(run.root / name)
            # A copy outside the index finds the original at rank 1 (same content: the stored vector).
            copy = tmp_path / "copy.jpg"
            copy.write_bytes(Path(path).read_bytes())
            hits = ix.search(copy, k=3)
            assert hits[0].path == path and hits[0].score > 0.999, (name, hits)
            # The file itself is a query too, and never its own result.
            assert all(h.path != path for h in ix.search(path, k=3))
    # Through the CLI: a name with a newline and an escape sequence prints on one line, escaped.
    copy = tmp_path / "copy.jpg"
    copy.write_bytes((run.root / "names/tab\tand\x1b[31mescape.jpg").read_bytes())
    text = run.cli("query", str(copy), "-k", "3").stdout
    lines = text.splitlines()
    assert len(lines) == 3 and "\x1b" not in text and "tab\\tand\\x1b[31mescape.jpg" in lines[0]
    out = json.loads(run.cli("query", str(copy), "-k", "3", "--json").stdout)["results"]
    assert out[0]["path"] == run.shown("names/tab\tand\x1b[31mescape.jpg")
    # The file itself as the query, by its own (non-UTF-8) name, and a leading '-' after `--`.
    raw = os.path.join(os.fsencode(run.root), NON_UTF8)
    proc = subprocess.run([sys.executable, "-m", "dinosearch", "query", raw, "--json"], capture_output=True, env=run.env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"]
    proc = subprocess.run(
        [sys.executable, "-m", "dinosearch", "query", "--json", "--", "-dash.jpg"],
        capture_output=True, text=True, env=run.env, cwd=run.root / "names", timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert results and all(h["path"] != run.shown("names/-dash.jpg") for h in results)


# Unreadable files and folders (last: it changes the folder) -----------------------------------------
def test_unreadable_file_and_folder(run: Run) -> None:
    prefix = _can_drop_file_permissions()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced here")
    secret = run.root / "unreadable.jpg"
    secret.write_bytes(jpeg_bytes(photo(160, 120, seed=40)))
    secret.chmod(0)
    locked = run.root / "locked"
    locked.chmod(0)
    odd = run.root / "odd\x1b[2Jname"  # a terminal escape in a folder name must not reach the terminal
    odd.mkdir()
    odd.chmod(0)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "dinosearch", "index", str(run.root), "--json"],
            capture_output=True, text=True, env=run.env, timeout=120,
        )
    finally:
        secret.chmod(0o644)
        locked.chmod(0o755)
        odd.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert f"cannot list {locked}; its indexed images were kept" in proc.stderr
    assert "\x1b" not in proc.stderr and "odd\\x1b[2Jname" in proc.stderr
    run._failures = None
    failures = run.failures()
    assert failures[str(secret)]["error"] == "unreadable"
    assert "permission denied" in failures[str(secret)]["message"]
    assert str(locked / "inside.jpg") in run.indexed()  # never swept for being out of sight

    # Made readable again (chmod leaves the mtime as it was): the next run indexes it.
    again = run.cli("index", str(run.root), "--json")
    assert json.loads(again.stdout)["added"] >= 1
    run._failures = None
    assert str(secret) not in run.failures()
    assert str(secret) in run.indexed()


# Unit level: what the folder above cannot show -------------------------------------------------------
def test_first_frame_and_first_page_only() -> None:
    still = decode(H.encode(H.frames(1)[0], "PNG"), PRE).pixels
    for data in (H.animated_gif(300), H.animated_webp(300), H.multipage_tiff(3)):
        assert np.array_equal(decode(data, PRE).pixels, still)


def test_cmyk_icc_profile_is_honoured() -> None:
    """The profile maps cyan to yellow: a decoder that ignored it would give cyan."""
    with_icc, _, _ = load_rgb(H.cmyk_jpeg(H.cmyk_icc_profile(H.rotated_rgb)))
    without, _, _ = load_rgb(H.cmyk_jpeg())
    broken, _, _ = load_rgb(H.cmyk_jpeg(b"not an ICC profile"))
    r, g, b = with_icc.getpixel((40, 40))
    assert r > 200 and g > 200 and b < 60
    assert without.getpixel((40, 40))[0] < 60 and broken.getpixel((40, 40)) == without.getpixel((40, 40))


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (7, 60_000), (3000, 200), (200, 3000)])
def test_extreme_aspect_ratios_resize_only_what_is_kept(size: tuple[int, int]) -> None:
    """The centre crop of a long strip, without materialising the 256 x 25,600,000 px resize."""
    im = photo(*size, seed=3) if max(size) <= 3000 else Image.new("RGB", size, (10, 120, 230))
    d = decode(H.encode(im, "PNG"), PRE)
    assert d.pixels.shape == (224, 224, 3) and (d.width, d.height) == size
    if max(size) <= 3000:  # small enough to compare with the plain full resize + crop
        from dinosearch import decode as decode_module

        w, h = size
        s = 256 / min(w, h)
        full = im.resize((max(256, int(w * s)), max(256, int(h * s))), resample=PRE.resample)
        left, top = (full.width - 224) // 2, (full.height - 224) // 2
        ref = np.asarray(full.crop((left, top, left + 224, top + 224)))
        assert np.abs(ref.astype(int) - d.pixels.astype(int)).max() <= 2
        assert decode_module.MAX_FULL_RESIZE_ASPECT >= 8  # ordinary photos keep the exact path
    else:
        assert np.abs(d.pixels.astype(int) - np.array([10, 120, 230])).max() <= 1


def test_damaged_header_of_a_real_format_is_corrupt_not_unknown() -> None:
    for data, fmt in [(H.png(0, 10), "PNG"), (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "JPEG"), (b"GIF89a" + b"\x00" * 3, "GIF")]:
        with pytest.raises(DecodeError) as err:
            decode(data, PRE)
        assert err.value.kind == "corrupt" and fmt in err.value.message


def test_walk_skips_fifos_and_links_and_survives_loops(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    os.mkfifo(root / "pipe.jpg")
    os.symlink(root / "nowhere.jpg", root / "broken.jpg")
    os.symlink(root / "l2.jpg", root / "l1.jpg")
    os.symlink(root / "l1.jpg", root / "l2.jpg")
    os.symlink(root, root / "sub" / "up")  # a loop through a folder link
    os.symlink(root / "sub" / "a.jpg", root / "link.jpg")
    plain = walk(str(root))
    assert [f.path for f in plain.files] == [str(root / "sub" / "a.jpg")]
    followed = walk(str(root), follow_symlinks=True)
    assert sorted(f.path for f in followed.files) == sorted([str(root / "link.jpg"), str(root / "sub" / "a.jpg")])
    assert not followed.unreadable


def test_a_fifo_swapped_in_after_the_walk_does_not_hang(tmp_path: Path) -> None:
    from dinosearch.route import Gone, read_file
    from dinosearch.records import ImageFile

    path = tmp_path / "late.jpg"
    os.mkfifo(path)  # nobody ever writes to it: a blocking open would wait forever
    assert isinstance(read_file(ImageFile(str(path), str(tmp_path), 0, 0)), Gone)


# Decoders that crash, hang or blow their memory --------------------------------------------------------
@pytest.mark.parametrize("by", ["bytes", "path"])
def test_crash_hang_and_memory_blowup_cost_one_file_each(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, by: str) -> None:
    """By path, a busy worker also holds its next file: that file is decoded by another worker when
    the one ahead of it crashes or hangs, never failed with it."""
    from dinosearch.workers import DecodeDone, DecodeFailed, DecodePool

    monkeypatch.setenv(FAULTS_ENV, "1")  # inherited by the spawned workers
    tasks = {
        "good-1": jpeg_bytes(photo(96, 64, seed=1)),
        "hang": H.fault("hang"),
        "oom": H.fault("oom"),
        "segfault": H.fault("segfault"),
        "abort": H.fault("abort"),
        "good-2": jpeg_bytes(photo(96, 64, seed=2)),
        "good-3": H.encode(photo(64, 96, seed=3), "PNG"),
    }
    with DecodePool(PRE, workers=2, timeout=4, memory_limit=GIB) as pool:
        for name, data in tasks.items():
            if by == "path":
                (tmp_path / name).write_bytes(data)
            pool.submit(name, str(tmp_path / name) if by == "path" else data)
        results = {}
        for _ in tasks:
            r = pool.results.get(timeout=60)
            results[r.task] = r
    assert set(results) == set(tasks)
    for name in ("good-1", "good-2", "good-3"):
        assert isinstance(results[name], DecodeDone) and results[name].decoded.pixels.shape == (224, 224, 3)
    assert isinstance(results["hang"], DecodeFailed) and results["hang"].error == "timeout"
    assert "longer than 4 s" in results["hang"].message
    # A memory limit turns a runaway allocation into MemoryError (or, in C, a crash): one file either way.
    assert isinstance(results["oom"], DecodeFailed) and results["oom"].error in {"too-large", "crashed"}
    assert results["segfault"].error == "crashed" and "SIGSEGV" in results["segfault"].message
    assert results["abort"].error == "crashed" and "SIGABRT" in results["abort"].message
    assert pool.replaced >= 3


def test_workers_read_files_by_path_with_the_identity_of_what_they_read(tmp_path: Path) -> None:
    from dinosearch.read import content_hash
    from dinosearch.workers import DecodeDone, DecodeFailed, DecodePool

    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(photo(96, 64, seed=4)))
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "fifo.jpg")  # nobody writes to it: a blocking open would hang the worker
    (tmp_path / "text.jpg").write_text("not an image")
    tasks = {name: str(tmp_path / name) for name in ("good.jpg", "gone.jpg", "folder.jpg", "fifo.jpg", "text.jpg")}
    with DecodePool(PRE, workers=2, timeout=10) as pool:
        for name, path in tasks.items():
            pool.submit(name, path)
        results = {r.task: r for r in (pool.results.get(timeout=60) for _ in tasks)}
    st = good.stat()
    assert isinstance(results["good.jpg"], DecodeDone)
    read = results["good.jpg"].read
    assert (read.size, read.mtime_ns, read.content_hash) == (st.st_size, st.st_mtime_ns, content_hash(good.read_bytes()))
    for name in ("gone.jpg", "folder.jpg", "fifo.jpg"):
        assert isinstance(results[name], DecodeFailed) and results[name].error == "vanished"
    assert isinstance(results["text.jpg"], DecodeFailed) and results["text.jpg"].error == "not-an-image"


def _never_starts(*args) -> None:
    os._exit(7)  # a worker whose interpreter or imports are broken


def test_workers_that_cannot_start_fail_every_file_quickly_with_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import dinosearch.workers as workers

    monkeypatch.setattr(workers, "worker_main", _never_starts)
    with workers.DecodePool(PRE, workers=2, timeout=3) as pool:
        for i in range(5):
            pool.submit(i, jpeg_bytes(photo(64, 48, seed=i)))
        results = [pool.results.get(timeout=60) for _ in range(5)]
        assert pool.broken is not None and pool.replaced <= workers.MAX_STARTUP_FAILURES
    assert sorted(r.task for r in results) == list(range(5))
    for r in results:
        assert r.error == "crashed" and "could not start (exit status 7)" in r.message and "installation" in r.message


def test_a_hanging_decoder_does_not_stop_an_index_run(tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from dinosearch import Index

    monkeypatch.setenv(FAULTS_ENV, "1")
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        (root / f"p{i}.jpg").write_bytes(jpeg_bytes(photo(96, 64, seed=50 + i)))
    (root / "stuck.jpg").write_bytes(H.fault("hang"))
    with Index(tmp_path / "index", model=tiny_model, workers=2) as ix:
        report = ix.add(root, decode_timeout=2)
        assert (report.added, report.failed) == (3, 1)
        [f] = ix.failures()
        assert f.path == str(root / "stuck.jpg") and f.error == "timeout"
        assert ix.stats().vectors == 3


# Files that change under the indexer ---------------------------------------------------------------------
def _blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def test_files_rewritten_or_deleted_between_walk_and_read(tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a vector of one version stored with another version's hash, size or mtime."""
    import dinosearch.plan as planner
    from dinosearch import Index

    root = tmp_path / "photos"
    root.mkdir()
    a, b, c = root / "a.jpg", root / "b.jpg", root / "c.jpg"
    for i, p in enumerate((a, b, c)):
        p.write_bytes(jpeg_bytes(photo(160, 120, seed=60 + i)))
    new_a = jpeg_bytes(photo(300, 200, seed=69))
    real_walk = planner.walk_all

    def racing_walk(*args, **kwargs):
        result = real_walk(*args, **kwargs)
        a.write_bytes(new_a)  # rewritten after the walk saw its old size and mtime
        b.unlink()  # gone before it could be read
        return result

    monkeypatch.setattr(planner, "walk_all", racing_walk)
    with Index(tmp_path / "index", model=tiny_model, workers=1) as ix:
        report = ix.add(root)
        assert (report.added, report.failed) == (2, 0)
        assert ix.catalogue.lookup_path(str(b)) is None and not ix.failures()
        known, vector = ix.catalogue.lookup_path(str(a))
        st = a.stat()
        assert (known.content_hash, known.size, known.mtime_ns) == (_blake(new_a), st.st_size, st.st_mtime_ns)
        assert float(vector @ ix.vector_of_bytes(new_a)) > 0.9999
    monkeypatch.setattr(planner, "walk_all", real_walk)
    with Index(tmp_path / "index", model=tiny_model, workers=1) as ix:
        again = ix.add(root)
        assert (again.added, again.updated, again.unchanged) == (0, 0, 2)


@pytest.mark.parametrize("route", ["read-here", "read-by-worker"])
def test_file_rewritten_after_its_bytes_were_read(tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch, route: str) -> None:
    """The row holds the version that was read (hash, size, mtime and vector agree); the next run sees the change.

    read-here: a file the size of an indexed one (a possible copy) is read and hashed by the indexing
    process; read-by-worker: any other file is read by its decode worker."""
    import dinosearch.route as router
    from dinosearch import Index
    from dinosearch.store.catalogue import Catalogue

    root = tmp_path / "photos"
    root.mkdir()
    a = root / "a.jpg"
    old, new = jpeg_bytes(photo(160, 120, seed=70)), jpeg_bytes(photo(320, 240, seed=71))
    if route == "read-here":
        (root / "twin.jpg").write_bytes(old)  # indexed first: a.jpg then has an indexed file's size
        with Index(tmp_path / "index", model=tiny_model, workers=1) as ix:
            ix.add(root)
    a.write_bytes(old)
    os.utime(a, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    rewritten = []

    def rewrite() -> None:
        if not rewritten:
            a.write_bytes(new)
            rewritten.append(True)

    if route == "read-here":
        real_read = router.read_file

        def read_then_rewrite(f):
            r = real_read(f)
            rewrite()  # before its vector is looked up or it is decoded
            return r

        monkeypatch.setattr(router, "read_file", read_then_rewrite)
    else:
        real_lookup = Catalogue.vectors_for_hashes

        def rewrite_then_look_up(self, hashes):
            rewrite()  # the worker has read and decoded it; the row is not written yet
            return real_lookup(self, hashes)

        monkeypatch.setattr(Catalogue, "vectors_for_hashes", rewrite_then_look_up)
    with Index(tmp_path / "index", model=tiny_model, workers=1) as ix:
        assert ix.add(root).added == 1
        assert rewritten
        known, vector = ix.catalogue.lookup_path(str(a))
        assert (known.content_hash, known.size, known.mtime_ns) == (_blake(old), len(old), 1_600_000_000_000_000_000)
        assert float(vector @ ix.vector_of_bytes(old)) > 0.9999
    monkeypatch.undo()
    with Index(tmp_path / "index", model=tiny_model, workers=1) as ix:
        assert ix.add(root).updated == 1
        known, vector = ix.catalogue.lookup_path(str(a))
        assert known.content_hash == _blake(new) and float(vector @ ix.vector_of_bytes(new)) > 0.9999


@pytest.mark.parametrize("special", ["_", "%"])
def test_like_wildcards_in_folder_names_do_not_leak_into_sweeps(tmp_path: Path, tiny_model: str, special: str) -> None:
    """Re-indexing 'a_b' (or 'a%b') after a deletion there must not sweep 'aXb' (what LIKE 'a_b/%' would match)."""
    from dinosearch import Index

    mine, other = tmp_path / f"a{special}b", tmp_path / "aXb"
    for i, d in enumerate((mine, other)):
        d.mkdir()
        (d / "keep.jpg").write_bytes(jpeg_bytes(photo(96, 64, seed=80 + 2 * i)))
        (d / "gone.jpg").write_bytes(jpeg_bytes(photo(96, 64, seed=81 + 2 * i)))
    with Index(tmp_path / "index", model=tiny_model, workers=1) as ix:
        ix.add(mine)
        ix.add(other)
        (mine / "gone.jpg").unlink()
        (other / "gone.jpg").unlink()  # gone from disk, but not under the root being re-indexed
        assert ix.add(mine).removed == 1
        paths = set(ix.catalogue.known_under([str(tmp_path)]))
        assert paths == {str(mine / "keep.jpg"), str(other / "keep.jpg"), str(other / "gone.jpg")}
        assert ix.stats().vectors == 3


# Codec output, workers that cannot start, retries, Ctrl-C --------------------------------------------------
def test_codec_output_stays_off_the_terminal_and_enriches_the_failure(tmp_path: Path, tiny_model: str) -> None:
    """libtiff prints to stderr for a TIFF whose codec it lacks: not on the user's terminal, in the message."""
    root = tmp_path / "photos"
    root.mkdir()
    (root / "webp.tif").write_bytes(H.tiff_with_compression(50001))
    (root / "good.jpg").write_bytes(jpeg_bytes(photo(96, 64, seed=90)))  # so that the index is not empty
    env = {**os.environ, "DINOSEARCH_INDEX": str(tmp_path / "index"), "DINOSEARCH_MODEL": tiny_model}
    proc = run_cli("index", str(root), "--json", env=env, check=True)
    assert "tempfile.tif" not in proc.stderr and "not configured" not in proc.stderr, proc.stderr
    [failure] = json.loads(run_cli("failures", "--json", env=env, check=True).stdout)
    assert failure["error"] == "unsupported" and "the decoder said:" in failure["message"]
    assert "tempfile.tif" not in failure["message"]
    # A query with it is refused in one line, quietly, before any model is loaded (a model that
    # cannot load would otherwise be the error).
    proc = run_cli("query", str(root / "webp.tif"), env={**env, "DINOSEARCH_MODEL": str(tmp_path / "no-model")})
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "unsupported" in proc.stderr or "cannot read" in proc.stderr
    assert "tempfile.tif" not in proc.stderr and "cannot load model" not in proc.stderr


SCRIPT_WITHOUT_MAIN_GUARD = """
from dinosearch import Index

with Index({index!r}, model={model!r}, workers=2) as ix:
    print(ix.add({root!r}))
"""


def test_a_script_without_main_guard_is_a_run_level_error_and_blames_no_file(tmp_path: Path, tiny_model: str) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "good.jpg").write_bytes(jpeg_bytes(photo(96, 64, seed=7)))
    script = tmp_path / "example.py"
    script.write_text(SCRIPT_WITHOUT_MAIN_GUARD.format(index=str(tmp_path / "index"), model=tiny_model, root=str(root)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert 'if __name__ == "__main__":' in proc.stderr and "example.py" in proc.stderr
    assert proc.stderr.count("Traceback") == 1, proc.stderr  # the script's own, none from the workers
    from dinosearch import Index

    with Index(tmp_path / "index", create=False) as ix:
        assert ix.failures() == []


def test_crashed_files_are_tried_once_more_then_when_the_decoders_change(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dinosearch.plan as planner
    from dinosearch import Index

    monkeypatch.setenv(FAULTS_ENV, "1")
    root = tmp_path / "photos"
    root.mkdir()
    (root / "crash.jpg").write_bytes(H.fault("segfault"))
    with Index(tmp_path / "index", model=tiny_model, workers=1) as ix:

        def retried() -> bool:
            return [f.path for f in planner.plan(ix.catalogue, [str(root)]).todo] == [str(root / "crash.jpg")]

        ix.add(root)
        [f] = ix.failures()
        assert f.error == "crashed" and "tried once more on the next run" in f.message
        assert retried()
        ix.add(root)
        [f] = ix.failures()
        assert "failed twice" in f.message and not retried()
        monkeypatch.setattr(planner, "decoders_tag", lambda: "Pillow 99.0, pillow-heif 99.0")
        assert retried()


def test_ctrl_c_prints_one_line_and_no_worker_traceback(tmp_path: Path, tiny_model: str) -> None:
    import signal
    import time

    root = tmp_path / "photos"
    root.mkdir()
    for i in range(2):
        (root / f"p{i}.jpg").write_bytes(jpeg_bytes(photo(96, 64, seed=80 + i)))
    (root / "stuck.jpg").write_bytes(H.fault("hang"))  # keeps the run busy until interrupted
    env = {**os.environ, "DINOSEARCH_INDEX": str(tmp_path / "index"), "DINOSEARCH_MODEL": tiny_model, FAULTS_ENV: "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinosearch", "index", str(root), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(Path(f"/proc/{proc.pid}/task").glob("*/children")) or not any(
        p.read_text().strip() for p in Path(f"/proc/{proc.pid}/task").glob("*/children")
    ):
        time.sleep(0.2)  # until the decode workers exist
    time.sleep(3)  # and have started decoding
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err
