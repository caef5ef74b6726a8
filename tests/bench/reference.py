"""The reference pipeline (Pillow full decode + AutoImageProcessor + fp32 pooler_output) and how the
product's vectors are read and compared with it; shared by the naive, fidelity and fast sections."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.bench.core import Bench, log, quiet_transformers


def hf(bench: Bench, dev: str) -> tuple[Any, Any]:
    from transformers import AutoImageProcessor, AutoModel

    quiet_transformers()
    proc = AutoImageProcessor.from_pretrained(str(bench.model()))
    net = AutoModel.from_pretrained(str(bench.model())).eval().to(dev)
    return proc, net


def hf_embed(proc: Any, net: Any, dev: str, paths: list[Path], batch: int) -> Any:
    """Reference / naive path: full Pillow decode, AutoImageProcessor, fp32 pooler_output, L2-normalised."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for i in range(0, len(paths), batch):
        ims = []
        for p in paths[i : i + batch]:
            with Image.open(p) as im:
                ims.append(im.convert("RGB"))  # full-size decode (no draft)
        pv = proc(images=ims, return_tensors="pt")["pixel_values"].to(dev)
        with torch.inference_mode():
            v = net(pixel_values=pv).pooler_output
            v = torch.nn.functional.normalize(v.float(), dim=1)
        out.append(v.cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def reference(bench: Bench, paths: list[Path]) -> Any:
    """The reference vectors of `paths` (fp32, CPU), computed once per photo in a run."""
    import numpy as np

    todo = [p for p in paths if str(p) not in bench.ref]
    if todo:
        log(f"reference vectors for {len(todo)} photos (full decode + AutoImageProcessor, fp32 on CPU)")
        proc, net = hf(bench, "cpu")
        vecs = hf_embed(proc, net, "cpu", todo, 8)
        bench.ref.update({str(p): v for p, v in zip(todo, vecs)})
    return np.stack([bench.ref[str(p)] for p in paths])


def compare(ref: Any, got: Any, k: int = 10) -> dict[str, Any]:
    import numpy as np

    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    k = max(1, min(k, len(ref) - 1))

    def knn(v: Any) -> Any:
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]

    a, b = knn(ref), knn(got)
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
    return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()), "topk_overlap": overlap, "k": k, "n": len(ref)}


def stored_vectors(index_dir: Path, paths: list[Path], dim: int) -> tuple[str, Any]:
    """(the precision the index records, the vectors it stored for `paths`; zeros where missing)."""
    import numpy as np

    from dinosearch.api import Index

    with Index(index_dir, create=False) as ix:
        fp = ix.fingerprint
        got = []
        for p in paths:
            found = ix.catalogue.lookup_path(os.path.abspath(p))
            got.append(found[1] if found else np.zeros(dim, np.float32))
    return (fp.precision if fp else "?"), np.stack(got)
