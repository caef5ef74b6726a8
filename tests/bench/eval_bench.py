"""Preparation options side by side: `dinosearch eval` figures and indexing speed for each.

    python -m tests.bench.eval_bench [--shape vit-s14|tiny] [--model DIR] [--classes N] [--per-class N]
                                     [--variants default,squash,...] [--json out.json]

A generated labelled set: each class is one photo-like "product" (a wide image, so a centre crop
cuts its ends off) and its derived views (crops, rescales, flips, colour shifts, JPEG re-encoding);
beside it a folder of derived copies for the near-duplicate figures. Each variant indexes the set into
its own index (same model, one preparation each), then runs eval on it. img/s is indexing end to end
(decode + model), the same run for every variant, so the ratios say what each option costs.

With random weights (the default) the quality figures say nothing about real images: they only show
that the machinery runs and what each option costs. Real quality must be measured with real weights:
pass --model (a downloaded facebook/dinov2-small folder), or on your own labelled photos:

    dinosearch index PHOTOS --label-from-folder --index IX --model facebook/dinov2-small [--crop-mode ...]
    dinosearch eval --index IX [--copies COPIES]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from tests.bench import data as D

VARIANTS = {
    "default": {},
    "squash": {"crop_mode": "squash"},
    "border": {"crop_mode": "border"},
    "cls+mean": {"pooling": "cls+mean"},
    "gem": {"pooling": "gem"},
    "res336": {"resolution": 336},
    "border+cls+mean": {"crop_mode": "border", "pooling": "cls+mean"},
}


def derived(base: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A view of `base`: random crop (60-100 % of each side), rescale, flip, colour shift."""
    w, h = base.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = base.crop((left, top, left + cw, top + ch))
    im = im.resize((max(32, int(cw * rng.uniform(0.5, 1.2))), max(32, int(ch * rng.uniform(0.5, 1.2)))), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.6, 1.4))
    return ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))


def make_set(root: Path, *, classes: int, per_class: int, seed: int = 0) -> tuple[Path, Path]:
    """root/set/<class>/<class>-<i>.jpg and root/copies/<class>-<i>~copy.jpg (a derived copy of each)."""
    from tests.images import photo

    images, copies = root / "set", root / "copies"
    if images.exists() and len(list(images.rglob("*.jpg"))) == classes * per_class:
        return images, copies
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        base = photo(720, 360, seed=1000 + c)  # 2:1: a centre crop loses half of it
        for i in range(per_class):
            view = derived(base, rng)
            (images / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
            view.save(images / f"c{c:02d}" / f"c{c:02d}-{i}.jpg", quality=90)
            copy = derived(view, rng) if rng.random() < 0.5 else view
            buf = io.BytesIO()
            copy.save(buf, "JPEG", quality=int(rng.integers(30, 80)))
            copies.mkdir(parents=True, exist_ok=True)
            (copies / f"c{c:02d}-{i}~copy.jpg").write_bytes(buf.getvalue())
    return images, copies


def run_variant(name: str, options: dict, *, model: str, images: Path, copies: Path, scratch: Path) -> dict:
    from dinosearch.api import Index

    ix_dir = scratch / f"ix-{name}"
    shutil.rmtree(ix_dir, ignore_errors=True)
    with Index(ix_dir, model=model, device="cpu", **options) as ix:
        report = ix.add(images, label_from_folder=True)
        t = time.perf_counter()
        result = ix.evaluate(copies=copies)
        eval_s = time.perf_counter() - t
    shutil.rmtree(ix_dir, ignore_errors=True)
    return {
        "variant": name, "options": options, "images": report.added, "index_img_s": report.images_per_second,
        "eval_s": eval_s, **result.to_dict(),
    }


def model_speeds(model: str, images: Path, variants: list[str], *, n: int = 8, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """The model alone, batch n, for each variant: (median img/s, median ratio to the first variant).

    The variants are timed in turn within each round, and the ratio is taken round by round: on a
    shared machine a slow minute then weighs on every variant alike.
    """
    from dinosearch.decode import decode
    from dinosearch.embed import Dinov2Embedder

    files = sorted(images.rglob("*.jpg"))[:n]
    embedders = {v: Dinov2Embedder(model, device="cpu", **VARIANTS[v]) for v in variants}
    pixels = {v: np.stack([decode(f.read_bytes(), e.preprocess).pixels for f in files]) for v, e in embedders.items()}
    for v, e in embedders.items():
        e.embed(pixels[v])  # warm-up
    speed: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v, e in embedders.items():
            t = time.perf_counter()
            e.embed(pixels[v])
            speed[v].append(len(files) / (time.perf_counter() - t))
    first = variants[0]
    return {
        v: (float(np.median(s)), float(np.median([a / b for a, b in zip(s, speed[first])])))
        for v, s in speed.items()
    }


def table(rows: list[dict]) -> str:
    out = [
        "| variant | options | model img/s (x first) | index img/s | R@1 | R@5 | mAP@R | k-NN acc | copies R@1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ret, dup = r["retrieval"], r.get("duplicates") or {}
        opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r["options"].items()) or "(defaults)"
        out.append(
            f"| {r['variant']} | {opts} | {r['model_img_s']:.1f} ({r['model_ratio']:.2f}) | {r['index_img_s']:.1f} | {ret['recall@1']:.3f} | "
            f"{ret['recall@5']:.3f} | {ret['map@r']:.3f} | {ret['knn_accuracy']:.3f} | {dup.get('recall@1', float('nan')):.3f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="vit-s14", choices=("vit-s14", "tiny"), help="random-weight model shape")
    ap.add_argument("--model", help="a real checkpoint folder instead of random weights")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    model = args.model or str(D.ensure_model(args.shape))
    scratch = D.scratch_dir() / "eval"
    images, copies = make_set(scratch / f"set-{args.classes}x{args.per_class}", classes=args.classes, per_class=args.per_class)
    rows = []
    for name in args.variants.split(","):
        print(f"  [eval] {name} ...", file=sys.stderr, flush=True)
        rows.append(run_variant(name, VARIANTS[name], model=model, images=images, copies=copies, scratch=scratch))
    names = args.variants.split(",")
    print("  [eval] the model alone, each variant in turn ...", file=sys.stderr, flush=True)
    for row, (img_s, ratio) in zip(rows, model_speeds(model, images, names).values()):
        row["model_img_s"], row["model_ratio"] = img_s, ratio
    weights = f"real weights ({args.model})" if args.model else f"RANDOM weights ({args.shape}): quality figures are meaningless"
    print(f"\n## eval: preparation options, {args.classes} classes x {args.per_class} derived images, {weights}\n")
    print(table(rows))
    print(
        "\nmodel img/s: the model alone, batch 8, the variants in turn, median of 3 rounds (x first: median of the\n"
        "round-by-round ratios to the first variant); index img/s: "
"`index` end to end including start-up of the decode workers, one run each (noisy).\nReal-weight quality:\n"
        "  python -m tests.bench.eval_bench --model DIR   (DIR: e.g. `hf download facebook/dinov2-small --local-dir DIR`)\n"
        "  or on your photos: dinosearch index PHOTOS --label-from-folder --index IX --model facebook/dinov2-small "
        "[--crop-mode border] && dinosearch eval --index IX"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
