"""The pair's evaluation suite, written as local lm-eval / lmms-eval tasks into one folder.

    write_suite(folder, cfg, tokenizer_dir) -> folder/suite.yaml (LA/VA tasks) and folder/prose.yaml

Language (lm-eval, on the MLLM's language model; LA = their mean):
    rp_capitals_mc   "Question: What is the capital of X?\\nAnswer:" -> 4 capitals by log-likelihood (acc)
    rp_capitals_qa   the same question as an instruct chat turn, answered freely (short answer: correct
                     when the capital's name occurs in the answer, case and accents ignored)
    rp_wordnet_mc    a WordNet gloss -> 4 nouns by log-likelihood (acc)
Visual (lmms-eval, free-form answer classified by ``lfm.taxonomy``; VA = their mean):
    rp_digits, rp_colour, rp_shape, rp_count
Held-out prose (lm-eval loglikelihood_rolling; not part of LA): rp_prose_gpl3, rp_prose_pydoc, each about
``cfg.prose_tokens`` tokens, reported as token perplexity (the base tokenizer's tokens) and word perplexity.
Every task has ``cfg.test_per_task`` items (the language sources refuse more than they hold).

The build's own forgetting check reads one more held-out text, outside both suites: rp_prose_check
(``data.check_prose``, the MPL-2.0), in folder/check.yaml.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from .config import BuildConfig
from .data import VISUAL_TASKS, capitals, check_prose, distractors, normalise, prose, visual_items, wordnet_glosses

LANGUAGE_TASKS = ("capitals_mc", "capitals_qa", "wordnet_mc")
PROSE_TASKS = ("gpl3", "pydoc")
CHECK_PROSE = "check"
QA_SUFFIX = "Answer with the name only."


def short_answer_correct(generated: str, answer: str) -> bool:
    """The short-answer rule: the answer's name occurs in the generation (normalised).

    >>> short_answer_correct("The capital of France is Paris.", "Paris")
    True
    """
    return normalise(answer) in normalise(generated)


def language_items(cfg: BuildConfig, tokenizer) -> list[dict]:
    """Every language item: {id, task, prompt, answer, choices, target}, ``cfg.test_per_task`` per task."""
    rng = random.Random("language-items")
    pairs = capitals()
    pool = [c for _, c in pairs]
    n = cfg.test_per_task
    words = wordnet_glosses(n)
    for source, have in (("capitals (miscfiles' countries with a capital)", len(pairs)),
                         ("wordnet_mc (common WordNet nouns)", len(words))):
        if have < n:
            raise ValueError(f"{source}: {have} items, fewer than test_per_task={n}: lower test_per_task")
    items = []
    for i, (country, capital) in enumerate(pairs[:n]):
        choices = distractors(capital, pool, 3, rng)
        items.append({"id": f"capitals_mc-{i}", "task": "capitals_mc", "prompt":
                      f"Question: What is the capital of {country}?\nAnswer:", "answer": capital,
                      "choices": choices, "target": choices.index(capital)})
        chat = [{"role": "user", "content": f"What is the capital of {country}? {QA_SUFFIX}"}]
        items.append({"id": f"capitals_qa-{i}", "task": "capitals_qa", "prompt": tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False), "answer": capital, "choices": [], "target": 0})
    pool = [w for w, _ in words]
    for i, (word, gloss) in enumerate(words):
        choices = distractors(word, pool, 3, rng)
        items.append({"id": f"wordnet_mc-{i}", "task": "wordnet_mc", "prompt":
                      f"Definition: {gloss}.\nThe word defined is:", "answer": word, "choices": choices,
                      "target": choices.index(word)})
    return items


def prose_items(cfg: BuildConfig, tokenizer) -> list[dict]:
    """{id, task, text, tokens}: the first ``cfg.prose_tokens`` tokens of each prose source (the suite's and
    the check's)."""
    out = []
    for name, text in {**prose(), CHECK_PROSE: check_prose()}.items():
        ids = tokenizer(text, add_special_tokens=False).input_ids[:cfg.prose_tokens]
        piece = tokenizer.decode(ids)
        out.append({"id": f"prose-{name}", "task": f"prose_{name}", "text": piece,
                    "tokens": len(tokenizer(piece, add_special_tokens=False).input_ids)})
    return out


# --------------------------------------------------------------------------------------- the task files

HOOKS = "lfm.realpair.task_hooks"  # the tasks' Python hooks live in lfm (a suite folder is data: no utils.py)
LM_EVAL_SHARED = f"""\
custom_dataset: !function {HOOKS}.docs
test_split: test
metadata:
  version: 1.0
"""
LM_EVAL_TASKS = {
    "capitals_mc": "output_type: multiple_choice\ndoc_to_text: \"{{prompt}}\"\ndoc_to_choice: choices\n"
                   "doc_to_target: target\ntarget_delimiter: \" \"\nmetric_list:\n  - metric: acc\n",
    "wordnet_mc": "output_type: multiple_choice\ndoc_to_text: \"{{prompt}}\"\ndoc_to_choice: choices\n"
                  "doc_to_target: target\ntarget_delimiter: \" \"\nmetric_list:\n  - metric: acc\n",
    "capitals_qa": "output_type: generate_until\ndoc_to_text: \"{{prompt}}\"\ndoc_to_target: \"{{answer}}\"\n"
                   "target_delimiter: \"\"\ngeneration_kwargs:\n  until: [\"<|im_end|>\"]\n  max_gen_toks: 16\n"
                   f"  do_sample: false\nprocess_results: !function {HOOKS}.short_answer\n"
                   "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
    "prose": "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
             f"process_results: !function {HOOKS}.perplexity\nmetric_list:\n"
             "  - metric: token_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n"
             "  - metric: word_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n",
}
LMMS_EVAL_TASK = """\
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: generate_until
process_docs: !function {hooks}.{task}_docs
doc_to_visual: !function {hooks}.doc_to_visual
doc_to_text: !function {hooks}.doc_to_text
lmms_eval_specific_kwargs:
  default:
    items: {folder}
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
process_results: !function {hooks}.visual_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def visual_records(folder: str | Path) -> list[dict]:
    """The suite's visual items as records {id, task, question, prompt, choices, answer, image: path}: its
    ``items/visual.jsonl``, an items file as `lfm compare --items` reads it (``read_items_file``)."""
    from lfm.evaluate.compare import read_items_file

    return read_items_file(Path(folder) / "items" / "visual.jsonl")


def write_suite(folder: str | Path, cfg: BuildConfig, tokenizer) -> Path:
    """Write items, images and task files into ``folder`` (replacing it). Returns folder/suite.yaml."""
    folder = Path(folder)
    items = folder / "items"
    (items / "images").mkdir(parents=True, exist_ok=True)
    lang = language_items(cfg, tokenizer)
    (items / "language.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lang))
    (items / "prose.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prose_items(cfg, tokenizer)))
    vis = []
    for task in VISUAL_TASKS:
        for it in visual_items(task, "test", cfg.test_per_task, cfg.image_size):
            name = f"images/{it.id}.png"
            Image.fromarray(it.image).save(items / name)
            vis.append({"id": it.id, "task": task, "question": it.question, "prompt": it.prompt,
                        "choices": list(it.choices), "answer": it.answer, "image": name})
    (items / "visual.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vis))

    lm, lmms = folder / "lm_eval", folder / "lmms_eval"
    lm.mkdir(exist_ok=True)
    lmms.mkdir(exist_ok=True)
    where = items.resolve()  # the hooks find the items through the task files: absolute paths
    for task in LANGUAGE_TASKS + tuple(f"prose_{p}" for p in PROSE_TASKS + (CHECK_PROSE,)):
        body = LM_EVAL_TASKS["prose" if task.startswith("prose_") else task]
        data = json.dumps(str(where / ("prose.jsonl" if task.startswith("prose_") else "language.jsonl")))
        (lm / f"rp_{task}.yaml").write_text(f"task: rp_{task}\ndataset_kwargs:\n  task: {task}\n  items: {data}\n"
                                            f"{LM_EVAL_SHARED}{body}")
    for task in VISUAL_TASKS:
        (lmms / f"rp_{task}.yaml").write_text(f"task: rp_{task}\n" + LMMS_EVAL_TASK.format(
            items=json.dumps(str(where / "visual.jsonl")), folder=json.dumps(str(where)), task=task, hooks=HOOKS))
    suite = {"name": "realpair", "include_path": ["lm_eval"], "lmms_include_path": ["lmms_eval"],
             "include_defaults": False,
             "language": [{"task": f"rp_{t}", "label": t, "metric": "acc,none"} for t in LANGUAGE_TASKS],
             "visual": [{"task": f"rp_{t}", "label": t, "metric": "acc,none"} for t in VISUAL_TASKS]}
    prose_suite = {"name": "realpair-prose", "include_path": ["lm_eval"], "include_defaults": False,
                   "language": [{"task": f"rp_prose_{p}", "label": f"ppl_{p}", "metric": "token_perplexity,none"}
                                for p in PROSE_TASKS]}
    check_suite = {"name": "realpair-check", "include_path": ["lm_eval"], "include_defaults": False,
                   "language": [{"task": f"rp_prose_{CHECK_PROSE}", "label": f"ppl_{CHECK_PROSE}",
                                 "metric": "token_perplexity,none"}]}
    import yaml

    (folder / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    (folder / "prose.yaml").write_text(yaml.safe_dump(prose_suite, sort_keys=False))
    (folder / "check.yaml").write_text(yaml.safe_dump(check_suite, sort_keys=False))
    return folder / "suite.yaml"
