"""The Locate-then-Merge explorer: a Panel dashboard over the `lfm` engine.

    live.py      a small (base, tuned) pair held in memory, with per-tensor caches (delta, C(i),
                 sorted |delta|) and one loaded MLLM that merged weights are applied to
    results.py   the results folder that `lfm precompute` writes for big models, and its reader
    analysis.py  per-tensor views of a merge (C(i), C'(i), located neurons), built only from
                 lfm.methods / lfm.neurons public functions
    compute.py   the heavy work, as @pn.cache functions whose every input is an argument
    figures.py   plotly figures from plain tables (no Panel, reusable in notebooks)
    state.py     ExplorerState (param.Parameterized): the pair, the recipe knobs, the selection
    views.py     one view class per panel of the page (each implements __panel__)
    app.py       assembles the page; apps/explorer.py serves it (`panel serve apps/explorer.py`)
    cli.py       `lfm precompute` (writes the results folder)
"""
