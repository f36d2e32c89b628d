"""Every knob of `lfm realpair build`, in one flat dataclass; presets by name.

    paper      the default: the paper's regime (issue 26) as LLaVA tunes, visual instruction data mixed with
               text-only instruction data (WordNet definitions, ``text_share`` of each batch), a lower lr than
               ``overshoot`` for more steps, chosen by the recipe sweep (docs/realpair.md); the build checks the
               regime (lfm/realpair/checks.py)
    replay     the first paper-regime recipe: 160 steps, WordNet definitions + pydoc replay as the text share;
               the replay keeps prose perplexity at the base's and 160 steps teach too little digits / count
               (3 of 7 checks fail, informational); its study is the shipped report
    overshoot  the first recipe (lr 5e-4 x 120 steps, visual data only): forgets far beyond the paper's regime
               (LA -32 points, held-out perplexity x5.6) and learns little vision; kept as a contrast (its
               checks are printed, informational)
    smoke      the paper pipeline at a size that runs in seconds (the fast tests); its numbers mean nothing,
               so its checks are informational

Both real presets share the suite (same ``test_per_task``, ``prose_tokens``, ``image_size``), so their
numbers are on the same items, and the vision tower and alignment when those knobs agree (build.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

CHECK_MODES = ("enforce", "inform")
TEXT_KINDS = ("definitions", "replay")  # the text-only tuning data (data.py text_items)
VISUAL_TASKS = ("digits", "colour", "shape", "count")  # the visual skills (data.py draws their images)


@dataclass(frozen=True)
class BuildConfig:
    name: str = "paper"  # the run folder: OUT/<name>/seed<N>/ (the tuned model, its checks, its study)
    seed: int = 0
    # vision tower: CLIP, 32x32 images, 8x8 patches -> 16 image tokens (small enough to pretrain on CPU). Its
    # held-out accuracy (digits / colour / shape / count, 200 images each, measured here on 2 cores): 600 steps
    # on 1500 images per task 75.5 / 100 / 47 / 100 %; task-balanced steps on 4000 drawn images per task
    # (digits: all 1497) 83.5 / 99.5 / 86.5 / 100 % at 1500 steps, 85.5 / 100 / 98 / 100 % at 2400 (a larger
    # tower, hidden 192 x 4 layers: 84 / 100 / 73 / 100 % at 1200 steps, 4x the time; shifting images by 4 px
    # for augmentation: digits 36 %). A ViT trained from scratch learns the 1497 training digits by heart
    # (train 99.8 %, held-out 86 % on seed 0, 91 % on seed 1): ``tower_digit_copies`` distorted copies of each
    # (rotated, scaled, shifted, redrawn at 8x8: data.augmented_digits) join its pretraining; 4 copies: held-out
    # digits 96.5 % on seed 0 (shape 93 %), in 158 s, and the LLaVA's digits 72 -> 89 % (docs/realpair.md)
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    image_size: int = 32
    patch: int = 8
    vision_steps: int = 2400
    vision_batch: int = 64
    vision_lr: float = 1e-3
    vision_balanced: bool = True  # each pretraining batch holds every task equally (else: drawn from all items)
    tower_per_task: int = 4000    # pretraining images per drawn task (digits: the 1497 sklearn has for training)
    tower_digit_copies: int = 4   # distorted copies of each training digit the tower also sees (0: none)
    # stage 1, alignment: the projector alone, LLM frozen
    align_steps: int = 60
    align_batch: int = 16
    align_lr: float = 1e-3
    # stage 2, visual instruction tuning: LLM + projector, on visual items and (text_share of each batch)
    # text-only items: WordNet definitions and pydoc replay, text_items of each kind, at most text_tokens long
    tune_steps: int = 240
    tune_batch: int = 8
    tune_lr: float = 2e-4
    projector_lr: float = 1e-3
    text_share: float = 0.25
    text_kinds: str = "definitions"  # which of TEXT_KINDS make the text share (comma list)
    text_items: int = 2000
    text_tokens: int = 64
    # how often each visual task's items are drawn, relative to the others (comma list "task:n", integers;
    # unnamed tasks 1). digits:2 at 300 steps: digits 72 -> 77 %, count 82 -> 74 % (the same digit tokens)
    task_weights: str = ""
    # items
    train_per_task: int = 1500   # visual training images per drawn task (digits: what sklearn has)
    test_per_task: int = 200     # held-out items per task, visual and language (binomial s.e. <= 3.5 points)
    prose_tokens: int = 4096     # held-out perplexity text length per source
    threads: int = 2
    # the regime checks after the build: 'enforce' (a failed check fails `lfm realpair build`, exit 1) or
    # 'inform' (printed, never failing: the smoke preset's tiny model cannot be in any regime)
    checks: str = "enforce"

    def __post_init__(self):
        if self.checks not in CHECK_MODES:
            raise ValueError(f"checks={self.checks!r}: use one of {CHECK_MODES}")
        if self.tower_digit_copies < 0:
            raise ValueError(f"tower_digit_copies={self.tower_digit_copies}: use a whole number >= 0")
        if not 0.0 <= self.text_share < 1.0:
            raise ValueError(f"text_share={self.text_share}: use a fraction in [0, 1)")
        if not self.kinds() or set(self.kinds()) - set(TEXT_KINDS):
            raise ValueError(f"text_kinds={self.text_kinds!r}: use a comma list of {TEXT_KINDS}")
        self.weights()  # refuses a malformed task_weights here, before any stage runs

    def weights(self) -> dict[str, int]:
        """The task weights as {task: n}; tasks not named draw with weight 1.

        >>> BuildConfig(task_weights="digits:2").weights()
        {'digits': 2}
        >>> BuildConfig(task_weights="").weights()
        {}
        """
        out = {}
        for part in filter(None, (p.strip() for p in self.task_weights.split(","))):
            task, _, n = part.partition(":")
            if task.strip() not in VISUAL_TASKS or not n.strip().isdigit() or int(n) < 1:
                raise ValueError(f"task_weights={self.task_weights!r}: use a comma list of task:n, task one of "
                                 f"{VISUAL_TASKS}, n a whole number >= 1 (e.g. digits:2)")
            out[task.strip()] = int(n)
        return out

    def kinds(self) -> tuple[str, ...]:
        """The text kinds as a tuple.

        >>> BuildConfig(text_kinds="definitions").kinds()
        ('definitions',)
        """
        return tuple(k.strip() for k in self.text_kinds.split(",") if k.strip())

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "paper": BuildConfig(),
    "replay": BuildConfig(name="replay", tune_steps=160, text_kinds="definitions,replay", tower_digit_copies=0,
                          checks="inform"),
    # out of the regime by design, so its checks inform (they would fail it) rather than fail the build
    "overshoot": BuildConfig(name="overshoot", vision_steps=600, vision_balanced=False, tower_per_task=1500,
                             tower_digit_copies=0, tune_steps=120, tune_lr=5e-4, text_share=0.0, checks="inform"),
    "smoke": BuildConfig(name="smoke", vision_hidden=32, vision_layers=1, vision_heads=2, vision_steps=4,
                         vision_batch=8, align_steps=2, align_batch=2, tune_steps=3, tune_batch=4, train_per_task=16,
                         tower_per_task=16, tower_digit_copies=0,
                         text_items=8, text_tokens=24, test_per_task=6, prose_tokens=128, checks="inform",
                         # both kinds, as when the fast tests' expectations of this pair were set (notebook 01 on
                         # it finds every module's C(i) tail above the shuffled null; definitions only: not o_proj)
                         text_kinds="definitions,replay"),
}
DEFAULT_PRESET = "paper"


def preset(name: str, **overrides) -> BuildConfig:
    """A preset with some knobs replaced (None = keep); an unknown name or knob is refused in one line."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
    known = {f.name for f in fields(BuildConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown build knob(s) {unknown}: see lfm/realpair/config.py")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
