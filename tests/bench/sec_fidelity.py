"""Section `fidelity`: the product's vectors vs AutoImageProcessor + Dinov2Model.pooler_output on the
full decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.bench.core import T_COS_DEFAULT, T_COS_FAST, Bench, Table, emulated_bf16, verdict
from tests.bench.indexing import e2e_runs
from tests.bench.reference import compare, reference, stored_vectors


def run(bench: Bench, t: Table) -> None:
    import numpy as np

    paths = bench.photos()[: bench.a.fid_n]
    ref = reference(bench, paths)
    off = ref @ ref.T
    np.fill_diagonal(off, np.nan)
    t.note(f"{len(paths)} photos vs reference (Pillow full decode + AutoImageProcessor + Dinov2Model fp32 pooler_output, CPU)")
    t.note(f"reference spread: pairwise cosine between different photos {np.nanmin(off):.4f}..{np.nanmax(off):.4f} "
           f"(random weights: neighbours are close calls)")
    rows: dict[str, Any] = {}
    # a. what the index stored (the product's default path, e2e run)
    if bench.e2e_index is None:
        e2e_runs(bench, repeats=1)
    if bench.e2e_index is not None:
        prec, got = stored_vectors(bench.e2e_index, paths, ref.shape[1])
        rows[f"index default ({prec}, {bench.device})"] = (compare(ref, got), T_COS_DEFAULT if prec.endswith("fp32") else T_COS_FAST)
    else:
        t.note("no e2e index to read vectors from (the e2e run failed)")
    # b. fast paths through the product's decode + Dinov2Embedder
    fast = ["bf16"] if bench.device == "cpu" else ["fp32", "fp16", "bf16"]
    emulated = emulated_bf16(bench.device)
    for prec in fast:
        sub = paths[:16] if emulated and prec == "bf16" else paths  # emulated bf16 is slow: fewer photos
        try:
            got = _embedder_vectors(bench, sub, prec)
            label = f"decode + Dinov2Embedder {prec} ({bench.device}{f', {len(sub)} photos' if len(sub) < len(paths) else ''})"
            rows[label] = (compare(ref[: len(sub)], got), T_COS_DEFAULT if prec == "fp32" else T_COS_FAST)
        except Exception as exc:  # noqa: BLE001
            t.note(f"{prec}: error {type(exc).__name__}: {exc}")
    out = {}
    for name, (m, target) in rows.items():
        t.add(f"{name}: mean cos", m["mean_cos"], "", "", verdict(m["mean_cos"], target), digits=5)
        t.add(f"{name}: min cos", m["min_cos"], "", "", "", digits=5)
        t.add(f"{name}: top-{m['k']} overlap", m["topk_overlap"], "", "", "", digits=3)
        out[name] = {**m, "target_mean_cos": target}
    bench.put("fidelity", "rows", out)


def _embedder_vectors(bench: Bench, paths: list[Path], precision: str) -> Any:
    import numpy as np

    from dinosearch.decode import decode
    from dinosearch.embed import Dinov2Embedder

    emb = Dinov2Embedder(str(bench.model()), device=bench.device, precision=precision)
    px = np.stack([decode(p.read_bytes(), emb.preprocess).pixels for p in paths])
    bs = emb.batch_size
    return np.concatenate([emb.embed(px[i : i + bs]) for i in range(0, len(px), bs)])
