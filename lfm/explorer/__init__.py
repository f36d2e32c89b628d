"""The Locate-then-Merge explorer: a Panel dashboard over the `lfm` engine.

    source.py    the one Source protocol the page reads: a live pair or a results folder
    live.py      a (base, tuned) pair opened live: lfm.resident.ResidentPair (any size that fits in
                 memory) and one loaded model merges are evaluated on: the pair's suite (lm-eval +
                 lmms-eval, lfm.evaluate.sweep.PointRunner), or the organism's own items
    results.py   the results folder that `lfm precompute` writes for big models, and its reader
    analysis.py  summaries of the engine's per-tensor views (lfm.resident.TensorView)
    compute.py   the heavy work, as @pn.cache functions whose every input is an argument
    figures.py   plotly figures from plain tables (no Panel, reusable in notebooks)
    session.py   one page's worker threads, and the way back to its document
    state.py     ExplorerState (param.Parameterized): the pair, the recipe knobs (from the methods' settings
                 table), the selection
    views.py     one view class per panel of the page (each implements __panel__)
    app.py       assembles the page (`page`, `serve`): `lfm explore` and apps/explorer.py serve it
    cli.py       `lfm precompute` (writes the results folder), `lfm explore`
"""

DEFAULT_DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # the K grid `lfm precompute` writes
DEFAULT_NEURONS = (0.0, 0.1, 0.2, 0.3, 0.5)  # its M grid
