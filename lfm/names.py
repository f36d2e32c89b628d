"""The names of lfm's merge methods, paper aliases and recipe choices: the registry's table without its
math, so that `lfm --help` can list them without importing torch. `lfm.methods` builds ``METHODS`` on
``METHOD_ROWS`` (adding each row's Sub and F functions); this is the only place a method is named.

    >>> sorted(METHOD_ROWS) == sorted(__import__("lfm.methods").methods.METHODS)
    True
    >>> ALIASES["neu-s-ties"]
    {'method': 'neuron_fusion', 'suppress': 'ties', 'restore': 'rescale'}
"""

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
