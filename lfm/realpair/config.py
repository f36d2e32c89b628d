"""Every knob of `lfm realpair build`, in one flat dataclass; presets by name.

The defaults are the full build (about 30 min on 2 CPU cores). ``smoke`` is the same pipeline at a size that
runs in seconds (the fast test and a first end-to-end check); its numbers mean nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    # vision tower: CLIP, 32x32 images, 8x8 patches -> 16 image tokens (small enough to pretrain on CPU)
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    image_size: int = 32
    patch: int = 8
    vision_steps: int = 600
    vision_batch: int = 64
    vision_lr: float = 1e-3
    # stage 1, alignment: the projector alone, LLM frozen
    align_steps: int = 60
    align_batch: int = 16
    align_lr: float = 1e-3
    # stage 2, visual instruction tuning: LLM + projector. lr 1e-4 for 200 steps forgot too little to tell
    # methods apart (issue 15); 5x the lr for 120 steps (what this shared 2-core CPU affords) lets the tuning
    # distribution (one-word visual answers) win
    tune_steps: int = 120
    tune_batch: int = 8
    tune_lr: float = 5e-4
    projector_lr: float = 1e-3
    # items
    train_per_task: int = 1500   # visual training images per drawn task (digits: what sklearn has)
    test_per_task: int = 100     # held-out items per task (visual and language)
    prose_tokens: int = 4096     # held-out perplexity text length per source
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "full": BuildConfig(),
    "smoke": BuildConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_steps=4, vision_batch=8,
                         align_steps=2, align_batch=2, tune_steps=3, tune_batch=2, train_per_task=16,
                         test_per_task=6, prose_tokens=128),
}


def preset(name: str, **overrides) -> BuildConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
