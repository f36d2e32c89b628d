"""Slider-to-plot latency of the explorer in a real headless Chromium, on the embedded organism.

    python benchmarks/explorer_latency.py [--moves 6] [--per-task 8] [--burst 8]

Serves `apps/explorer.py` (as `make demo`, no background sweep), then moves the K slider one step at a
time (ArrowRight: a K never evaluated before, so no cache hit) and times, from the key press:
    neuron view   until the rank-curve title names the new K
    LA / VA       until the trade-off title shows the new recipe's numbers (the recipe evaluated; its stages'
                  answers follow as a job of their own)
then presses ArrowRight `--burst` times in a row and times until the trade-off shows the last K (the page
evaluates where the burst stops: lfm.explorer.state.SETTLE_S). The yardstick is one evaluation of such a recipe
in this process (`LivePair.evaluate`, what the page's evaluator runs: the organism's, or a suite's
`PointRunner.evaluate`), timed on fresh K values beside the page. Targets: LA / VA <= 1.2x one evaluation, the
burst settled within 1.5x. Prints the medians and writes benchmarks/results/explorer_latency.json with `uptime`
(the load matters: the machine is shared).
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
    p.add_argument("--burst", type=int, default=8)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    from lfm.explorer.live import LivePair
    from lfm.methods import Recipe
    from lfm.organism import base_dir, tuned_dir

    pair = LivePair(base_dir(), tuned_dir())
    items = pair.eval_items(args.per_task)
    pair.evaluate(Recipe(), items)  # warm: the first evaluation pays one-off costs, as the page's first did
    one = []
    for k in (0.61, 0.62, 0.63):  # K values the page never visits
        t0 = time.perf_counter()
        pair.evaluate(Recipe(density=k), items)
        one.append(time.perf_counter() - t0)
    print(f"one evaluation (in process): median {statistics.median(one):.2f} s", flush=True)
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
        page.locator(".lfm-generations .bk-Markdown", has_text="computing the answers").first.wait_for(
            state="detached")  # the last move's answers are in: the burst starts from a quiet page
        handle.focus()
        t0 = time.perf_counter()
        for _ in range(args.burst):
            handle.press("ArrowRight")
        k = round(0.2 + 0.01 * (args.moves + args.burst), 2)
        trade.filter(has_text=f"current Neu-S-TIES K={k:g} M=0.3: LA").first.wait_for()
        burst = time.perf_counter() - t0
        print(f"{args.burst} presses to K={k:g}: settled in {burst:.2f} s", flush=True)
        browser.close()
    ref = statistics.median(one)
    out = {"moves": args.moves, "per_task": args.per_task, "neuron_view_s": neuron, "la_va_s": evals,
           "neuron_view_median_s": statistics.median(neuron), "la_va_median_s": statistics.median(evals),
           "one_evaluation_s": one, "one_evaluation_median_s": ref, "burst_presses": args.burst, "burst_s": burst,
           "la_va_over_one_evaluation": statistics.median(evals) / ref, "burst_over_one_evaluation": burst / ref,
           "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    print(f"median neuron view {out['neuron_view_median_s']:.2f} s, LA/VA {out['la_va_median_s']:.2f} s "
          f"({out['la_va_over_one_evaluation']:.2f}x one evaluation, target <= 1.2x); {args.burst} presses settle "
          f"in {burst:.2f} s ({out['burst_over_one_evaluation']:.2f}x, target <= 1.5x) ({args.per_task} items per "
          f"task); {out['uptime']}")
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "explorer_latency.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
