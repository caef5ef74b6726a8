"""Index kinds: which FAISS index a collection gets, and what can be asked of one whatever its kind.

Exact search (`IDMap2,Flat`) while the collection is small; above `CROSSOVER` vectors, or when the
flat vectors would not fit the memory budget, an inverted file (IVF) with scalar-quantised (SQ8) or,
under a tight budget, product-quantised (PQ) codes. An IVF index stores the row ids itself, adds and
removes by id, and can be memory-mapped; HNSW can do neither removal nor mapping, so it is refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import DinosearchError
from .layout import FLAT

# Vectors above which `auto` leaves exact search. Measured on 2 cores, 384-d: one flat search takes
# ~7-14 ms at 100k and grows linearly (132 ms at 1M), while IVF stays near 1-2 ms at a tuned nprobe;
# below ~100k the flat index is fast enough and needs no training or tuning.
CROSSOVER = 100_000
AUTO = "auto"


class IndexTypeError(DinosearchError):
    """An --index-type that FAISS does not know, or a kind that cannot be updated in place."""


def faiss_module() -> Any:
    import faiss

    return faiss


# At most this many inverted lists. Training k-means costs lists x training points (40 per list), and
# filling the index costs N x lists: at 10M vectors on 2 cores, 16,384 lists (4*sqrt(N)) were still
# training after 20 minutes (at 1M, 4,096 lists train, fill and tune in 70-85 s). Past 4,096 the lists grow instead,
# and nprobe is tuned to the recall target either way (FAISS's guide to 1-10M picks 65,536 lists with an
# HNSW quantiser, for machines that can train it).
MAX_NLIST = 4096


def nlist_for(count: int) -> int:
    """Inverted lists for `count` vectors: a power of two near 4*sqrt(N) (FAISS's guide: 4..16*sqrt(N)),
    at most MAX_NLIST, at least 1 and at most count/39, so that k-means has ~39 training points per centroid."""
    target = 4 * math.sqrt(max(count, 1))
    nlist = 1 << max(0, round(math.log2(target)))
    return int(max(1, min(nlist, MAX_NLIST, max(1, count // 39))))


def choose(requested: str, count: int, dim: int, budget_bytes: int | None = None) -> str:
    """The FAISS factory string for `count` vectors of `dim`: `requested` is "auto", "flat" or a
    factory string (validated). The budget caps the bytes the vectors may take in memory."""
    if requested == "flat":
        return FLAT
    if requested != AUTO:
        return validate(requested, dim)
    flat_bytes = count * dim * 4
    if count < CROSSOVER and (budget_bytes is None or flat_bytes <= budget_bytes):
        return FLAT
    nlist = nlist_for(count)
    if budget_bytes is None or count * (dim + 8) <= budget_bytes:
        return f"IVF{nlist},SQ8"
    # PQ: the largest number of sub-quantisers (bytes per vector) that divides dim and fits the budget.
    for m in sorted((m for m in range(1, dim + 1) if dim % m == 0 and m <= dim // 2), reverse=True):
        if count * (m + 8) <= budget_bytes:
            return f"IVF{nlist},PQ{m}"
    raise IndexTypeError(
        f"{count} vectors cannot fit a memory budget of {budget_bytes // 2**20} MB (at least "
        f"{count * 9 // 2**20} MB are needed): raise --index-memory"
    )


def validate(kind: str, dim: int) -> str:
    """`kind` if FAISS builds it over `dim` and it can add and remove by id; raises IndexTypeError."""
    faiss = faiss_module()
    if kind in (FLAT, "Flat"):
        return FLAT
    try:
        index = faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError with a C++ message
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise IndexTypeError(f"--index-type {kind!r} is not a FAISS factory string FAISS accepts ({first[:160]})") from None
    if faiss.try_extract_index_ivf(index) is None:
        raise IndexTypeError(
            f"--index-type {kind!r}: only auto, flat or an inverted-file index (e.g. IVF1024,SQ8 or "
            "IVF4096,PQ48) can be updated in place and memory-mapped"
        )
    return kind


def ivf_of(index: Any) -> Any:
    """The IVF index inside `index`, or None for an exact one."""
    return faiss_module().try_extract_index_ivf(index)


def is_flat(index: Any) -> bool:
    return ivf_of(index) is None


def ids_of(index: Any) -> np.ndarray:
    """Every id the index holds, (ntotal,) int64, in no particular order."""
    faiss = faiss_module()
    ivf = ivf_of(index)
    if ivf is None:
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    invlists = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if n:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), n).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def holds(index: Any, image_id: int, vector: np.ndarray) -> bool:
    """Whether the index holds `vector` ((dim,) float32) under `image_id`: exactly for a flat index;
    for an IVF index, the code stored for that id equals the code of the vector, in the list it belongs to."""
    faiss = faiss_module()
    ivf = ivf_of(index)
    v = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
    if ivf is None:
        try:
            return bool(np.array_equal(index.reconstruct(int(image_id)), v[0]))
        except RuntimeError:
            return False
    _, assigned = ivf.quantizer.search(v, 1)
    lst = int(assigned[0, 0])
    n = ivf.invlists.list_size(lst)
    if lst < 0 or n == 0:
        return False
    ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), n)
    where = np.flatnonzero(ids == image_id)
    if len(where) != 1:
        return False
    code = ivf.sa_encode(v)[0][-ivf.code_size:]
    stored = faiss.rev_swig_ptr(ivf.invlists.get_single_code(lst, int(where[0])), ivf.code_size)
    return bool(np.array_equal(np.asarray(stored), code))


def describe(index: Any) -> dict[str, Any]:
    """nlist and code size (bytes per vector) of an index; nlist None for an exact one."""
    ivf = ivf_of(index)
    if ivf is None:
        return {"nlist": None, "code_size": int(index.d) * 4}
    return {"nlist": int(ivf.nlist), "code_size": int(ivf.code_size)}
