"""Evaluation of merges: LA / VA / OA through lm-evaluation-harness and lmms-eval, K/M sweeps that reuse
work across points (the pair held by ``lfm.resident.ResidentPair``), the hard-merge / suppress / restore generation comparison, and pick-best.

    suites.py     which harness tasks make LA and VA ('paper', 'organism', or a YAML file)
    models.py     load a model directory; an MLLM's language model as a causal LM (shared weights)
    harness.py    the lm-eval and lmms-eval adapters; evaluate(model, suite) -> {LA, VA, OA, tasks}
    sweep.py      a grid of recipes -> one results table (CSV + JSON), resumable, local or Ray executor
    compare.py    generations of the three Neuron-Fusion stages, classified, and the stage transitions
    pareto.py     best-OA point and the (LA, VA) Pareto front of a sweep table
    cli.py        `lfm eval`, `lfm sweep`, `lfm compare`
"""
