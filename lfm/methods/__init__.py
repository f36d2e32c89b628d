"""Every merge method of Locate-then-Merge: one idea per file, in the order a reader needs them.

    registry.py    one row per method (Sub, F, the settings it reads, capability flags) and the settings
                   table; register_method / the `lfm.methods` entry points add rows from outside (torch-free)
    signatures.py  the signatures of Sub and F, and how a row names a function ('module:function')
    recipe.py      Recipe: every knob of one merge, validated once; its label; the paper's stages (torch-free)
    math.py        the paper's Sub and F and Neuron-Fusion, as pure functions on one delta (Eq. 1)
    select.py      exact selection: the k-th largest and the top-k mask of |delta|, fast on big tensors
    blocked.py     the same bytes for big tensors, block by block (TIES masks, DARE / DELLA rows, Neuron-Fusion)
    tensor.py      one named tensor: the recipe's tensor policies, then the whole, lerp, select or blocked path

The public names below import their module on first use, so that ``lfm.methods.registry`` and
``lfm.methods.recipe`` (what `lfm --help` reads) load without torch.
"""

import importlib

_HOMES = {"METHODS": "registry", "Method": "registry", "SETTINGS": "registry", "register_method": "registry",
          "unregister_method": "registry",
          "Recipe": "recipe", "make_recipe": "recipe", "STAGES": "recipe", "stage_recipes": "recipe",
          "DeltaStats": "math", "merge_delta": "math", "suppress": "math", "tensor_generator": "math",
          "top_k_counts": "math", "kth_largest": "select", "top_k_mask": "select",
          "merge_tensor": "tensor", "source_of": "tensor"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'lfm.methods' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lfm.methods.{_HOMES[name]}"), name)


def __dir__():
    return sorted({*globals(), *_HOMES})
