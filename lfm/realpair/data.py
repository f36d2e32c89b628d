"""Real items nobody here wrote, and the drawn images, for training and evaluating the pair.

Language (evaluation only; the tuning never sees them):
    capitals   country -> capital pairs from Debian's ``miscfiles`` (/usr/share/misc/countries.gz)
    wordnet    a common noun's first-sense gloss -> the noun, from Debian's ``wordnet-base`` (data.noun)
    prose      held-out text: Debian's GPL-3 (/usr/share/common-licenses/GPL-3) and the first topics of
               the stdlib's ``pydoc_data.topics`` reference prose (the suite's perplexity tasks)
    check      held-out text outside the suite: Debian's MPL-2.0 (the build's forgetting check)
Text-only tuning data (the replay LLaVA mixes into visual instruction tuning; disjoint from the above):
    definitions  "What does the word X mean?" -> its first-sense gloss, for WordNet nouns outside the
                 evaluation's pool of common nouns
    replay       paragraphs of the other pydoc topics, language-modelled as plain text
Visual (training and held-out evaluation, disjoint images):
    digits     scikit-learn's bundled handwritten digits (8x8, scaled to 32x32); the tower's pretraining
               also sees distorted copies of the training digits (``augmented_digits``)
    colour     the colour of one drawn shape;  shape: circle / square / triangle / cross;
    count      how many small squares (1-5)

Items are a pure function of ``ITEMS_SEED`` (the tuning seed never changes what is measured).
"""

from __future__ import annotations

import functools
import gzip
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .config import TEXT_KINDS, VISUAL_TASKS

ITEMS_SEED = 0
COUNTRIES = Path("/usr/share/misc/countries.gz")
WORDNET = Path("/usr/share/wordnet")
GPL3 = Path("/usr/share/common-licenses/GPL-3")
MPL2 = Path("/usr/share/common-licenses/MPL-2.0")
APT = {COUNTRIES: "miscfiles", WORDNET: "wordnet-base", GPL3: "base-files", MPL2: "base-files"}
# the pydoc topics (sorted by name) held out for evaluation: the first ones, up to this many characters (the
# suite's prose task reads its first ``prose_tokens`` tokens, ~4.5 characters each); the rest is replay
PYDOC_HELD_OUT_CHARS = 40_000

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 230), "yellow": (235, 215, 40),
           "purple": (140, 50, 180), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = ("1", "2", "3", "4", "5")
DIGITS = tuple(str(d) for d in range(10))
QUESTIONS = {"digits": "Which digit is written in the image?", "colour": "What colour is the shape in the image?",
             "shape": "What shape is shown in the image?", "count": "How many squares are in the image?"}
CHOICES = {"digits": DIGITS, "colour": tuple(COLOURS), "shape": SHAPES, "count": COUNTS}


class DataMissing(RuntimeError):
    """A Debian data package is not installed (the message names it)."""


def require(path: Path) -> Path:
    if not path.exists():
        raise DataMissing(f"{path} is missing: install the Debian package `{APT[path]}` "
                          f"(apt-get install -y {APT[path]})")
    return path


# --------------------------------------------------------------------------------------- language

def capital_name(field: str) -> str:
    """The first capital a miscfiles entry names: 'La Paz (seat of government), Sucre (...)' -> 'La Paz'.

    >>> capital_name("Washington, DC")
    'Washington'
    """
    return field.split(" (")[0].split(",")[0].strip()


def capitals() -> list[tuple[str, str]]:
    """(country, capital) from miscfiles in file order: one per country that has a capital whose name is not
    in the question (Singapore, Mexico, Tunis for Tunisia are left out: the answer would be a copy).

    >>> ("France", "Paris") in capitals()
    True
    """
    out = []
    for line in gzip.open(require(COUNTRIES), "rt", encoding="utf-8"):
        if line.startswith("#") or line.count(":") < 4:
            continue
        country, field = (p.strip() for p in line.rstrip("\n").split(":")[3:5])
        capital = capital_name(field)
        if not (country and capital) or "," in country or "(" in country:
            continue
        a, b = normalise(country), normalise(capital)
        if a not in b and b not in a:
            out.append((country, capital))
    return out


def normalise(text: str) -> str:
    """Lower case, accents stripped, whitespace collapsed: 'Bogotá' and 'bogota' compare equal.

    >>> normalise("  Bogotá ")
    'bogota'
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return " ".join(text.split())


@functools.lru_cache(maxsize=None)
def _noun_glosses(min_tagged: int) -> tuple[tuple[str, str], ...]:
    """(noun, first-sense gloss), sorted by noun, for one-word lower-case nouns of 3-12 letters whose first
    sense is tagged >= ``min_tagged`` times in WordNet's semantic concordance (index.noun tagsense_cnt) and
    whose gloss does not contain the noun."""
    index, data = require(WORDNET) / "index.noun", WORDNET / "data.noun"
    first_sense = {}
    for line in open(index, encoding="utf-8"):
        if line.startswith(" "):
            continue
        f = line.split()
        lemma, p_cnt = f[0], int(f[3])
        tagsense = int(f[5 + p_cnt])
        if lemma.isalpha() and lemma.islower() and 3 <= len(lemma) <= 12 and tagsense >= min_tagged:
            first_sense[int(f[-int(f[2])])] = lemma
    glosses = {}
    for line in open(data, encoding="utf-8"):
        if line.startswith(" "):
            continue
        offset = int(line[:8])
        if offset in first_sense and "|" in line:
            gloss = line.split("|", 1)[1].split(";")[0].strip()
            if first_sense[offset] not in gloss.lower() and len(gloss) > 10:
                glosses[first_sense[offset]] = gloss
    return tuple(sorted(glosses.items()))


COMMON_TAGGED = 5  # a noun is common (the evaluation's pool) when its first sense is tagged >= 5 times


def wordnet_glosses(n: int) -> list[tuple[str, str]]:
    """(noun, gloss of its most frequent sense) for ``n`` common one-word nouns (seeded choice)."""
    pairs = list(_noun_glosses(COMMON_TAGGED))
    random.Random(f"wordnet-{ITEMS_SEED}").shuffle(pairs)
    return pairs[:n]


def prose() -> dict[str, str]:
    """{"gpl3": text, "pydoc": text}: the suite's held-out prose (pydoc: the held-out topics only)."""
    held_out, _ = _pydoc_split()
    return {"gpl3": require(GPL3).read_text(encoding="utf-8"), "pydoc": "\n\n".join(held_out)}


def check_prose() -> str:
    """The build's held-out text, outside the suite: Debian's copy of the MPL-2.0."""
    return require(MPL2).read_text(encoding="utf-8")


def _pydoc_split() -> tuple[list[str], list[str]]:
    """(held-out topics, replay topics): the sorted topics' texts, the first ones up to PYDOC_HELD_OUT_CHARS."""
    import pydoc_data.topics as topics

    texts = [topics.topics[k] for k in sorted(topics.topics)]
    n, chars = 0, 0
    while n < len(texts) and chars < PYDOC_HELD_OUT_CHARS:
        chars += len(texts[n]) + 2
        n += 1
    return texts[:n], texts[n:]


# --------------------------------------------------------------------------------------- text-only tuning

@dataclass(frozen=True)
class TextItem:
    """One text-only tuning example: an instruction turn (``prompt`` -> ``answer``) or, with prompt None,
    replay text language-modelled as a whole (``answer`` is the text)."""
    id: str
    kind: str  # 'definitions' | 'replay'
    prompt: str | None
    answer: str


def text_items(kind: str, n: int) -> list[TextItem]:
    """``n`` text-only tuning items of ``kind`` (a seeded choice; never an evaluation noun or topic).

    definitions: nouns tagged at least once but below the common threshold (the wordnet_mc pool and its
    distractors are all common nouns); replay: paragraphs of >= 200 characters of the replay topics that no
    held-out topic contains.
    """
    rng = random.Random(f"text-{kind}-{ITEMS_SEED}")
    if kind == "definitions":
        common = {w for w, _ in _noun_glosses(COMMON_TAGGED)}
        pool = [(w, g) for w, g in _noun_glosses(1) if w not in common]
        picked = rng.sample(pool, min(n, len(pool)))
        return [TextItem(f"definitions-{w}", kind, f'What does the word "{w}" mean? Answer in a few words.', g)
                for w, g in picked]
    if kind == "replay":
        held_out, replay = _pydoc_split()
        held_out = "\n".join(held_out)  # a topic may repeat another's paragraph: those stay held out
        paragraphs = [p.strip() for t in replay for p in t.split("\n\n")
                      if len(p.strip()) >= 200 and p.strip() not in held_out]
        picked = rng.sample(range(len(paragraphs)), min(n, len(paragraphs)))
        return [TextItem(f"replay-{i}", kind, None, paragraphs[i]) for i in picked]
    raise ValueError(f"unknown text kind {kind!r}: use one of {TEXT_KINDS}")


def distractors(answer: str, pool: list[str], k: int, rng: random.Random) -> list[str]:
    """``answer`` and ``k`` other members of ``pool``, shuffled."""
    others = rng.sample([p for p in pool if p != answer], k)
    choices = others + [answer]
    rng.shuffle(choices)
    return choices


# --------------------------------------------------------------------------------------- visual

@dataclass(frozen=True)
class VisualItem:
    id: str
    task: str
    answer: str
    image: np.ndarray  # [32, 32, 3] uint8 RGB

    @property
    def question(self) -> str:
        return QUESTIONS[self.task]

    @property
    def choices(self) -> tuple[str, ...]:
        return CHOICES[self.task]

    @property
    def prompt(self) -> str:
        return f"{self.question} Answer with one word."


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    grey = int(rng.integers(90, 140))
    noise = rng.integers(-12, 13, size=(size, size, 1))
    return Image.fromarray(np.clip(grey + noise, 0, 255).repeat(3, axis=2).astype(np.uint8))


def _draw(shape: str, colour: tuple[int, int, int], rng: np.random.Generator, size: int) -> np.ndarray:
    im = _background(rng, size)
    d = ImageDraw.Draw(im)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(rng.integers(r + 1, size - r - 1)) for _ in range(2))
    jitter = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=jitter)
    elif shape == "square":
        d.rectangle(box, fill=jitter)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=jitter)
    else:  # cross
        w = max(2, r // 2)
        d.rectangle((cx - r, cy - w // 2, cx + r, cy + w // 2), fill=jitter)
        d.rectangle((cx - w // 2, cy - r, cx + w // 2, cy + r), fill=jitter)
    return np.asarray(im)


def _count_image(n: int, rng: np.random.Generator, size: int) -> np.ndarray:
    im = _background(rng, size)
    d = ImageDraw.Draw(im)
    colour = COLOURS[list(COLOURS)[int(rng.integers(len(COLOURS)))]]
    cells = rng.permutation(16)[:n]  # a 4x4 grid of 8x8 cells: squares never overlap
    for c in cells:
        x0, y0 = int(c % 4) * 8 + int(rng.integers(1, 3)), int(c // 4) * 8 + int(rng.integers(1, 3))
        s = int(rng.integers(3, 6))
        d.rectangle((x0, y0, x0 + s, y0 + s), fill=colour)
    return np.asarray(im)


def _digit_image(pixels_8x8: np.ndarray, size: int) -> np.ndarray:
    grey = np.kron(pixels_8x8 * (255.0 / 16.0), np.ones((size // 8, size // 8)))
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def _digits(split: str) -> list[tuple[int, np.ndarray, int]]:
    """(scikit-learn's index, image [8, 8] in 0..16, label) of its digits in ``split``: a seeded permutation
    of its 1797, the first 300 the test pool, the other 1497 for training."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(ITEMS_SEED).permutation(len(digits.target))
    pool = order[:300] if split == "test" else order[300:]
    return [(int(i), digits.images[i], int(digits.target[i])) for i in pool]


def distort_digit(pixels_8x8: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """One digit [8, 8] (0..16) rotated by ``degrees`` and scaled by ``scale`` about its centre and shifted by
    ``shift`` source pixels (rows, columns), redrawn at 8x8 as scikit-learn drew its digits: a 32x32 bitmap
    counted in 4x4 blocks. The identity distortion returns the digit unchanged:

    >>> d = np.arange(64, dtype=float).reshape(8, 8) % 17
    >>> bool(np.allclose(distort_digit(d, 0.0, 1.0, (0.0, 0.0)), d))
    True
    """
    from scipy import ndimage

    big = np.kron(pixels_8x8, np.ones((4, 4)))  # [32, 32]
    a = np.deg2rad(degrees)
    inverse = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale  # output -> input coordinates
    centre = np.array([15.5, 15.5])
    offset = centre - inverse @ centre + 4 * np.asarray(shift, dtype=float)
    warped = ndimage.affine_transform(big, inverse, offset=offset, order=1, mode="grid-constant", cval=0.0)
    return warped.reshape(8, 4, 8, 4).mean(axis=(1, 3))


def augmented_digits(copies: int, size: int = 32, degrees: float = 12.0, scale: float = 0.1,
                     shift: float = 0.5) -> list[VisualItem]:
    """``copies`` distorted versions of every training digit (rotation within +-``degrees``, scale within
    1 +- ``scale``, shift within +-``shift`` source pixels, each drawn uniformly): the vision tower's extra
    pretraining images. A ViT trained from scratch on 1497 digits learns them by heart (train 99.8 %,
    held-out 86 %); with 4 copies it sees them at 96.5 % (seeds 0 and 1; docs/realpair.md). A pure function of
    ``ITEMS_SEED``; the test digits are never distorted or seen."""
    rng = np.random.default_rng([ITEMS_SEED, len(VISUAL_TASKS)])  # the drawn tasks use [ITEMS_SEED, 0..3, split]
    train, out = _digits("train"), []
    for k in range(copies):
        for i, image, label in train:
            d = distort_digit(image, rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale),
                              tuple(rng.uniform(-shift, shift, 2)))
            out.append(VisualItem(f"digits-train-{i}-distorted{k}", "digits", str(label), _digit_image(d, size)))
    return out


def visual_items(task: str, split: str, n: int, size: int = 32) -> list[VisualItem]:
    """``n`` items of ``task`` from ``split`` ('train' or 'test'; disjoint images).

    Digits: scikit-learn's 1797 real digits, a seeded permutation; the first 300 are the test pool.
    Drawn tasks: each split has its own seeded generator, so train and test images differ.
    """
    if task not in VISUAL_TASKS or split not in ("train", "test"):
        raise ValueError(f"unknown visual task/split {task!r}/{split!r}: tasks {VISUAL_TASKS}, splits train/test")
    if task == "digits":
        return [VisualItem(f"digits-{split}-{i}", "digits", str(label), _digit_image(image, size))
                for i, image, label in _digits(split)[:n]]
    rng = np.random.default_rng([ITEMS_SEED, VISUAL_TASKS.index(task), split == "test"])
    out = []
    for j in range(n):
        if task == "colour":
            answer = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            image = _draw(SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[answer], rng, size)
        elif task == "shape":
            answer = SHAPES[int(rng.integers(len(SHAPES)))]
            image = _draw(answer, COLOURS[list(COLOURS)[int(rng.integers(len(COLOURS)))]], rng, size)
        else:
            answer = COUNTS[int(rng.integers(len(COUNTS)))]
            image = _count_image(int(answer), rng, size)
        out.append(VisualItem(f"{task}-{split}-{j}", task, answer, image))
    return out
