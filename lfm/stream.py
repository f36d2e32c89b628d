"""Stream a (base, tuned) pair through a merge method into a new model directory.

    open_pair -> for each LM tensor: merge_tensor (lfm.methods.tensor) -> StreamingShardWriter
              -> vision tower / projector / anything not in the LM: copied from tuned
              -> config, tokenizer, processor files copied -> lfm_recipe.json -> atomic rename

Each input tensor is a read-only memory map of its own bytes (`Checkpoint.map_one`, unmapped when freed);
inputs read ahead, inputs being merged (several tensors at once on CPU, one per core) and merged tensors
waiting to be written are bounded in bytes (READ_AHEAD_BYTES, PARALLEL_BYTES, WRITE_BEHIND_BYTES); big
tensors are merged block by block (`lfm.methods.tensor.merge_tensor`: TIES masks, DARE / DELLA rows,
Neuron-Fusion rows). The output directory is built in a temporary sibling and renamed
into place at the end, so an error leaves nothing behind.
"""

import hashlib
import json
import math
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lfm._version import __version__
from lfm.card import write_model_card
from lfm.checkpoint import (PlannedTensor, StreamingShardWriter, atomic_output_dir, check_output_path,
                            copy_non_weight_files, non_weight_files, parse_dtype, parse_size)
from lfm.device import resolve_device
from lfm.memory import MEMORY_FIX, check_fits, describe, merge_bytes
from lfm.methods.recipe import Recipe, make_recipe
from lfm.methods.tensor import merge_tensor
from lfm.neurons import layer_of, module_of
from lfm.pair import Pair, open_pair
from lfm.pipeline import WriteBehind, map_in_order, read_ahead

RECIPE_FILE = "lfm_recipe.json"


READ_AHEAD_BYTES = 64 * 2**20  # input bytes read ahead of the tensors being merged
PARALLEL_BYTES = 128 * 2**20  # input bytes of the tensors merged at once (a bigger tensor is merged alone)
WRITE_BEHIND_BYTES = 64 * 2**20  # merged bytes waiting for the writer
# measured on a 0.4B bf16 pair (TIES): 256 MiB each peaked at 939 MB RSS, 64 MiB each at 758 MB


def iter_merged(pair: Pair, recipe: Recipe, *, device="cpu", dtype: torch.dtype | None = None,
                progress: bool = True, desc: str = "merging", read_ahead_bytes: int | None = None):
    """Yield (tuned_key, merged_tensor_on_cpu, info) for every tensor of the tuned checkpoint, in
    the tuned checkpoint's order. info = {'name', 'source', 'stats'} (stats None for passthrough).

    The next tensors are read from disk on a helper thread while the current ones are merged (file reads
    release the GIL), as long as they fit in `read_ahead_bytes` (default READ_AHEAD_BYTES). On CPU several
    tensors are merged at once, one per core, each with torch's operations on one thread (a torch call
    on several threads ends in a barrier, and a merge makes thousands of short ones: measured 2x slower
    than one thread each on 1M-entry blocks), while their inputs add up to at most PARALLEL_BYTES; a
    bigger tensor is merged alone, on every thread. The bytes do not depend on how many threads ran.
    """
    device = resolve_device(device)
    by_key = {e.tuned_key: e for e in pair.entries}
    keys = pair.tuned.keys()
    threads = torch.get_num_threads()

    def read(key):  # read-only views of the files' pages (copied when the device is a GPU)
        entry = by_key.get(key)
        if entry is None:
            return None, pair.tuned.map_one(key)
        return pair.base.map_one(entry.base_key).to(device), pair.tuned.map_one(key).to(device)

    def size_of(key):
        entry = by_key.get(key)
        return _nbytes(pair.tuned, key) + (0 if entry is None else _nbytes(pair.base, entry.base_key))

    def merge_one(item, alone):
        key, (base_t, tuned_t) = item
        entry = by_key.get(key)
        if entry is None:
            return key, _cast(tuned_t, dtype, key, pair), {"name": key, "source": "passthrough", "stats": None}
        torch.set_num_threads(threads if alone else 1)  # this worker thread's own setting
        merged, stats, source = merge_tensor(base_t, tuned_t, recipe, name=entry.name)
        del base_t, tuned_t
        return key, _cast(merged, dtype, key, pair).to("cpu"), {"name": entry.name, "source": source,
                                                               "stats": stats}

    workers = threads if device.type == "cpu" else 1  # a GPU merges one tensor at a time
    try:
        with closing(read_ahead(keys, read, size_of, read_ahead_bytes or READ_AHEAD_BYTES)) as inputs, \
                closing(map_in_order(merge_one, inputs, lambda item: size_of(item[0]), PARALLEL_BYTES,
                                     workers)) as merged:  # closed: the reader and the workers stop
            yield from tqdm(merged, total=len(keys), desc=desc, unit="tensor", disable=not progress)
    finally:
        torch.set_num_threads(threads)  # the count new threads start with, as before


def _nbytes(checkpoint, key: str) -> int:
    shape, dtype = checkpoint.meta(key)
    return math.prod(shape) * dtype.itemsize


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None, key: str, pair: Pair) -> torch.Tensor:
    """`tensor` in the output dtype; an output holding NaN/Inf is refused (integer tensors pass unchanged)."""
    if not tensor.is_floating_point():
        return tensor
    out = tensor if dtype is None else tensor.to(dtype)
    # one cheap reduction (~8 ms on 11.5M entries vs ~50 ms for isfinite().all()); a half sum can
    # overflow on finite entries, so a non-finite sum is only a reason to look closer
    if not torch.isfinite(out.sum()) and not torch.isfinite(out).all():
        if torch.isfinite(tensor).all():
            raise ValueError(f"tensor {key!r}: values up to {tensor.abs().max().item():.3g} do not fit in "
                             f"{str(dtype).removeprefix('torch.')} (they become Inf); choose --dtype bfloat16 "
                             f"or float32")
        raise ValueError(f"tensor {key!r} in {pair.tuned.file_of(key)} holds NaN/Inf; fix or re-download "
                         f"the checkpoint")
    return out


def merged_state_dict(base, tuned, recipe: Recipe | dict | str | None = None, *, device="cpu",
                      dtype=None, progress: bool = False, allow_pickle: bool = False, **fields) -> dict:
    """The streaming merge (``iter_merged``, what ``merge`` writes) collected in a dict keyed like the tuned
    checkpoint, passthrough tensors included. It reads the pair from disk on every call: to merge a pair
    many times, or into a loaded model, hold it with ``lfm.ResidentPair``.

    Example:
        >>> from lfm.organism import base_dir, tuned_dir
        >>> sd = merged_state_dict(base_dir(), tuned_dir(), "neu-s-ties", density=0.2, neurons=0.3)
        >>> len(sd) == len(open_pair(base_dir(), tuned_dir()).tuned.keys())   # every tuned tensor
        True
    """
    pair = base if isinstance(base, Pair) else open_pair(base, tuned, allow_pickle=allow_pickle)
    recipe = make_recipe(recipe, **fields)
    with closing(iter_merged(pair, recipe, device=device, dtype=parse_dtype(dtype) if isinstance(dtype, str)
                             else dtype, progress=progress)) as merged:  # an error stops its threads now
        return {key: t for key, t, _ in merged}


def merge(base, tuned, out, recipe: Recipe | dict | str | None = None, *, device: str | None = "cpu",
          dtype: str | torch.dtype | None = None, force: bool = False, allow_pickle: bool = False,
          max_shard_size: str | int = "5GB", progress: bool = True, log=print, **fields) -> dict:
    """Merge `tuned` back toward `base` and write a model directory loadable with the tuned class.

    Args:
        base, tuned: Hugging Face model directories (base causal LM; tuned MLLM or causal LM), or an opened
            ``Pair`` as ``base`` (then ``tuned`` is None).
        out: output directory; must not be (inside) an input; non-empty needs force=True.
        recipe: a Recipe, a dict, or a method name / paper alias; `**fields` override recipe fields
            (density=0.2, neurons=0.3, suppress='ties', restore='rescale', alpha=1.0, ...).
        device: 'cpu', 'cuda', 'cuda:1' or 'auto'. dtype: output dtype (default: the tuned dtype).
    Returns:
        the report written to out/lfm_recipe.json.
    Example:
        >>> import tempfile
        >>> from lfm.organism import base_dir, tuned_dir
        >>> out = Path(tempfile.mkdtemp()) / "merged"
        >>> report = merge(base_dir(), tuned_dir(), out, "neu-s-ties", density=0.2, neurons=0.3,
        ...                progress=False, log=lambda *_: None)
        >>> report["label"], (out / RECIPE_FILE).is_file()
        ('Neu-S-TIES K=0.2 M=0.3', True)
    """
    recipe = make_recipe(recipe, **fields)
    out = Path(out)
    dev = resolve_device(device)
    out_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    inputs = [base.base.path, base.tuned.path] if isinstance(base, Pair) else [Path(base), Path(tuned)]
    check_output_path(out, inputs, force)
    pair = base if isinstance(base, Pair) else open_pair(base, tuned, allow_pickle=allow_pickle)
    non_weight_files(pair.tuned.path)  # checked before any tensor is read: only the directory's own files
    needed, largest = merge_bytes(pair, recipe, dev, out_dtype, READ_AHEAD_BYTES + WRITE_BEHIND_BYTES)
    check_fits(f"merging {pair.tuned.path} (its largest tensor {describe(pair.tuned, largest)})", needed, dev,
               MEMORY_FIX)
    log(pair.describe())

    plan = []
    for key in pair.tuned.keys():
        shape, src_dtype = pair.tuned.meta(key)
        plan.append(PlannedTensor(key, out_dtype if (out_dtype and src_dtype.is_floating_point) else src_dtype, shape))

    started = time.perf_counter()
    per_tensor = {}
    with atomic_output_dir(out, force=force, log=log) as tmp:
        writer = StreamingShardWriter(tmp, plan, parse_size(max_shard_size))
        # writes go to a helper thread too, with at most WRITE_BEHIND_BYTES of merged tensors waiting
        # closing: an error or a signal here stops the reader and the merging threads at once, not when the
        # generator is collected (perhaps after the interpreter began to exit, aborting inside torch)
        with WriteBehind(writer.write, WRITE_BEHIND_BYTES) as writing, \
                closing(iter_merged(pair, recipe, device=dev, dtype=out_dtype, progress=progress)) as merged:
            for key, tensor, info in merged:
                writing.submit(key, tensor, tensor.numel() * tensor.element_size())
                del tensor
                if info["stats"] is not None:
                    s = info["stats"]
                    per_tensor[info["name"]] = {"source": info["source"], "numel": s.numel, "kept": s.kept,
                                                "n_neurons": s.n_neurons, "n_located": s.n_located,
                                                "n_fallback_replace": s.n_fallback_replace}
        writer.close()
        copy_non_weight_files(pair.tuned.path, tmp)
        if out_dtype is not None:
            _set_config_dtype(tmp / "config.json", out_dtype)
        report = build_report(pair, recipe, per_tensor, dev, out_dtype)
        (tmp / RECIPE_FILE).write_text(json.dumps(report, indent=2) + "\n")
        write_model_card(tmp, report)  # README.md: lfm.card
    # no wall-clock time in the recipe file: same inputs + seed must give byte-identical files
    log(f"wrote {out} ({len(writer.names)} shard(s), {time.perf_counter() - started:.1f}s)")
    return report


def _set_config_dtype(config_file: Path, dtype: torch.dtype) -> None:
    config = json.loads(config_file.read_text())
    name = str(dtype).removeprefix("torch.")
    for cfg in (config, config.get("text_config", {})):
        for key in ("dtype", "torch_dtype"):
            if key in cfg:
                cfg[key] = name
    config["dtype"] = name
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def summarize_modules(per_tensor: dict) -> dict:
    """Aggregate per-tensor stats by module type (q_proj, ..., 'embed_tokens', 'norm', 'lm_head')."""
    groups = defaultdict(lambda: {"n_tensors": 0, "numel": 0, "kept": 0, "n_neurons": 0, "n_located": 0,
                                  "n_fallback_replace": 0})
    for name, s in per_tensor.items():
        module = module_of(name) or name.split(".")[-2]
        g = groups[module]
        g["n_tensors"] += 1
        for k in ("numel", "kept", "n_neurons", "n_located", "n_fallback_replace"):
            g[k] += s[k]
    return {m: {**g, "kept_fraction": g["kept"] / g["numel"] if g["numel"] else 0.0} for m, g in sorted(groups.items())}


RUN_FIELDS = ("run",)  # what describes the run, not the merge: outside the fingerprint (docs/devices.md)


def recipe_fingerprint(report: dict) -> str:
    """sha256 of the recipe file's fields that equality checks compare: everything but ``run`` (the device the
    merge ran on) and the fingerprint itself. Two merges whose bytes are equal by docs/devices.md's contract
    (e.g. TIES on a GPU and on the CPU) have equal fingerprints; their recipe files differ in ``run`` only."""
    kept = {k: v for k, v in report.items() if k not in RUN_FIELDS and k != "fingerprint"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def build_report(pair: Pair, recipe: Recipe, per_tensor: dict, device, dtype) -> dict:
    report = {
        "lfm_version": __version__,
        "method": recipe.method,
        "label": recipe.label,
        "recipe": recipe.to_dict(),
        "inputs": {"base": {"path": str(pair.base.path.resolve()), "fingerprint": pair.base.fingerprint()},
                   "tuned": {"path": str(pair.tuned.path.resolve()), "fingerprint": pair.tuned.fingerprint()}},
        "dtype": str(dtype).removeprefix("torch.") if dtype else "as tuned",
        "extra_vocab_rows": pair.extra_vocab,
        "passthrough_tensors": len(pair.passthrough),
        "modules": summarize_modules(per_tensor),
        "tensors": {name: {**s, "layer": layer_of(name)} for name, s in per_tensor.items()},
    }
    report["fingerprint"] = recipe_fingerprint(report)
    report["run"] = {"device": str(device)}  # resolved ('cuda:0', 'cpu'); which bytes depend on it: docs/devices.md
    return report
