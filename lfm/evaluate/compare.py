"""Generations of the three Neuron-Fusion stages on ScienceQA-style items, classified, and the transitions.

The paper's Section 4.5: on ScienceQA, hard-merge -> Neuron-Suppress (K=0.2) -> Neuron-Restore (M=0.3);
of the false->correct transitions, 56.7% at the suppress stage were "Not-Known" (the model had refused), and
the restore stage fixed 97.2% of the "Context-Hallucination" cases. ``compare_stages`` produces the per-item
table of those three stages; ``transitions`` counts, for two stages, the items that went from wrong to
correct, by the earlier stage's category (``lfm.taxonomy``).

Stages (lfm's contract): hard = Recipe(method="hard"); suppress = Neuron-Fusion with M=0; restore =
Neuron-Fusion with M>0 (same K, suppressor and restore mode).

Items: 'organism' (the organism's visual items, offline), a hub dataset named in ``HUB_ITEMS`` ('scienceqa':
ScienceQA-IMG's test split, the dataset lmms-eval's scienceqa_img reads; fetched through huggingface_hub, or
found in its cache with HF_HUB_OFFLINE=1, and read by ``datasets``), a JSONL file of such records
(``read_items_file``; the real pair's is ``<root>/suite/items/visual.jsonl``), or a list of records {id, question,
choices, answer, image (path or PIL)}.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lfm.images import open_rgb
from lfm.methods import STAGES, Recipe, stage_recipes
from lfm.taxonomy import CATEGORIES, classify



@dataclass(frozen=True)
class HubItems:
    """A hub dataset `lfm compare --items NAME` reads: where the split is, and which columns hold what."""

    repo: str  # dataset id on the hub
    config: str
    split: str
    question: str = "question"
    choices: str = "choices"  # a list of strings
    answer: str = "answer"  # the index of the right choice
    hint: str = "hint"  # context shown before the question ('Context: ...', as lmms-eval)
    image: str = "image"  # rows without an image are skipped


HUB_ITEMS = {  # the dataset, config and split lmms-eval's scienceqa_img reads, in the hub repo's own layout
    "scienceqa": HubItems("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "test"),
}


def neuron_fusion_stages(density: float = 0.2, neurons: float = 0.3, suppress: str = "ties",
                         restore: str = "rescale", **fields) -> dict[str, Recipe]:
    """{'hard', 'suppress', 'restore'} -> Recipe for Neuron-Fusion at K, M (``lfm.methods.stage_recipes``)."""
    return stage_recipes(Recipe(method="neuron_fusion", density=density, neurons=neurons, suppress=suppress,
                                restore=restore, **fields))


ITEM_FIELDS = "id, question, choices (two or more strings), answer (one of them), image; optional prompt"


def read_items_file(path: str | Path) -> list[dict]:
    """The records of a JSONL items file, one JSON object a line:

        {"id": str, "question": str, "choices": [str, ...], "answer": str (one of choices),
         "image": path (relative to the file's folder, or absolute), "prompt": str (optional: the user text;
         default ``scienceqa_prompt``)}

    Every line is checked before anything else happens (no model is loaded for a bad file): the first bad
    line raises ValueError '<file>:<line>: <what is wrong>'. Image paths come back absolute.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the items file ({type(e).__name__}: {e})") from None
    recs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg}); each line must be one object with {ITEM_FIELDS}") from None
        if not isinstance(r, dict):
            raise ValueError(f"{where}: a JSON {type(r).__name__}, expected an object with {ITEM_FIELDS}")
        missing = [k for k in ("id", "question", "choices", "answer", "image") if k not in r]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}; each line needs {ITEM_FIELDS}")
        if not all(isinstance(r[k], str) for k in ("id", "question", "answer", "image")) or \
                not isinstance(r.get("prompt", ""), str):
            raise ValueError(f"{where}: id, question, answer, image and prompt must be strings")
        choices = r["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: choices must be a list of two or more strings, got {choices!r}")
        if r["answer"] not in choices:
            raise ValueError(f"{where}: answer {r['answer']!r} is not one of its choices {choices}")
        image = Path(r["image"]) if Path(r["image"]).is_absolute() else path.parent / r["image"]
        if not image.is_file():
            raise ValueError(f"{where}: image {image} not found (a relative image path is read from {path.parent})")
        recs.append({**r, "image": str(image)})
    if not recs:
        raise ValueError(f"{path}: no items; each line must be one JSON object with {ITEM_FIELDS}")
    return recs


def stage_items(items: str | Path | list = "organism", *, limit: int | None = None) -> list[dict]:
    """Records {id, question, choices, answer, prompt, image: PIL} for 'organism', 'scienceqa', a JSONL items
    file (``read_items_file``) or a list."""
    if isinstance(items, list):
        recs = [dict(r) for r in items]
    elif items != "organism" and items not in HUB_ITEMS and (str(items).endswith(".jsonl") or Path(items).is_file()):
        recs = read_items_file(items)
    elif items == "organism":
        from lfm.organism import format_prompt, scienceqa_records

        recs = scienceqa_records()
        for r in recs:
            r["prompt"] = format_prompt(r["question"], r["choices"])
    elif items in HUB_ITEMS:
        recs = hub_records(items, limit)
    else:
        raise ValueError(f"--items must be 'organism', {', '.join(repr(k) for k in HUB_ITEMS)} or a JSONL items "
                         f"file, got {items!r}")
    recs = recs[:limit] if limit else recs
    for r in recs:
        if isinstance(r.get("image"), (str, Path)):
            r["image"] = open_rgb(r["image"])  # bounded pixels: a bomb is refused before any model loads
        r.setdefault("prompt", scienceqa_prompt(r["question"], r["choices"]))
        if r["answer"] not in r["choices"]:
            raise ValueError(f"item {r.get('id')}: answer {r['answer']!r} is not one of its choices {r['choices']}")
    return recs


def scienceqa_prompt(question: str, choices: list[str], hint: str = "") -> str:
    """The prompt lmms-eval's scienceqa_img uses (its context line when there is a hint, the question, lettered
    options, the answer-with-letter instruction)."""
    opts = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{question}\n{opts}\nAnswer with the option's letter from the given choices directly."


def hub_records(name: str, limit: int | None) -> list[dict]:
    """The records of ``HUB_ITEMS[name]``: the repo through huggingface_hub (its cache, offline), read by ``datasets``
    from the snapshot folder as the repo lays it out. The whole repo: ``datasets`` infers a local repo's file format
    from the first config its README lists, so a snapshot of one config's files does not load. Not there:
    DatasetsUnavailable, one line."""
    from huggingface_hub import snapshot_download

    from lfm.evaluate.suites import DatasetsUnavailable

    source = HUB_ITEMS[name]
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    try:
        folder = snapshot_download(source.repo, repo_type="dataset", local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - not cached / not reachable: the one line below says what to do
        where = "HF_HUB_OFFLINE is set and it is not in the hub cache" if offline else \
            f"it could not be fetched ({type(e).__name__})"
        raise DatasetsUnavailable(
            f"--items {name} needs the hub dataset {source.repo} ({source.config}, {source.split} split): {where}; "
            f"fetch it where the hub is reachable: hf download --repo-type dataset {source.repo}") from None
    import datasets

    ds = datasets.load_dataset(folder, source.config, split=source.split)
    recs = []
    for i, d in enumerate(ds):
        if d.get(source.image) is None:
            continue
        question, choices = d[source.question], list(d[source.choices])
        recs.append({"id": f"{name}-{i}", "question": question, "choices": choices,
                     "answer": choices[int(d[source.answer])], "image": d[source.image].convert("RGB"),
                     "prompt": scienceqa_prompt(question, choices, d.get(source.hint) or "")})
        if limit and len(recs) >= limit:
            break
    return recs


def compare_stages(base, tuned, *, items: str | list = "organism", limit: int | None = None,
                   recipes: dict[str, Recipe] | None = None, device: str = "cpu", max_new_tokens: int = 16,
                   batch_size: int = 16, progress: bool = True, **stage_fields):
    """Per-item generations and categories of each stage. Returns a DataFrame with columns
    id, question, choices, answer, and per stage ``<stage>_generated``, ``<stage>_category``."""
    import pandas as pd
    from tqdm.auto import tqdm

    from lfm.resident import ResidentPair
    from lfm.evaluate.harness import generate_answers
    from lfm.evaluate.models import load_eval_model

    recipes = recipes or neuron_fusion_stages(**stage_fields)
    recs = stage_items(items, limit=limit)
    em = load_eval_model(tuned, device=device, processor_required=True)
    if not em.multimodal:
        raise ValueError(f"{tuned} is not a multimodal model: compare needs the tuned MLLM")
    processor = em.require_processor()
    resident = ResidentPair(base, tuned, progress=progress, model_device=device)  # on the CPU, staged to the model
    table = pd.DataFrame({"id": [r["id"] for r in recs], "question": [r["question"] for r in recs],
                          "choices": [" | ".join(r["choices"]) for r in recs], "answer": [r["answer"] for r in recs]})
    for stage, recipe in tqdm(recipes.items(), desc="stages", disable=not progress):
        resident.apply(em.model, recipe)
        gen = generate_answers(em.model, processor, [r["prompt"] for r in recs], [[r["image"]] for r in recs],
                               max_new_tokens=max_new_tokens, batch_size=batch_size)
        table[f"{stage}_generated"] = gen
        table[f"{stage}_category"] = [classify(g, list(r["choices"]), r["answer"]) for g, r in zip(gen, recs)]
    return table


def transitions(table, before: str, after: str) -> dict:
    """Wrong -> correct transitions between two stages, by the earlier stage's category.

    Args:
        table: rows with ``<stage>_category`` columns (a DataFrame or a list of dicts).
    Returns:
        {"from", "to", "n_items", "accuracy_from", "accuracy_to", "fixed" (count of wrong->correct),
         "broken" (correct->wrong), "fixed_by_category": {category: count}, "fixed_share": {category: share of
         fixed}, "fixed_rate": {category: fixed / items in that category before}}.
    """
    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    b, a = f"{before}_category", f"{after}_category"
    for col in (b, a):
        if rows and col not in rows[0]:
            raise KeyError(f"the table has no column {col!r}; stages present: "
                           f"{sorted(c[:-9] for c in rows[0] if c.endswith('_category'))}")
    wrong_before = Counter(r[b] for r in rows if r[b] != "correct")
    fixed = Counter(r[b] for r in rows if r[b] != "correct" and r[a] == "correct")
    n_fixed = sum(fixed.values())
    cats = [c for c in CATEGORIES if c != "correct"]
    n = len(rows)
    return {
        "from": before, "to": after, "n_items": n,
        "accuracy_from": sum(r[b] == "correct" for r in rows) / n if n else None,
        "accuracy_to": sum(r[a] == "correct" for r in rows) / n if n else None,
        "fixed": n_fixed,
        "broken": sum(1 for r in rows if r[b] == "correct" and r[a] != "correct"),
        "wrong_by_category": {c: wrong_before.get(c, 0) for c in cats},
        "fixed_by_category": {c: fixed.get(c, 0) for c in cats},
        "fixed_share": {c: (fixed.get(c, 0) / n_fixed if n_fixed else None) for c in cats},
        "fixed_rate": {c: (fixed.get(c, 0) / wrong_before[c] if wrong_before.get(c) else None) for c in cats},
    }


def transition_counts(table, before: str, after: str):
    """A DataFrame of (category at ``before``, category at ``after``, items) over the items of ``table``."""
    counts = table.groupby([f"{before}_category", f"{after}_category"]).size()
    return counts.rename("items").reset_index().rename(
        columns={f"{before}_category": f"at {before}", f"{after}_category": f"at {after}"})


def summary(table) -> dict:
    """Accuracy and category counts per stage, and the hard->suppress and suppress->restore transitions."""
    stages = [s for s in STAGES if f"{s}_category" in table]
    out = {"stages": {s: {"accuracy": float((table[f"{s}_category"] == "correct").mean()),
                          "categories": {c: int((table[f"{s}_category"] == c).sum()) for c in CATEGORIES}}
                      for s in stages},
           "transitions": [transitions(table, x, y) for x, y in zip(stages, stages[1:])]}
    return out


def format_summary(s: dict) -> str:
    lines = []
    for stage, v in s["stages"].items():
        cats = ", ".join(f"{k} {n}" for k, n in v["categories"].items())
        lines.append(f"{stage:<9} accuracy {v['accuracy']:.3f}   ({cats})")
    for t in s["transitions"]:
        share = ", ".join(f"{k} {t['fixed_by_category'][k]}" + (f" ({100 * t['fixed_share'][k]:.1f}%)" if t["fixed_share"][k] is not None else "")
                          for k in t["fixed_by_category"])
        lines.append(f"{t['from']} -> {t['to']}: {t['fixed']} wrong->correct ({share}); {t['broken']} correct->wrong")
    return "\n".join(lines)
