"""lfm: Locate-then-Merge (arXiv 2505.16703) - neuron-level merging that undoes forgetting from
visual instruction tuning.

    pair = lfm.open_pair(base, tuned)                     # align the LLM inside the MLLM with its base
    scores = lfm.neuron_scores(base, tuned)               # C(i) per module
    lfm.merge(base, tuned, out, "neu-s-ties", density=0.2, neurons=0.3)
    resident = lfm.ResidentPair(base, tuned)              # the pair in memory: many merges, into a loaded model
    resident.apply(model, "ties", density=0.2)            # the bytes `lfm merge` writes, written in place

Every function taking ``base, tuned`` also takes an opened pair as ``base`` (``lfm.open_pair``), and a recipe as a
``Recipe``, a dict, a method name / paper alias, or keyword fields (a misspelt field names the valid ones).
"""

from lfm._version import __version__
from lfm.methods import METHODS, Recipe, make_recipe, merge_delta, merge_tensor
from lfm.pair import open_pair
from lfm.score import neuron_scores
from lfm.merge import merge, merged_state_dict
from lfm.resident import ResidentPair

__all__ = ["METHODS", "Recipe", "ResidentPair", "make_recipe", "merge", "merge_delta", "merge_tensor",
           "merged_state_dict", "neuron_scores", "open_pair", "__version__"]
