"""Memory, checked before any tensor is read: what a streaming merge (`lfm merge`), a score pass (`lfm score`) or a
resident pair (`lfm.resident.ResidentPair`) needs, against what the device has free.

    check_fits(what, needed, device, fix)          the one check: MemoryError, one line, bytes needed vs available
    merge_bytes(pair, recipe, device, dtype, queued)   a streaming merge's working set, and its largest tensor
    score_bytes(pair)                              a score pass's working set, and its largest tensor

A streaming merge holds one big tensor at a time (lfm.pipeline: a tensor bigger than the byte bounds is read,
merged and written alone), so its working set is the largest tensor's: its inputs (mapped pages, resident while it
is merged) + the float32 work and output of its merge + the bounded read-ahead and write-behind queues (``queued``).
The float32 work per entry, measured as the peak RSS growth of merging one 16.7M-entry tensor (float32 and bfloat16, a
linear weight and an embedding; tests/test_hostile_engine.py measures it again and checks it stays below these): at
most 3.51 float32 copies, output included, where a tensor is merged whole (Neu-P-Breadcrumbs), at most 1.49 where it
is merged block by block (DELLA; lfm.methods.tensor.merge_tensor's ``in_blocks``: TIES masks, DARE / DELLA rows,
Neuron-Fusion rows; about 1.1 copies and 33 MB of block scratch, from 4.2M and 16.7M entries), 1.0 for task
arithmetic's lerp. A score pass holds one linear weight's two float32 copies, its
delta and |delta|.

Shards can declare anything: two sparse files of 2 MB declaring a [16777216, 96] float32 embedding and head would
otherwise be mapped (MAP_POPULATE) and merged until the kernel kills the process.
"""

from __future__ import annotations

import math

import torch

from lfm.device import available_bytes, gib

WHOLE_COPIES = 4.0  # float32 copies of a tensor merged whole (measured <= 3.51)
BLOCK_COPIES = 2.0  # ... merged block by block (measured <= 1.49 at 16.7M entries, <= 1.14 per entry beyond scratch)
BLOCK_SCRATCH = 12 * 4 * 2**20  # the blocks' float32 scratch, whatever the tensor's size (measured <= 33 MB)
LERP_COPIES = 1.1  # ... by one lerp in the storage dtype (a row that ``interpolates``) (measured 1.0)
MEMORY_FIX = ("free memory or use a machine with more; if that tensor is not meant to be this big, the checkpoint "
              "is damaged: restore it")
SCORE_COPIES = 4.0  # lfm score: tuned and base as float32, their delta, |delta|


def check_fits(what: str, needed: int, device, fix: str) -> None:
    """Raise MemoryError '<what> needs X GiB on <device>, Y GiB is available; <fix>' when ``needed`` bytes exceed
    the device's free memory (``lfm.device.available_bytes``)."""
    free = available_bytes(device)
    if needed > free:
        raise MemoryError(f"{what} needs {gib(needed)} on {device}, {gib(free)} is available; {fix}")


def _nbytes(checkpoint, key: str) -> tuple[int, int]:
    """(entries, bytes) of one tensor, from the checkpoint's header."""
    shape, dtype = checkpoint.meta(key)
    n = math.prod(shape)
    return n, n * dtype.itemsize


def merge_bytes(pair, recipe, device, dtype: torch.dtype | None = None, queued: int = 0) -> tuple[int, str]:
    """(bytes, tuned key): the working set of ``lfm.stream.merge`` on ``pair`` (module docstring), the largest
    tensor's inputs, float32 work and output plus ``queued`` bytes of read-ahead and write-behind, and that tensor."""
    by_key = {e.tuned_key: e for e in pair.entries}
    largest = (0, "")
    for key in pair.tuned.keys():
        n, tuned_bytes = _nbytes(pair.tuned, key)
        entry = by_key.get(key)
        if entry is None:  # passthrough: mapped, cast to the output dtype
            largest = max(largest, (tuned_bytes + n * (dtype or torch.float32).itemsize, key))
            continue
        shape, base_dtype = pair.base.meta(entry.base_key)
        work = work_bytes(recipe, entry.name, shape, base_dtype, pair.tuned.meta(key)[1], device)
        largest = max(largest, (_nbytes(pair.base, entry.base_key)[1] + tuned_bytes + work, key))
    return largest[0] + queued, largest[1]


def work_bytes(recipe, name: str, shape, base_dtype: torch.dtype, tuned_dtype: torch.dtype, device) -> int:
    """The memory ``lfm.methods.tensor.merge_tensor`` allocates (output included) while it merges one tensor of
    ``shape``, as it chooses to merge it: block by block (its ``in_blocks``: float32 copies + the blocks' scratch),
    by one lerp, or whole."""
    from lfm.methods.blocked import streams_neurons, streams_rows, streams_top_k
    from lfm.methods.registry import METHODS
    from lfm.methods.tensor import BLOCKED_FROM, source_of

    n = math.prod(shape)
    like = torch.empty((0,) * len(shape), device=device)  # what merge_tensor's choice reads: dim and device
    merged = source_of(name, recipe) == "method"
    if merged and n >= BLOCKED_FROM and (
            streams_top_k(recipe, name) or streams_rows(recipe, like) or streams_neurons(recipe, name, like)):
        return int(BLOCK_COPIES * 4 * n) + BLOCK_SCRATCH
    if merged and METHODS[recipe.method].interpolates and base_dtype == tuned_dtype:
        return int(LERP_COPIES * 4 * n)
    return int(WHOLE_COPIES * 4 * n)


def score_bytes(pair) -> tuple[int, str]:
    """(bytes, tuned key): the working set of ``lfm.score.neuron_scores``, the largest linear weight's inputs and
    float32 work, and that weight."""
    from lfm.neurons import neuron_axis

    largest = (0, "")
    for e in pair.entries:
        if neuron_axis(e.name) is not None:
            n, tuned_bytes = _nbytes(pair.tuned, e.tuned_key)
            need = tuned_bytes + _nbytes(pair.base, e.base_key)[1] + int(SCORE_COPIES * 4 * n)
            largest = max(largest, (need, e.tuned_key))
    return largest


def describe(checkpoint, key: str) -> str:
    """"'lm_head.weight' [16777216, 96] float32": how a refusal names the tensor that needs the memory."""
    shape, dtype = checkpoint.meta(key)
    return f"{key!r} {list(shape)} {str(dtype).removeprefix('torch.')}"
