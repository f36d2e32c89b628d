"""The explorer live on a 1.03B pair: open it, move sliders, write full merges into a loaded model.

The pair is the one benchmarks/merge_speed.py builds (bf16, 20 layers x 2048 hidden, GQA 32/8, FFN 5632,
vocab 32000: 1.03B LM parameters + a small vision tower) under benchmarks/_work/1b, reused when present.
Results go to benchmarks/results/explorer_scale[_<size>].json.

    one lfm merge      `lfm merge` TIES K=0.2 in a subprocess (the reference time for opening)
    open               ExplorerState(source 'pair').load(): the page's state object opens the pair live
                       (lfm.explorer.live.LivePair over lfm.resident.ResidentPair); wall time, and the peak
                       RSS of this process right after (nothing else loaded yet)
    slider moves       for each move (K, M, method, locate) of the served page's controls:
                         neuron view   ResidentPair.view of the viewed tensor under the new recipe (cold)
                         page          the move on the page itself (ExplorerApp): the viewed tensor's plot and
                                       the per-module outcome over every linear tensor, recomputed
    full apply         ResidentPair.apply(model, recipe) into LlavaForConditionalGeneration loaded from the
                       tuned directory: TIES K=0.2 and Neu-S-TIES K=0.2 M=0.3, three times each (the first
                       call includes giving the model private memory once), then both at a K not seen yet

Targets (issue 11): open <= 2x one lfm merge; a neuron-view update <= 1 s; a full apply <= 2 s (TIES) and
<= 4 s (Neu-S-TIES); peak RSS <= 3x the LM's bf16 size.

    python benchmarks/explorer_scale.py                # ~1B, cpu
    python benchmarks/explorer_scale.py --size tiny    # seconds: checks the harness
    python benchmarks/explorer_scale.py --device cuda  # the same engine on a GPU (apply part)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (control, value) in order: each is one slider / selector move on the page
MOVES = (("density", 0.3), ("density", 0.1), ("neurons", 0.5), ("neurons", 0.1), ("method", "Neu-P-TIES"),
         ("method", "TIES"), ("method", "Neu-S-TIES"), ("locate", "random"), ("locate", "top"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1b", help="pair size of benchmarks/merge_speed.py (1b | small | tiny)")
    ap.add_argument("--device", default="cpu", help="device of the resident pair for the full-apply part")
    args = ap.parse_args(argv)

    from merge_speed import build_pair
    from sweep_reuse import rss_mib

    from lfm.cli import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()  # as the `lfm` command does
    torch.set_grad_enabled(False)
    load_before = os.getloadavg()
    dirs = build_pair(args.size, ("base", "llava"))
    base, tuned = dirs["base"], dirs["llava"]

    # one `lfm merge`, in its own process (its memory is not this process's)
    out = HERE / "_work" / args.size / "explorer_scale_merge"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lfm.cli", "merge", "--quiet", "--base", str(base), "--tuned", str(tuned),
                    "--out", str(out), "--method", "ties", "--density", "0.2"], check=True)
    one_merge = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    print(f"one lfm merge (TIES): {one_merge:.1f}s", flush=True)

    # open the pair in the page's state object
    from lfm.explorer.app import ExplorerApp, extension
    from lfm.explorer.state import ExplorerState

    from transformers import LlavaForConditionalGeneration  # noqa: F401 (imported before the baseline RSS)

    extension()
    rss_libraries = rss_mib()  # python, torch, transformers, panel: before the pair
    t = time.perf_counter()
    state = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(base),
                          tuned_path=str(tuned))
    state.load()
    t_open = time.perf_counter() - t
    if state.error:
        raise SystemExit(state.error)
    source = state.source
    resident = source.resident
    peak_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_open = rss_mib()
    lm_bytes = sum(e.tuned.numel() * e.tuned.element_size() for e in resident.entries)
    n_params = sum(e.tuned.numel() for e in resident.entries)
    print(f"open: {t_open:.1f}s, peak RSS {peak_open / 2**30:.2f} GiB (LM bf16 {lm_bytes / 2**30:.2f} GiB), "
          f"evaluation: {source.eval_error or 'on'}", flush=True)

    # slider moves on the page
    app = ExplorerApp(state)
    app.__panel__()
    t = time.perf_counter()
    state.param.update(layer=state.param.layer.bounds[1] // 2, module="up_proj")  # a big tensor mid-stack
    first_page = time.perf_counter() - t
    name = next(n for n in source.names if f"layers.{state.layer}." in n and "up_proj" in n)
    controls = {"density": app.controls.density, "neurons": app.controls.neurons, "method": app.controls.method,
                "locate": app.controls.locate}
    moves = []
    for control, value in MOVES:
        recipe = _recipe_after(state, control, value)
        t = time.perf_counter()
        resident.view(name, recipe)
        t_view = time.perf_counter() - t
        t = time.perf_counter()
        controls[control].value = value
        t_page = time.perf_counter() - t
        assert state.recipe == recipe, (state.recipe, recipe)
        title = app.neurons.curve.object.layout.title.text
        moves.append({"move": f"{control}={value}", "recipe": recipe.label, "neuron_view_s": round(t_view, 3),
                      "page_s (plot + per-module outcome)": round(t_page, 3), "plot_title": title})
        print(f"  {control}={value} ({recipe.label}): neuron view {t_view:.3f}s, page {t_page:.2f}s", flush=True)

    # full merges into a loaded model
    from transformers import LlavaForConditionalGeneration

    from lfm.methods import Recipe
    from lfm.resident import ResidentPair

    if args.device != "cpu":
        resident = ResidentPair(base, tuned, device=args.device, progress=False)
    model = LlavaForConditionalGeneration.from_pretrained(tuned, dtype=torch.bfloat16).to(args.device)
    applies = {}
    for recipe in (Recipe(method="ties", density=0.2), Recipe(density=0.2, neurons=0.3)):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            resident.apply(model, recipe)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(round(time.perf_counter() - t, 2))
        applies[recipe.label] = {"first_s": times[0], "then_s": times[1:]}
        print(f"  apply {recipe.label}: {times}", flush=True)
    for recipe in (Recipe(method="ties", density=0.35), Recipe(density=0.35, neurons=0.3)):  # a K not seen yet
        t = time.perf_counter()
        resident.apply(model, recipe)
        applies[recipe.label + " (new K)"] = round(time.perf_counter() - t, 2)
        print(f"  apply {recipe.label} (new K): {applies[recipe.label + ' (new K)']}s", flush=True)

    res = {
        "size": args.size, "device": args.device, "lm_parameters": n_params, "lm_bf16_gib": round(lm_bytes / 2**30, 3),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "one_lfm_merge_s": round(one_merge, 2),
        "open_s": round(t_open, 2), "open_over_one_merge": round(t_open / one_merge, 2),
        "peak_rss_after_open_gib": round(peak_open / 2**30, 3), "peak_rss_over_lm_bf16": round(peak_open / lm_bytes, 2),
        "rss_after_open_mib": rss_open, "rss_before_open_mib (libraries)": rss_libraries,
        "peak_rss_after_open_less_libraries_over_lm_bf16": round((peak_open - rss_libraries["VmRSS"] * 2**20) / lm_bytes, 2), "evaluation": source.eval_error or "on",
        "first_page_render_s": round(first_page, 2), "viewed_tensor": name, "moves": moves,
        "apply": applies,
        "peak_rss_end_gib (the loaded model included)": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "targets": {"open <= 2x one merge": t_open <= 2 * one_merge,
                    "neuron view <= 1 s": max(m["neuron_view_s"] for m in moves) <= 1.0,
                    "TIES apply <= 2 s": min(applies["TIES K=0.2"]["then_s"]) <= 2.0,
                    "Neu-S-TIES apply <= 4 s": min(applies["Neu-S-TIES K=0.2 M=0.3"]["then_s"]) <= 4.0,
                    "peak RSS <= 3x LM bf16": peak_open <= 3 * lm_bytes},
    }
    (HERE / "results").mkdir(exist_ok=True)
    suffix = ("" if args.size == "1b" else f"_{args.size}") + ("" if args.device == "cpu" else f"_{args.device.split(':')[0]}")
    (HERE / "results" / f"explorer_scale{suffix}.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


def _recipe_after(state, control: str, value):
    """The recipe the page will hold after setting ``control`` to ``value`` (the state's own rule)."""
    from lfm.explorer.state import ExplorerState

    probe = ExplorerState(background=False, auto_sweep=False, **{k: getattr(state, k) for k in
                          ("method", "density", "neurons", "alpha", "gamma", "epsilon", "restore", "locate",
                           "others", "seed")})
    setattr(probe, control, value)
    return probe.recipe


if __name__ == "__main__":
    raise SystemExit(main())
