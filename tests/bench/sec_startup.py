"""Section `startup`: `dinosearch --help`, `stats`, `query <indexed image>` wall time; torch must not be
imported."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.bench import data as D
from tests.bench.core import T_QUERY, T_STARTUP, WRAP, Bench, Table, spread, verdict
from tests.bench.tree import imported, time_cli, tree_index


def run(bench: Bench, t: Table) -> None:
    tree, ix, _ = tree_index(bench)
    n = bench.a.startup_repeats
    query_img = sorted((tree / "d000").glob("*.jpg"))[0]
    cases = [
        ("dinosearch --help", ("--help",), T_STARTUP),
        ("dinosearch stats", ("stats", "--index", str(ix)), T_STARTUP),
        ("dinosearch query <indexed image>", ("query", str(query_img), "--index", str(ix), "-k", "10"), T_QUERY),
    ]
    t.note(f"median of {n} fresh processes each; index of {bench.a.tree_n} images; no model may be loaded")
    out: dict[str, Any] = {}
    for name, args, target in cases:
        s, runs = time_cli(bench, n, *args)
        torch_in = imported(runs, "torch")
        ok = [r for r in runs if r["rc"] == 0]
        t.add(name, s["median"], "s", spread(s), verdict(s["median"], target, higher=False))
        t.add("  torch imported", torch_in, "", "", ("PASS" if torch_in == "no" else "MISS") if name != "dinosearch --help" else "")
        if len(ok) < len(runs):
            t.note(f"ERROR: exit {runs[0]['rc']}: {runs[0]['stderr'].strip()[-300:]}")
        out[name] = {"seconds": s, "torch_imported": torch_in, "modules": runs[0]["modules"] if runs else {}}
    # Where start-up time goes: import time (python -X importtime) of the commands that must be fast.
    for name, args, _ in cases[1:]:
        imp = _importtime(args)
        if imp:
            total = sum(ms for _, ms in imp)
            t.note(f"`{name}` imports {total:.0f} ms in all; largest: " + ", ".join(f"{m} {ms:.0f}" for m, ms in imp[:6]))
            out[name]["imports_total_ms"] = round(total)
            out[name]["imports_ms"] = [(m, round(ms, 1)) for m, ms in imp[:15]]
    bench.put("startup", "cases", out)


def _importtime(args: tuple[str, ...]) -> list[tuple[str, float]]:
    env = {**os.environ, "BENCH_MODULES_OUT": os.devnull}
    try:
        p = subprocess.run([sys.executable, "-X", "importtime", "-c", WRAP, *args], cwd=D.REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return []
    tops: dict[str, float] = {}
    for line in p.stderr.splitlines():
        # "import time:   self [us] | cumulative | imported package"; top-level = no indentation
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        name = parts[2].rstrip()
        if name.startswith(" " * 2) or not parts[1].strip().isdigit():
            continue
        tops[name.strip()] = tops.get(name.strip(), 0.0) + int(parts[1]) / 1000
    return sorted(tops.items(), key=lambda kv: -kv[1])
