"""Sweep reuse: a 10-point K sweep of merges (no evaluation) vs one merge, on the ~1B random pair.

Target (issue 6): the whole sweep costs at most 3x one merge. Measured, in this process, wall clock:

    one merge (disk)      lfm.merge(base, llava, out, <method>, K=0.2): read the pair, merge, write a model dir
    one merge (memory)    lfm.merged_state_dict(...): the same merge kept in memory
    sweep                 ResidentPair(base, llava) (reads the pair once, C(i) once) + load the tuned model once
                          (the pair is memory-mapped; C(i) and a 2-byte |delta| order key per entry computed)
                          + ResidentPair.prepare(10 recipes): every tensor's 10 top-k sets from one histogram
                          of its key (lfm/topk.py)
                          + for each of 10 K values: ResidentPair.apply(model, recipe): every LM tensor of the
                          loaded model rewritten in place (fast path: one compare pass over the key and a
                          branch-free select, byte-identical to lfm.merge; see lfm/evaluate/cache.py)

The pair is the one benchmarks/merge_speed.py builds (bf16, 20 layers x 2048 hidden, GQA, 1.03B LM
parameters + a small vision tower) under benchmarks/_work/1b, reused when present. Results go to
benchmarks/results/sweep_reuse[_<method>].json.

    python benchmarks/sweep_reuse.py                     # ~1B, ties
    python benchmarks/sweep_reuse.py --method neu-s-ties
    python benchmarks/sweep_reuse.py --size tiny         # seconds: checks the harness
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
KS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1b", help="pair size of benchmarks/merge_speed.py (1b | tiny)")
    ap.add_argument("--method", default="ties", help="method or alias swept over K (default ties)")
    ap.add_argument("--neurons", type=float, default=0.3, help="M for Neuron-Fusion methods")
    ap.add_argument("--no-fast", action="store_true", help="apply through merge_tensor (no cached |delta|)")
    args = ap.parse_args(argv)

    from merge_speed import build_pair
    from transformers import LlavaForConditionalGeneration

    import lfm
    from lfm.resident import ResidentPair
    from lfm.methods import Recipe

    from lfm.cli import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()  # as the `lfm` command does, for the one merge and the sweep alike
    torch.set_grad_enabled(False)
    dirs = build_pair(args.size)
    base, tuned = dirs["base"], dirs["llava"]
    out = HERE / "_work" / args.size / "sweep_reuse_out"
    recipe = lambda k: Recipe.from_name(args.method, density=k, neurons=args.neurons)  # noqa: E731

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    lfm.merge(base, tuned, out, recipe(0.2), progress=False, log=lambda *_: None)
    one_disk = time.perf_counter() - t
    print(f"one merge (disk): {one_disk:.1f}s", flush=True)
    shutil.rmtree(out, ignore_errors=True)

    t = time.perf_counter()
    sd = lfm.merged_state_dict(base, tuned, recipe(0.2))
    one_memory = time.perf_counter() - t
    print(f"one merge (memory): {one_memory:.1f}s", flush=True)
    del sd

    t = time.perf_counter()
    cache = ResidentPair(base, tuned, progress=False, fast=not args.no_fast)
    t_cache = time.perf_counter() - t
    model = LlavaForConditionalGeneration.from_pretrained(tuned)
    cache.prepare([recipe(k) for k in KS])  # |delta| cached, all 10 thresholds per tensor in one selection
    t_setup = time.perf_counter() - t
    print(f"sweep setup (cache {t_cache:.1f}s + model load + prepare): {t_setup:.1f}s", flush=True)
    per_point = []
    for k in KS:
        s = time.perf_counter()
        cache.apply(model, recipe(k))
        per_point.append(time.perf_counter() - s)
        print(f"  point K={k}: {per_point[-1]:.1f}s", flush=True)
    sweep = time.perf_counter() - t
    rss_after_sweep = rss_mib()

    # the last point in the model is exactly lfm.merge's bytes for it (spot check one tensor)
    ref = lfm.merged_state_dict(base, tuned, recipe(KS[-1]))
    key = next(k for k in ref if k.endswith("layers.1.mlp.down_proj.weight"))
    ours = cache._model_tensors(model)[key]
    exact = bool(torch.equal(ours, ref[key]))

    res = {"size": args.size, "method": args.method, "fast_path": not args.no_fast, "recipe_at_0.2": recipe(0.2).label, "ks": list(KS),
           "lm_parameters": sum(e.base.numel() for e in cache.entries),
           "one_merge_disk_s": round(one_disk, 2), "one_merge_memory_s": round(one_memory, 2),
           "sweep_s": round(sweep, 2), "sweep_setup_s (cache + model load + prepare)": round(t_setup, 2), "cache_build_s": round(t_cache, 2),
           "per_point_s": [round(x, 2) for x in per_point],
           "ratio_vs_one_merge_disk": round(sweep / one_disk, 2),
           "ratio_vs_one_merge_memory": round(sweep / one_memory, 2),
           "naive_10_merges_disk_s_estimate": round(10 * one_disk, 1), "last_point_equals_lfm_merge": exact,
           "target": "sweep <= 3x one merge", "torch_threads": torch.get_num_threads(),
           "rss_after_sweep_mib": rss_after_sweep,
           "peak_rss_mib (whole process: the one merges and the final check included)":
               round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    (HERE / "results").mkdir(exist_ok=True)
    name = "sweep_reuse" + ("" if args.method == "ties" else f"_{args.method}") + ("_no_fast" if args.no_fast else "")
    if args.size != "1b":
        name += f"_{args.size}"
    (HERE / "results" / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


def rss_mib() -> dict:
    """The process's resident memory now, from /proc/self/status: anonymous (heap, tensors) and file-backed
    (mapped checkpoint pages, shared with the OS file cache)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


if __name__ == "__main__":
    raise SystemExit(main())
