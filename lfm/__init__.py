"""lfm: Locate-then-Merge (arXiv 2505.16703) - neuron-level merging that undoes forgetting from
visual instruction tuning.

    pair = lfm.open_pair(base, tuned)                     # align the LLM inside the MLLM with its base
    scores = lfm.neuron_scores(base, tuned)               # C(i) per module
    lfm.merge(base, tuned, out, "neu-s-ties", density=0.2, neurons=0.3)
    resident = lfm.ResidentPair(base, tuned)              # the pair in memory: many merges, into a loaded model
    resident.apply(model, "ties", density=0.2)            # the bytes `lfm merge` writes, written in place

Every function taking ``base, tuned`` also takes an opened pair as ``base`` (``lfm.open_pair``), and a recipe as a
``Recipe``, a dict, a method name / paper alias, or keyword fields (a misspelt field names the valid ones).
A method of your own: ``lfm.register_method`` (docs/extending.md).
"""

import importlib

from lfm._version import __version__

# public name -> the module defining it; imported on first use (PEP 562), so that `import lfm` (and with it
# every `lfm` command's start-up) does not load torch until a tensor is needed
_HOMES = {"METHODS": "lfm.methods.registry", "register_method": "lfm.methods.registry",
          "unregister_method": "lfm.methods.registry", "Recipe": "lfm.methods.recipe",
          "make_recipe": "lfm.methods.recipe", "merge_delta": "lfm.methods.math", "merge_tensor": "lfm.methods.tensor",
          "open_pair": "lfm.pair", "neuron_scores": "lfm.score", "merge": "lfm.stream",
          "merged_state_dict": "lfm.stream", "ResidentPair": "lfm.resident"}

__all__ = sorted([*_HOMES, "__version__"])


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'lfm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted({*globals(), *_HOMES})
