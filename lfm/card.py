"""The model card (README.md) `lfm merge` writes beside the merged weights, ready for the Hugging Face Hub.

    write_model_card(out_dir, report)     # report: what lfm_recipe.json holds (lfm.merge.build_report)

Its YAML metadata names the two models merged (``base_model``, ``base_model_relation: merge``: the Hub's model
tree); its text says which recipe made it (in a YAML block ``lfm merge --config`` reads back), with which lfm,
how much of each module's change it kept, and how to cite the paper. A model is named by its Hub id when its
directory says it (a Hub cache folder, or a config's ``_name_or_path``), else by its folder's name: local paths
stay out of a card that may be published. Nothing in it depends on the run (time, device, output folder), so
the same merge writes the same bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

CARD_FILE = "README.md"
PAPER_URL = "https://arxiv.org/abs/2505.16703"
CITATION = """\
@misc{yu2025locatethenmerge,
  title         = {Locate-then-Merge: Neuron-Level Parameter Fusion for Mitigating Catastrophic Forgetting in
                   Multimodal LLMs},
  author        = {Yu, Zeping and Ananiadou, Sophia},
  year          = {2025},
  eprint        = {2505.16703},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2505.16703}
}"""
HUB_CACHE_FOLDER = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/[^/]+$")  # huggingface_hub's cache layout
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def model_name(path: str | Path) -> str:
    """The Hub id a model directory came from (its Hub cache folder, else its config's ``_name_or_path`` when
    that is an id and not a local path), else the directory's name."""
    path = Path(path)
    cached = HUB_CACHE_FOLDER.search(path.as_posix())
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    try:
        named = json.loads((path / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        named = ""
    if isinstance(named, str) and HUB_ID.fullmatch(named) and not Path(named).exists():
        return named
    return path.name


def model_card(report: dict) -> str:
    """The card's text (YAML front matter + Markdown) for a merge described by ``report``."""
    base, tuned = (model_name(report["inputs"][k]["path"]) for k in ("base", "tuned"))
    metadata = {"base_model": [base, tuned], "base_model_relation": "merge", "library_name": "transformers",
                "tags": ["lfm", "locate-then-merge", "merge", report["method"]]}
    recipe = yaml.safe_dump(report["recipe"], sort_keys=False).strip()
    kept = "\n".join(f"| {module} | {m['kept_fraction']:.3f} | "
                     + (f"{m['n_located']} / {m['n_neurons']} |" if m["n_neurons"] else "- |")
                     for module, m in report["modules"].items())
    fingerprints = {k: report["inputs"][k]["fingerprint"][:16] for k in ("base", "tuned")}
    return f"""---
{yaml.safe_dump(metadata, sort_keys=False).strip()}
---

# {report["label"]}: {tuned} merged back toward {base}

The tuned model `{tuned}` merged with its base LLM `{base}` by **{report["label"]}**, with lfm
{report["lfm_version"]}, a toolkit for Locate-then-Merge ([arXiv 2505.16703]({PAPER_URL})): a training-free merge
that undoes the forgetting visual instruction tuning causes in the language model.

| | |
|---|---|
| base | `{base}` (lfm fingerprint `{fingerprints["base"]}`) |
| tuned | `{tuned}` (lfm fingerprint `{fingerprints["tuned"]}`) |
| method | `{report["method"]}`: {report["label"]} |
| lfm | {report["lfm_version"]} |

## Recipe

```yaml
{recipe}
```

To merge again: save the block as `recipe.yaml` and run
`lfm merge --base BASE_DIR --tuned TUNED_DIR --config recipe.yaml --out OUT_DIR`. `lfm_recipe.json`, beside
this card, has the same recipe and every tensor's numbers.

## Kept fractions

The fraction of each module type's change (tuned - base) the merge kept, and the neurons it located (restored
toward the tuned model; Neuron-Fusion only):

| module | kept | located neurons |
|---|---|---|
{kept}

## Citation

```bibtex
{CITATION}
```
"""


def write_model_card(out_dir: str | Path, report: dict) -> Path:
    """Write ``out_dir``/README.md (replacing the tuned model's card, which ``lfm merge`` copies with its
    other files); returns its path."""
    path = Path(out_dir) / CARD_FILE
    path.write_text(model_card(report))
    return path
