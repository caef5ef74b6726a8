"""Section `memory`: peak and start/middle/end RSS of indexing (the e2e runs and the first index of the tree)."""

from __future__ import annotations

import json

from tests.bench import data as D
from tests.bench.core import Bench, Table, spread, summary
from tests.bench.indexing import e2e_runs
from tests.bench.tree import build_json, tree_index


def run(bench: Bench, t: Table) -> None:
    _e2e(bench, t)
    if not build_json(bench).exists():
        tree_index(bench)  # the flat-memory check: the first index of the tree, built (and cached) now
    if build_json(bench).exists():
        _tree_first_index(bench, t)


def _e2e(bench: Bench, t: Table) -> None:
    runs = [r for r in e2e_runs(bench, repeats=1) if r.get("ok") and not r.get("cold")]
    if not runs:
        return
    peak_self = summary([r.get("peak_rss_self_mib") for r in runs])
    peak_kid = summary([(r.get("rss") or {}).get("peak_child_mib") for r in runs])
    peak_total = summary([(r.get("rss") or {}).get("peak_total_mib") for r in runs])
    t.note(f"e2e ({len(bench.photos())} photos of {D.PHOTO_W}x{D.PHOTO_H}), median of {len(runs)} run(s); "
           "peaks are VmHWM (ru_maxrss inherits the parent's size across fork+exec)")
    t.add("peak RSS, indexing process (VmHWM)", peak_self["median"], "MiB", spread(peak_self, 0), digits=0)
    t.add("peak RSS, largest decode worker (VmHWM)", peak_kid["median"], "MiB", spread(peak_kid, 0), digits=0)
    t.add("peak RSS, process + workers together (sampled)", peak_total["median"], "MiB", spread(peak_total, 0), digits=0)
    rss = runs[-1].get("rss") or {}
    if rss:
        t.add("  sampled total RSS start / mid / end", None, "", "",
              f"{rss['start']['total_mib']:.0f} / {rss['mid']['total_mib']:.0f} / {rss['end']['total_mib']:.0f} MiB")
    bench.put("memory", "e2e", {"peak_rss_self_mib": peak_self, "peak_child_mib": peak_kid, "peak_total_mib": peak_total,
                                "rss_last_run": rss})


def _tree_first_index(bench: Bench, t: Table) -> None:
    b = json.loads(build_json(bench).read_text())
    if not (b.get("ok") and b.get("rss")):
        return
    rss = b["rss"]
    t.note(f"first index of the {bench.a.tree_n}-file tree (tiny model), "
           f"{'measured in this run' if bench.tree_built else 'recorded ' + str(b.get('built_at')) + ' (cached; --rebuild-tree-index re-measures)'}")
    t.add("  wall / images per second", b["seconds"], "s", "", f"{b['report_images_per_second']:.0f} img/s", digits=1)
    t.add("  RSS own  p10 / mid / p90 / end", None, "", "",
          " / ".join(f"{rss[k]['own_mib']:.0f}" for k in ("p10", "mid", "p90", "end")) + " MiB")
    t.add("  RSS total p10 / mid / p90 / end", None, "", "",
          " / ".join(f"{rss[k]['total_mib']:.0f}" for k in ("p10", "mid", "p90", "end")) + " MiB")
    growth = rss["p90"]["own_mib"] - rss["p10"]["own_mib"]
    t.add("  growth of the indexer p10 -> p90", growth, "MiB", "", "flat" if abs(growth) < 50 else "GROWS", digits=0)
    t.add("  peak RSS indexer / largest worker (VmHWM)", b.get("peak_rss_self_mib"), "MiB", "",
          f"{rss.get('peak_child_mib', '?')} MiB", digits=0)
    t.add("  CPU seconds: indexer / decode workers", b.get("cpu_self_s"), "s", "", f"{b.get('cpu_children_s', 0):.1f} s", digits=1)
    bench.put("memory", "tree_first_index", {k: b.get(k) for k in ("seconds", "rss", "peak_rss_self_mib",
                                                                   "cpu_self_s", "cpu_children_s", "built_at", "report")})
