"""The names of lfm's merge methods, paper aliases and recipe choices: the registry's table without its
math, so that `lfm --help` can list them without importing torch. `lfm.methods` builds ``METHODS`` on
``METHOD_ROWS`` (adding each row's Sub and F functions); this is the only place a method is named.

    >>> sorted(METHOD_ROWS) == sorted(__import__("lfm.methods").methods.METHODS)
    True
    >>> ALIASES["neu-s-ties"]
    {'method': 'neuron_fusion', 'suppress': 'ties', 'restore': 'rescale'}
    >>> parse_seed("7"), parse_seed(7)
    (7, 7)
"""

import argparse

SUPPRESSORS = ("ties", "breadcrumbs", "task_arithmetic")
RESTORES = ("replace", "rescale")
RESCALES = ("inverse", "l1")
OTHERS = ("method", "tuned", "base")
LOCATE_MODES = ("top", "random", "bottom")

# method -> (title, reference, which recipe fields matter (for UIs and recipes))
METHOD_ROWS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "task_arithmetic": ("TaskA", "https://arxiv.org/abs/2212.04089", ("alpha",)),
    "ties": ("TIES", "https://arxiv.org/abs/2306.01708", ("density", "alpha")),
    "breadcrumbs": ("Breadcrumbs", "https://arxiv.org/abs/2312.06795", ("density", "gamma", "alpha")),
    "dare": ("DARE", "https://arxiv.org/abs/2311.03099", ("density", "rescale", "alpha", "seed")),
    "della": ("DELLA", "https://arxiv.org/abs/2406.11617", ("density", "epsilon", "rescale", "alpha", "seed")),
    "hard": ("hard-merge", "https://arxiv.org/abs/2505.16703", ()),
    "neuron_fusion": ("Neuron-Fusion", "https://arxiv.org/abs/2505.16703",
                      ("density", "neurons", "suppress", "restore", "alpha", "gamma", "locate", "seed")),
}

ALIASES: dict[str, dict] = {
    "ta": {"method": "task_arithmetic"}, "taska": {"method": "task_arithmetic"},
    "task-arithmetic": {"method": "task_arithmetic"},
    "bread": {"method": "breadcrumbs"}, "hard-merge": {"method": "hard"},
    "neuron-fusion": {"method": "neuron_fusion"},
    **{f"neu-{tag}-{short}": {"method": "neuron_fusion", "suppress": sup, "restore": restore}
       for tag, restore in (("p", "replace"), ("s", "rescale"))
       for short, sup in (("ties", "ties"), ("bread", "breadcrumbs"), ("breadcrumbs", "breadcrumbs"),
                          ("taska", "task_arithmetic"), ("ta", "task_arithmetic"))},
}

# Seeds (``--seed`` of every command, a recipe's ``seed``, the explorer's ``seed=`` query): whole numbers in
# [0, SEED_MAX], numpy's range. A merge seeds each tensor's generator with seed * 1_000_003 + crc32(name), which
# must fit in torch's 64 bits: a bigger seed failed late, inside the merge ("Overflow when unpacking long long").
SEED_MAX = 2**32 - 1


def parse_seed(value) -> int:
    """A seed from a flag, a query string or a recipe: a whole number in [0, SEED_MAX]; ValueError otherwise (the
    text is not converted when longer than any seed, so a 5000-digit value costs nothing)."""
    if isinstance(value, str) and len(value.strip()) <= len(str(SEED_MAX)) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(f"seed must be a whole number from 0 to {SEED_MAX}, got {shown}")
    return value


def seed_arg(text: str) -> int:
    """``parse_seed`` as an argparse type: a bad ``--seed`` is refused while the command line is read."""
    try:
        return parse_seed(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
