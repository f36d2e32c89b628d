"""The organism's synthetic worlds: a seeded language world and a seeded visual world.

Everything here is pure Python + numpy, generated from ``random.Random(seed)`` / ``numpy.random.Generator``
(never the salted built-in ``hash()``), so the same seed gives the same items in every process.

Language world (the base LLM is pretrained on it; tasks mirror the paper's language suite):
  - ``arithmetic``  GSM8K-like word problems, free-form number answer.
  - ``facts``       ARC/CSQA-like multiple choice over a fixed knowledge base of made-up animals.
  - ``reading``     RACE-like: a one-sentence story and a multiple-choice question about it.
  - ``noimage``     a visual-sounding question with no image; the answer is ``"I cannot see the image."``
                    (what a text-only LLM says, and what a hard-merged MLLM falls back to).
Visual world (the MLLM is tuned on it; ScienceQA/MMBench-like multiple choice on 32x32 images whose
shapes sit exactly on the 8x8 CLIP patch grid):
  - ``colour``  what colour is the shape?          - ``count``  how many shapes are there?
  - ``region``  which region of the map is highlighted?

One prompt format is used everywhere (training, evaluation, harness YAMLs, dashboard): ``format_prompt``,
and ``format_chat`` for the text the model actually reads (``"<image> "`` + prompt for visual items).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

IMAGE_TOKEN = "<image>"
REFUSAL = "I cannot see the image."
LETTERS = ("A", "B", "C", "D")
IMAGE_SIZE = 32  # pixels; 4x4 grid of 8x8 cells = CLIP patches
CELL = 8

LANGUAGE_TASKS = ("arithmetic", "facts", "reading", "noimage")
VISUAL_TASKS = ("colour", "count", "region")

COLOURS = {  # name -> RGB; well separated so a random (frozen) CLIP tower still tells them apart
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 200),
    "orange": (250, 140, 0),
}
NUMBER_WORDS = ("one", "two", "three", "four")
REGIONS = ("northwest", "northeast", "southwest", "southeast")  # quadrants of the 4x4 cell grid

NAMES = ("tom", "mia", "sam", "ana", "leo", "ivy", "max", "eva", "ben", "zoe")
OBJECTS = ("apples", "pens", "cards", "stones", "shells", "books", "coins", "cups")
PLACES = ("park", "beach", "market", "school", "garden", "library", "river", "farm")
THINGS = ("ball", "kite", "hat", "bag", "box", "scarf")
ANIMALS = ("zorb", "plin", "quax", "drell", "mofo", "tesk", "vunt", "glim", "brap", "snee",
           "kolt", "frim", "yarp", "wisk", "nubb", "chet", "lorp", "grix", "pell", "dax")
HOMES = ("forest", "desert", "cave", "mountain", "sea", "swamp")
FOODS = ("seeds", "fish", "leaves", "bugs", "fruit", "roots")


@dataclass(frozen=True)
class Item:
    """One evaluation or training example.

    ``prompt`` is ``format_prompt(question, choices)``; ``answer`` is the exact target text (a choice name
    for multiple choice, a number for arithmetic, ``REFUSAL`` for noimage). ``image`` is an RGB uint8
    array [32, 32, 3] for visual items, else None.
    """

    id: str
    task: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    image: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def prompt(self) -> str:
        return format_prompt(self.question, self.choices)

    @property
    def answer_letter(self) -> str | None:
        return LETTERS[self.choices.index(self.answer)] if self.answer in self.choices else None


def format_prompt(question: str, choices: tuple[str, ...] | list[str] = ()) -> str:
    """The one prompt format: ``"Question: q Choices: (A) x (B) y Answer:"`` (no Choices part if none).

    Example:
        >>> format_prompt("what colour is the shape ?", ["red", "blue"])
        'Question: what colour is the shape ? Choices: (A) red (B) blue Answer:'
    """
    parts = [f"Question: {question}"]
    if choices:
        parts.append("Choices: " + " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)))
    parts.append("Answer:")
    return " ".join(parts)


def format_chat(prompt: str, image: bool) -> str:
    """The text the model reads: ``"<image> " + prompt`` for visual items, the prompt alone otherwise.

    The processor's chat template renders exactly this (see ``tokenizer.CHAT_TEMPLATE``).
    """
    return f"{IMAGE_TOKEN} {prompt}" if image else prompt


def _choices(rng: random.Random, answer: str, pool: tuple[str, ...], n: int = 4) -> tuple[str, ...]:
    """``n`` distinct options from ``pool`` including ``answer``, in random order."""
    others = rng.sample([p for p in pool if p != answer], n - 1)
    opts = others + [answer]
    rng.shuffle(opts)
    return tuple(opts)


def knowledge_base() -> dict[str, dict[str, str]]:
    """The fixed facts: animal -> {colour, home, food}. Fixed (seed 1234), independent of the world seed."""
    rng = random.Random(1234)
    return {a: {"colour": rng.choice(list(COLOURS)), "home": rng.choice(HOMES), "food": rng.choice(FOODS)}
            for a in ANIMALS}


# ----------------------------------------------------------------------------------------------- language
def _arithmetic(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        q = f"{name} has {a} {obj} . {name} gets {b} more {obj} . how many {obj} does {name} have now ?"
        return q, str(a + b), ()
    a, b = max(a, b) + rng.randint(0, 5), min(a, b)
    q = f"{name} has {a} {obj} . {name} gives away {b} {obj} . how many {obj} does {name} have now ?"
    return q, str(a - b), ()


def _facts(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    kb = knowledge_base()
    animal = rng.choice(ANIMALS)
    rel = rng.choice(("colour", "home", "food"))
    q = {"colour": f"what colour is the {animal} ?", "home": f"where does the {animal} live ?",
         "food": f"what does the {animal} eat ?"}[rel]
    pool = {"colour": tuple(COLOURS), "home": HOMES, "food": FOODS}[rel]
    ans = kb[animal][rel]
    return q, ans, _choices(rng, ans, pool)


def _reading(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    colour, thing = rng.choice(list(COLOURS)), rng.choice(THINGS)
    story = f"Story: {name} went to the {place} with a {colour} {thing} ."
    kind = rng.choice(("place", "colour", "thing"))
    if kind == "place":
        return f"{story} where did {name} go ?", place, _choices(rng, place, PLACES)
    if kind == "colour":
        return f"{story} what colour was the {thing} ?", colour, _choices(rng, colour, tuple(COLOURS))
    return f"{story} what did {name} take ?", thing, _choices(rng, thing, THINGS)


def _visual_question(task: str) -> str:
    return {"colour": "what colour is the shape in the image ?",
            "count": "how many shapes are in the image ?",
            "region": "which region of the map is highlighted in the image ?"}[task]


def _visual_pool(task: str) -> tuple[str, ...]:
    return {"colour": tuple(COLOURS), "count": NUMBER_WORDS, "region": REGIONS}[task]


def _noimage(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    task = rng.choice(VISUAL_TASKS)
    pool = _visual_pool(task)
    return _visual_question(task), REFUSAL, _choices(rng, rng.choice(pool), pool)


_LANGUAGE_MAKERS = {"arithmetic": _arithmetic, "facts": _facts, "reading": _reading, "noimage": _noimage}


# ------------------------------------------------------------------------------------------------- visual
def _shape_mask(kind: int) -> np.ndarray:
    """An 8x8 boolean mask: 0 square, 1 diamond, 2 cross, 3 ring."""
    y, x = np.mgrid[0:CELL, 0:CELL]
    c = (CELL - 1) / 2
    return [
        (abs(y - c) < 3.2) & (abs(x - c) < 3.2),
        (abs(y - c) + abs(x - c)) < 4.0,
        (abs(y - c) < 1.2) | (abs(x - c) < 1.2),
        ((y - c) ** 2 + (x - c) ** 2 < 12.5) & ((y - c) ** 2 + (x - c) ** 2 > 3.5),
    ][kind]


def _paint(img: np.ndarray, cell: int, rgb: tuple[int, int, int], kind: int) -> None:
    r, c = divmod(cell, 4)
    block = img[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
    block[_shape_mask(kind)] = rgb


def _visual(task: str, rng: random.Random, nrng: np.random.Generator):
    """One visual example: (question, answer, choices, image [32, 32, 3] uint8)."""
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 245, dtype=np.uint8)  # near-white background
    img = np.clip(img.astype(np.int16) - nrng.integers(0, 12, size=img.shape), 0, 255).astype(np.uint8)
    if task == "colour":
        ans = rng.choice(list(COLOURS))
        _paint(img, rng.randrange(16), COLOURS[ans], rng.randrange(4))
    elif task == "count":
        n = rng.randint(1, 4)
        ans = NUMBER_WORDS[n - 1]
        rgb = COLOURS[rng.choice(list(COLOURS))]
        for cell in rng.sample(range(16), n):
            _paint(img, cell, rgb, rng.randrange(4))
    elif task == "region":
        img[:] = (170, 170, 170)  # a grey map with thin borders between quadrants
        img[15:17, :] = 90
        img[:, 15:17] = 90
        q = rng.randrange(4)
        ans = REGIONS[q]
        r0, c0 = (q // 2) * 16, (q % 2) * 16
        img[r0 + 1:r0 + 15, c0 + 1:c0 + 15] = COLOURS["red"]
    else:
        raise ValueError(f"unknown visual task {task!r}; expected one of {VISUAL_TASKS}")
    return _visual_question(task), ans, _choices(rng, ans, _visual_pool(task)), img


# ------------------------------------------------------------------------------------------------ splits
def make_items(kind: str, n_per_task: int, seed: int, *, exclude: set[str] | None = None,
               split: str = "eval") -> list[Item]:
    """``n_per_task`` items for each task of ``kind`` ("language" | "visual"), deterministic in ``seed``.

    ``exclude``: prompts that must not appear (language items are deduplicated against the held-out set;
    visual items are new random images anyway). Within one call prompts (language) are unique per task
    only where the task has enough distinct prompts; duplicates across the training set are fine.
    """
    if kind not in ("language", "visual"):
        raise ValueError(f"kind must be 'language' or 'visual', got {kind!r}")
    tasks = LANGUAGE_TASKS if kind == "language" else VISUAL_TASKS
    rng = random.Random(f"{kind}-{split}-{seed}")  # str seeds are hashed with sha512: process-stable
    nrng = np.random.default_rng([seed, 0 if split == "eval" else 1, len(kind)])
    items: list[Item] = []
    for task in tasks:
        made, tries = 0, 0
        while made < n_per_task:
            tries += 1
            if tries > 100 * n_per_task + 1000:
                raise RuntimeError(f"could not make {n_per_task} {task} items outside `exclude`")
            if kind == "language":
                q, a, ch = _LANGUAGE_MAKERS[task](rng)
                img = None
            else:
                q, a, ch, img = _visual(task, rng, nrng)
            item = Item(id=f"{task}-{split}-{made:05d}", task=task, question=q, answer=a, choices=ch, image=img)
            if exclude is not None and kind == "language" and item.prompt in exclude:
                continue
            items.append(item)
            made += 1
    return items


def eval_items(kind: str, seed: int = 0, n_per_task: int | None = None) -> list[Item]:
    """The held-out evaluation items (25 per language task, 32 per visual task by default)."""
    n = n_per_task or (25 if kind == "language" else 32)
    return make_items(kind, n, seed, split="eval")


def train_items(kind: str, n_per_task: int, seed: int = 0, eval_seed: int = 0) -> list[Item]:
    """Training items, never sharing a language prompt with ``eval_items(kind, eval_seed)``."""
    held = {it.prompt for it in eval_items(kind, eval_seed)} if kind == "language" else None
    # facts have only 60 questions x many choice orders: the held-out prompt (with its choice order) is excluded
    return make_items(kind, n_per_task, seed, exclude=held, split="train")


def all_words() -> list[str]:
    """Every word the worlds can produce (the tokenizer's vocabulary), sorted."""
    words: set[str] = set()
    texts = [format_prompt("x", LETTERS), REFUSAL, "Story: went to the with a . where did go ? what colour was "
             "the ? what did take ? has . gets more . how many does have now ? gives away what is where "
             "live ? eat ? shape in image which region of map highlighted shapes are"]
    texts += [_visual_question(t) for t in VISUAL_TASKS]
    texts += [" ".join(x) for x in (NAMES, OBJECTS, PLACES, THINGS, ANIMALS, HOMES, FOODS, NUMBER_WORDS,
                                    REGIONS, tuple(COLOURS))]
    texts.append(" ".join(str(i) for i in range(0, 30)))
    from .tokenizer import pre_tokenize  # the same splitting rule the tokenizer uses
    for t in texts:
        words.update(pre_tokenize(t))
    return sorted(words)  # tests/test_organism.py checks that generated items never hit <unk>
