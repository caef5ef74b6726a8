"""`make demo`: index the sample catalogue in data/, query it with a photo of a product, show the results.

Uses the real model (facebook/dinov2-small, or $DINOSEARCH_MODEL). Only when that cannot be had (no
network, nothing cached) does the demo, and only the demo, build a random-weight DINOv2 of the real
shape, and it says loudly that its results mean nothing. The product itself never does this.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"
WARNING = (
    "*** NOTE: the real model could not be loaded, so this demo uses a RANDOM-WEIGHTS DINOv2 of the real shape.\n"
    "*** Its scores and rankings are NOT meaningful. Download facebook/dinov2-small and set\n"
    "*** DINOSEARCH_MODEL=/path/to/it (or run with network access) for real results."
)


def pick_model() -> tuple[str, bool]:
    """(model, is_random)."""
    from .embed import Dinov2Embedder
    from .errors import ModelLoadError

    model = os.environ.get("DINOSEARCH_MODEL") or "facebook/dinov2-small"
    print(f"loading {model} ...", flush=True)
    try:
        Dinov2Embedder(model, device="cpu")
        return model, False
    except ModelLoadError as exc:
        print(f"dinosearch: {exc}")
    from .devmodel import save_random_dinov2

    random_dir = WORK / "random-dinov2-small"
    if not (random_dir / "model.safetensors").exists():
        save_random_dinov2(random_dir, shape="vit-s14")
    print(WARNING, flush=True)
    return str(random_dir), True


def sh(*args: str) -> None:
    shown = " ".join(shlex.quote(str(a)) for a in args)
    print(f"\n$ dinosearch {shown}", flush=True)
    subprocess.run([sys.executable, "-m", "dinosearch", *args], check=True)


def main() -> None:
    WORK.mkdir(exist_ok=True)
    model, is_random = pick_model()
    index = WORK / "index"
    catalog = REPO / "data" / "samples"
    # A "photo taken in the shop": the red bag, smaller, re-compressed and slightly cropped.
    query = WORK / "photo-of-a-red-bag.jpg"
    with Image.open(catalog / "bag-red.jpg") as im:
        im.crop((20, 20, 460, 460)).resize((300, 300)).save(query, quality=70)
    suffix = "-random" if is_random else ""
    index = index.with_name(index.name + suffix)
    sh("index", str(catalog), "--index", str(index), "--model", model, "--metadata", str(REPO / "data" / "products.csv"))
    sh("query", str(query), "--index", str(index), "-k", "5")
    sh("stats", "--index", str(index))
    if is_random:
        print("\n" + WARNING)
    print(f"\nTry your own: .venv/bin/dinosearch query YOUR_PHOTO.jpg --index {index}")
    print(f"Search page:  make serve SERVE_ARGS='--index {index}'   (then open http://127.0.0.1:8000/)")


if __name__ == "__main__":
    main()
