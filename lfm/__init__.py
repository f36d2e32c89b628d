"""lfm: Locate-then-Merge (arXiv 2505.16703) - neuron-level merging that undoes forgetting from
visual instruction tuning.

    pair = lfm.open_pair(base, tuned)                     # align the LLM inside the MLLM with its base
    scores = lfm.neuron_scores(base, tuned)               # C(i) per module
    lfm.merge(base, tuned, out, "neu-s-ties", density=0.2, neurons=0.3)
"""

__version__ = "0.1.0"

from lfm.methods import METHODS, Recipe, merge_delta, merge_tensor  # noqa: E402
from lfm.pair import open_pair  # noqa: E402
from lfm.score import neuron_scores  # noqa: E402
from lfm.merge import merge, merged_state_dict  # noqa: E402

__all__ = ["METHODS", "Recipe", "merge", "merge_delta", "merge_tensor", "merged_state_dict",
           "neuron_scores", "open_pair", "__version__"]
