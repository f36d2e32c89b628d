"""Slider-to-plot latency of the explorer in a real headless Chromium, on the embedded organism.

    python benchmarks/explorer_latency.py [--moves 6] [--per-task 8]

Serves `apps/explorer.py` (as `make demo`, no background sweep), then moves the K slider one step at a
time (ArrowRight: a K never evaluated before, so no cache hit) and times, from the key press:
    neuron view   until the rank-curve title names the new K
    LA / VA       until the trade-off title shows the new recipe's numbers (3 stages evaluated)
Prints the medians and writes benchmarks/results/explorer_latency.json with `uptime` (the load matters:
the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_app_browser import CHROMIUM, CHROMIUM_ARGS, serve_explorer  # noqa: E402 (the tests' server fixture)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moves", type=int, default=6)
    p.add_argument("--per-task", type=int, default=8)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    neuron, evals = [], []
    with serve_explorer("--per-task", str(args.per_task), "--no-sweep") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(120_000)
        page.goto(url)
        curve = page.locator(".gtitle", has_text="sorted C(i)")
        trade = page.locator(".gtitle", has_text="Trade-off")
        trade.filter(has_text="current Neu-S-TIES K=0.2 M=0.3: LA").first.wait_for()
        handle = page.locator(".bk-input-group", has_text="K (density").locator(".noUi-handle").first
        for i in range(args.moves):
            k = round(0.2 + 0.01 * (i + 1), 2)
            handle.focus()
            t0 = time.perf_counter()
            handle.press("ArrowRight")
            curve.filter(has_text=re.compile(rf"K={k:g} M=")).first.wait_for()
            neuron.append(time.perf_counter() - t0)
            trade.filter(has_text=f"current Neu-S-TIES K={k:g} M=0.3: LA").first.wait_for()
            evals.append(time.perf_counter() - t0)
            print(f"K={k:g}: neuron view {neuron[-1]:.2f} s, LA/VA {evals[-1]:.2f} s", flush=True)
        browser.close()
    out = {"moves": args.moves, "per_task": args.per_task, "neuron_view_s": neuron, "la_va_s": evals,
           "neuron_view_median_s": statistics.median(neuron), "la_va_median_s": statistics.median(evals),
           "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    print(f"median neuron view {out['neuron_view_median_s']:.2f} s, LA/VA {out['la_va_median_s']:.2f} s "
          f"({args.per_task} items per task); {out['uptime']}")
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "explorer_latency.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
