"""Slider-to-numbers latency of the explorer in a real headless Chromium: on the embedded organism, or on the real
pair (`lfm realpair build`'s output) or any pair with its suite.

    python benchmarks/explorer_latency.py                                   # the organism
    python benchmarks/explorer_latency.py --realpair [ROOT] [--preset paper] [--seed 0]
                                          # ROOT/base and ROOT/<preset>/seed<N>/tuned, evaluated on ROOT/suite
    python benchmarks/explorer_latency.py --base B --tuned T --suite S.yaml
    options: [--moves 6] [--per-task 8] [--burst 8] [--out JSON]

Serves `apps/explorer.py` (no background sweep), then moves the K slider one step at a time (ArrowRight: a K never
evaluated before, so no cache hit) and times, from the key press, in the order the page draws them:
    first LA / VA until the trade-off shows the new recipe's numbers from its first items per task (a long live
                  evaluation's numbers arrive from the first lfm.explorer.state.FIRST_ITEMS items per task, then
                  from all; one taking less than PREVIEW_AFTER_S arrives once: then first = all)
    LA / VA       until the trade-off shows its numbers on all `--per-task` items
    neuron view   until the rank-curve title names the new K (the neuron views follow the numbers; its stages'
                  answers follow as a job of their own)
then presses ArrowRight `--burst` times in a row and times until the trade-off shows the last K's numbers on all
items (the page evaluates where a burst stops: lfm.explorer.state.SETTLE_S).

The yardstick is one evaluation of such a recipe in this process, timed on K values the page never visits: on a
pair with a suite `PointRunner.evaluate` (what the page's evaluator runs, on a model of its own here), on the
organism its in-process evaluator (`LivePair.evaluate`, the page's). Its model is freed before the page is served.
Targets: LA / VA <= 1.2x one evaluation, the burst settled within 1.5x. Prints the medians and writes JSON (default
benchmarks/results/explorer_latency.json, or explorer_latency_realpair.json for --realpair) with `uptime` (the load
matters: the machine is shared).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from lfm.cli import let_idle_threads_sleep  # noqa: E402

# before torch is imported, as the `lfm` command (and the page's server) does: the yardstick's OpenMP threads spinning
# on this shared machine made one evaluation of the smoke real pair 5 s instead of 1 s
let_idle_threads_sleep()

from lfm.explorer.state import PREVIEW_AFTER_S  # noqa: E402
from test_app_browser import CHROMIUM, CHROMIUM_ARGS, serve_explorer  # noqa: E402 (the tests' server fixture)

REFERENCE_KS = (0.61, 0.62, 0.63)  # the yardstick's K values: the page never visits them


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit 2, nothing run."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def pair_of(args) -> tuple[dict | None, str]:
    """({'base', 'tuned', 'suite'} or None for the organism, what it is in words); a missing pair exits 2 in one
    line (exit 2)."""
    if args.realpair is not None:
        from lfm.realpair.study import pair_paths

        try:
            paths = pair_paths(args.realpair or None, args.seed, args.preset)
        except FileNotFoundError as e:
            fail(str(e))
        return {k: str(paths[k]) for k in ("base", "tuned", "suite")}, f"real pair {paths['run']}"
    if args.base or args.tuned or args.suite:
        if not (args.base and args.tuned and args.suite):
            fail("--base, --tuned and --suite go together (a pair is timed on its suite)")
        for key in ("base", "tuned", "suite"):
            if not Path(getattr(args, key)).exists():
                fail(f"--{key} {getattr(args, key)}: no such path")
        return {"base": args.base, "tuned": args.tuned, "suite": args.suite}, f"pair {args.tuned}"
    return None, "organism"


def one_evaluation(pair: dict | None, per_task: int) -> list[float]:
    """Seconds of one evaluation of Neu-S-TIES K M=0.3 for each of REFERENCE_KS, after one warm-up evaluation
    (the first pays one-off costs, as the page's first did)."""
    from lfm.methods import Recipe

    if pair is None:
        from lfm.explorer.live import LivePair
        from lfm.organism import base_dir, tuned_dir

        live = LivePair(base_dir(), tuned_dir())
        items = live.eval_items(per_task)
        run = lambda recipe: live.evaluate(recipe, items)  # noqa: E731
    else:
        from lfm.evaluate.sweep import PointRunner

        runner = PointRunner(pair["base"], pair["tuned"], pair["suite"])
        limit = per_task if per_task > 0 else None
        run = lambda recipe: runner.evaluate(recipe, limit=limit, log_samples=True)  # noqa: E731
    run(Recipe())
    seconds = []
    for k in REFERENCE_KS:
        t0 = time.perf_counter()
        run(Recipe(density=k))
        seconds.append(time.perf_counter() - t0)
    return seconds


def n_text(per_task: int) -> str:
    from lfm.explorer.figures import items_text

    return items_text(per_task)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--realpair", nargs="?", const="", default=None, metavar="ROOT",
                   help="time the real pair built by `lfm realpair build` under ROOT (default ~/.cache/lfm/realpair)")
    p.add_argument("--preset", default="paper", help="with --realpair: the build preset (paper, smoke, ...)")
    p.add_argument("--seed", type=int, default=0, help="with --realpair: the build seed")
    p.add_argument("--base", help="a base LLM directory (with --tuned and --suite)")
    p.add_argument("--tuned", help="a tuned MLLM directory (with --base and --suite)")
    p.add_argument("--suite", help="the pair's suite YAML (with --base and --tuned)")
    p.add_argument("--moves", type=int, default=6, help="single K moves timed")
    p.add_argument("--per-task", type=int, default=8, help="items per task the page evaluates (0 = all)")
    p.add_argument("--burst", type=int, default=8, help="key presses in the burst")
    p.add_argument("--out", help="the JSON written (default benchmarks/results/explorer_latency[_realpair].json)")
    args = p.parse_args(argv)
    if args.moves < 1 or args.burst < 1 or args.per_task < 0:
        fail("--moves and --burst are at least 1, --per-task at least 0")
    pair, what = pair_of(args)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

    one = one_evaluation(pair, args.per_task)
    gc.collect()  # the yardstick's model is gone before the page loads its own
    ref = statistics.median(one)
    print(f"{what}: one evaluation (in process): median {ref:.2f} s", flush=True)
    serve = ["--per-task", str(args.per_task), "--no-sweep"]
    if pair is not None:
        serve = ["--base", pair["base"], "--tuned", pair["tuned"], "--suite", pair["suite"], *serve]
    else:  # named: the page's default pair may be another one (the real pair, once built)
        from lfm.organism import base_dir, tuned_dir

        serve = ["--base", str(base_dir()), "--tuned", str(tuned_dir()), *serve]
    full = n_text(args.per_task)

    def numbers(trade, k, *, all_items: bool):
        """The trade-off title with the numbers of K=k (on all items: its head line says nothing of first items,
        lfm.explorer.figures.tradeoff)."""
        numbers = rf"current Neu-S-TIES K={k:g} M=0\.3: LA [0-9.]+ VA [0-9.]+ OA [0-9.]+"
        return trade.filter(has_text=re.compile(("^Trade-off LA vs VA" if all_items else "") + numbers))

    neuron, first, evals = [], [], []
    with serve_explorer(*serve) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(900_000)  # the real pair's first load and references take minutes on 2 cores
        page.goto(url)
        curve = page.locator(".gtitle", has_text="sorted C(i)")
        trade = page.locator(".gtitle", has_text="Trade-off")
        answers_computing = page.locator(".lfm-generations .bk-Markdown", has_text="computing the answers")
        numbers(trade, 0.2, all_items=True).first.wait_for()
        handle = page.locator(".bk-input-group", has_text="K (density").locator(".noUi-handle").first
        def quiet():
            """The page done with the last move: its stages' answers arrived and the browser has drawn them."""
            answers_computing.first.wait_for(state="detached")
            page.evaluate("() => new Promise(done => requestIdleCallback(() => done(), {timeout: 10000}))")

        for i in range(args.moves):
            quiet()  # each move starts from a quiet page
            k = round(0.2 + 0.01 * (i + 1), 2)
            handle.focus()
            t0 = time.perf_counter()
            handle.press("ArrowRight")
            # in the order the page draws them: the numbers, then the neuron views (lfm.explorer.state._evaluate_job)
            numbers(trade, k, all_items=False).first.wait_for()
            first.append(time.perf_counter() - t0)
            numbers(trade, k, all_items=True).first.wait_for()
            evals.append(time.perf_counter() - t0)
            curve.filter(has_text=re.compile(rf"K={k:g} M=")).first.wait_for()
            neuron.append(time.perf_counter() - t0)
            print(f"K={k:g}: first LA/VA {first[-1]:.2f} s, LA/VA on {full} {evals[-1]:.2f} s, neuron view "
                  f"{neuron[-1]:.2f} s", flush=True)
        quiet()  # the burst starts from a quiet page
        handle.focus()
        t0 = time.perf_counter()
        for _ in range(args.burst):
            handle.press("ArrowRight")
        k = round(0.2 + 0.01 * (args.moves + args.burst), 2)
        try:
            numbers(trade, k, all_items=True).first.wait_for(timeout=120_000)
            landed = k
        except PlaywrightTimeout:  # a press lost in the burst (docs/explorer.md): time where the slider stopped
            landed = round(float(handle.get_attribute("aria-valuenow")), 2)
            try:
                numbers(trade, landed, all_items=True).first.wait_for(timeout=120_000)
            except PlaywrightTimeout:  # the slider and the numbers disagree: say so, never wait forever
                fail(f"the burst did not settle: the slider shows K={landed:g} (pressed to K={k:g}), the trade-off "
                     f"says {trade.all_inner_texts()}")
        burst = time.perf_counter() - t0
        print(f"{args.burst} presses to K={k:g}: settled in {burst:.2f} s"
              + ("" if landed == k else f" (the slider stopped at K={landed:g}: a press was lost)"), flush=True)
        browser.close()
    out = {"pair": what, **({} if pair is None else pair), "moves": args.moves, "per_task": args.per_task,
           "neuron_view_s": neuron, "first_la_va_s": first, "la_va_s": evals,
           "neuron_view_median_s": statistics.median(neuron), "first_la_va_median_s": statistics.median(first),
           "la_va_median_s": statistics.median(evals), "one_evaluation_s": one, "one_evaluation_median_s": ref,
           "preview_after_s": PREVIEW_AFTER_S, "burst_presses": args.burst, "burst_s": burst, "burst_target_k": k, "burst_landed_k": landed,
           "first_la_va_over_one_evaluation": statistics.median(first) / ref,
           "la_va_over_one_evaluation": statistics.median(evals) / ref, "burst_over_one_evaluation": burst / ref,
           "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    print(f"{what}: median neuron view {out['neuron_view_median_s']:.2f} s, first LA/VA "
          f"{out['first_la_va_median_s']:.2f} s ({out['first_la_va_over_one_evaluation']:.2f}x), LA/VA on {full} "
          f"{out['la_va_median_s']:.2f} s ({out['la_va_over_one_evaluation']:.2f}x one evaluation, target <= 1.2x); "
          f"{args.burst} presses settle in {burst:.2f} s ({out['burst_over_one_evaluation']:.2f}x, target <= 1.5x); "
          f"{out['uptime']}")
    default = "explorer_latency_realpair.json" if args.realpair is not None else "explorer_latency.json"
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
