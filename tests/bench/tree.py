"""The tree of small files, its first index (built once, cached) and timed `dinosearch` commands on it;
shared by the reindex, startup and memory sections."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tests.bench import data as D
from tests.bench.core import Bench, log, summary


def build_json(bench: Bench) -> Path:
    """Where the first index of the tree records its build (wall, RSS, CPU)."""
    return D.BENCH_DIR / f"tree-{bench.a.tree_n}-index.build.json"


def tree_index(bench: Bench) -> tuple[Path, Path, Path]:
    """(tree, its cached index, the tiny model); the first index is built once and cached."""
    if bench.tree_ix is not None:
        return bench.tree_ix
    a = bench.a
    tree = D.ensure_tree(a.tree_n)
    tiny = D.ensure_model("tiny")
    ix = D.BENCH_DIR / f"tree-{a.tree_n}-index"
    for attempt in range(2):
        if a.rebuild_tree_index or attempt or not (ix / "catalogue.sqlite3").exists():
            shutil.rmtree(ix, ignore_errors=True)
            log(f"first index of {a.tree_n} files with the tiny model (cached in {ix}; a minute or two on 2 cores)")
            res = bench.child("tree-build", index=str(ix), model=str(tiny), paths=[str(tree)], rss_interval=0.25)
            res["built_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            build_json(bench).write_text(json.dumps(res))
            bench.tree_built = True
            if not res.get("ok"):
                raise RuntimeError(f"first index of the tree failed: {res.get('error')}")
        # Warm-up, and a check that the cached index matches the tree and this code.
        w = bench.cli("index", str(tree), "--index", str(ix), "--model", str(tiny), "--json", timeout=a.timeout)
        try:
            rep = json.loads(w["stdout"])
        except ValueError:
            rep = {}
        if w["rc"] == 0 and rep.get("unchanged") == a.tree_n and not rep.get("added") and not rep.get("updated"):
            break
        log(f"cached tree index unusable (rc {w['rc']}, {rep or w['stderr'].strip()[-300:]}); rebuilding")
    else:
        raise RuntimeError("the tree index could not be built")
    bench.tree_ix = (tree, ix, tiny)
    return bench.tree_ix


def time_cli(bench: Bench, n: int, *args: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    runs = [bench.cli(*args, timeout=bench.a.timeout) for _ in range(n)]
    return summary([r["seconds"] for r in runs if r["rc"] == 0]), runs


def imported(runs: list[dict[str, Any]], mod: str) -> str:
    seen = {r["modules"].get(mod) for r in runs if r["modules"]}
    if not seen:
        return "unknown"
    return "yes" if True in seen else "no"
