"""Neuron change scores C(i) for every linear module of a pair, and their summary table.

`neuron_scores(base, tuned)` streams the pair and returns {canonical name: C [n_neurons]} for the
seven linear module types (see lfm.neurons for the neuron axes and the GQA rule).
"""

import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lfm.checkpoint import save_small_tensors, scratch_path
from lfm.device import resolve_device
from lfm.memory import MEMORY_FIX, check_fits, describe, score_bytes
from lfm.neurons import layer_of, module_of, neuron_axis, tail_stats
from lfm.neurons import neuron_scores as scores_of_delta
from lfm.pair import Pair, open_pair


def neuron_scores(base, tuned=None, *, device="cpu", progress: bool = True,
                  allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """C(i) per linear module of the pair.

    Args:
        base, tuned: model directories (or an open Pair as `base`).
    Returns:
        {canonical weight name: scores [n_neurons] float32 on cpu}, in checkpoint order.
    Example:
        >>> from lfm.organism import base_dir, tuned_dir
        >>> scores = neuron_scores(base_dir(), tuned_dir(), progress=False)
        >>> scores["model.layers.0.mlp.up_proj.weight"].shape
        torch.Size([256])
    """
    pair = base if isinstance(base, Pair) else open_pair(base, tuned, allow_pickle=allow_pickle)
    return {e.name: scores_of_delta(delta, axis).cpu() for e, axis, delta in linear_deltas(pair, device, progress)}


def linear_deltas(pair: Pair, device="cpu", progress: bool = True):
    """Yield (entry, neuron axis, delta [out, in] float32 on ``device``) for every linear-module tensor of the
    pair, one at a time; a non-finite delta is an error naming the tensor. MemoryError (lfm.memory) before any
    tensor is read when the largest one's float32 work does not fit."""
    dev = resolve_device(device)
    needed, largest = score_bytes(pair)  # before any tensor is read
    check_fits(f"scoring {pair.tuned.path} (its largest linear weight {describe(pair.tuned, largest)})", needed,
               dev, MEMORY_FIX)
    entries = [e for e in pair.entries if neuron_axis(e.name) is not None]
    for e in tqdm(entries, desc="scoring neurons", unit="tensor", disable=not progress):
        delta = pair.tuned.get(e.tuned_key, dev).float() - pair.base.get(e.base_key, dev).float()
        if not torch.isfinite(delta).all():
            raise ValueError(f"non-finite delta in tensor {e.name!r}; fix the checkpoint")
        yield e, neuron_axis(e.name), delta


def summary_rows(scores: dict[str, torch.Tensor]) -> list[dict]:
    """One row per tensor: layer, module, n_neurons and tail statistics (mean, max, median,
    max_over_median, top1_share, top10_share)."""
    return [{"name": name, "layer": layer_of(name), "module": module_of(name), "n_neurons": s.numel(),
             **tail_stats(s)} for name, s in scores.items()]


def format_summary(rows: list[dict]) -> str:
    head = f"{'layer':>5} {'module':<10} {'neurons':>7} {'mean':>10} {'max/median':>10} {'top1%':>7} {'top10%':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:>5} {r['module']:<10} {r['n_neurons']:>7} {r['mean']:>10.4g} "
                     f"{r['max_over_median']:>10.3f} {r['top1_share']:>7.3f} {r['top10_share']:>7.3f}")
    return "\n".join(lines)


def save_scores(scores: dict[str, torch.Tensor], path, metadata: dict | None = None) -> None:
    """Write scores as safetensors (one vector per weight name) with the summary in the metadata."""
    meta = {"summary": json.dumps(summary_rows(scores)), **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(path, "lfm-tmp")  # renamed into place when complete: never a half-written file
    try:
        save_small_tensors(scores, tmp, meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

