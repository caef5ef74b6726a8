"""Section `reindex`: `dinosearch index` on an unchanged tree of small files, beyond `dinosearch --help`
start-up."""

from __future__ import annotations

import json

from tests.bench.core import T_REINDEX_PER_10K, Bench, Table, spread, summary, verdict
from tests.bench.tree import imported, time_cli, tree_index


def run(bench: Bench, t: Table) -> None:
    tree, ix, tiny = tree_index(bench)
    n_files = bench.a.tree_n
    help_s, help_runs = time_cli(bench, bench.a.startup_repeats, "--help")
    re_s, re_runs = time_cli(bench, bench.a.repeats, "index", str(tree), "--index", str(ix), "--model", str(tiny), "--json")
    bad = [r for r in re_runs if r["rc"] != 0]
    reports = []
    for r in re_runs:
        try:
            reports.append(json.loads(r["stdout"]))
        except ValueError:
            pass
    t.note(f"{n_files} unchanged small JPEGs in {n_files // 100} folders, index built with the tiny model")
    t.add("`dinosearch --help` start-up", help_s["median"], "s", spread(help_s))
    t.add("`dinosearch index` unchanged tree", re_s["median"], "s", spread(re_s))
    if reports:
        t.add("  product's report.seconds", summary([r.get("seconds") for r in reports])["median"], "s")
        if any(r.get("unchanged") != n_files or r.get("added") or r.get("updated") for r in reports):
            t.note(f"WARNING: not all files were unchanged: {reports[0]}")
    per10k = None
    if re_s["median"] is not None and help_s["median"] is not None:
        per10k = (re_s["median"] - help_s["median"]) * 10_000 / n_files
        t.add("re-index per 10k files beyond start-up", per10k, "s", "", verdict(per10k, T_REINDEX_PER_10K, higher=False))
    torch_in = imported(re_runs, "torch")
    t.add("  torch imported by the unchanged re-index", torch_in, "", "", "PASS" if torch_in == "no" else "MISS")
    t.add("  transformers imported", imported(re_runs, "transformers"))
    if bad:
        t.note(f"ERROR: {len(bad)} run(s) failed: {bad[0]['stderr'].strip()[-300:]}")
    bench.put("reindex", "files", n_files)
    bench.put("reindex", "help_s", help_s)
    bench.put("reindex", "reindex_s", re_s)
    bench.put("reindex", "per_10k_beyond_startup_s", per10k)
    bench.put("reindex", "torch_imported", torch_in)
    bench.put("reindex", "reports", reports)
