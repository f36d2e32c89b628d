"""The model card `lfm merge` writes (lfm/card.py): huggingface_hub parses it, its metadata names the merged
models by their Hub ids, its kept fractions are what the merged bytes show, its recipe block merges again."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from fixtures import read_state, tree_bytes
from huggingface_hub import ModelCard

import lfm


def card_table(text: str, header: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under ``header`` in ``text``: {first cell: other cells}."""
    section = text.split(header, 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return {r[0]: r[1:] for r in rows[1:]}


@pytest.fixture(scope="module")
def hub_pair(zoo, tmp_path_factory) -> tuple[Path, Path]:
    """The zoo's LLM-to-LLM pair as a user has it from the Hub: the base in huggingface_hub's cache layout, the
    tuned model with its Hub id in config.json (as `save_pretrained` of a model loaded by id writes it)."""
    root = tmp_path_factory.mktemp("hub")
    base = root / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(zoo.base, base)
    tuned = root / "tuned-here"
    shutil.copytree(zoo.llm_tuned, tuned)
    config = json.loads((tuned / "config.json").read_text())
    (tuned / "config.json").write_text(json.dumps({**config, "_name_or_path": "tiny-org/tiny-llama-tuned"}))
    return base, tuned


def test_merge_writes_a_card_huggingface_hub_parses(hub_pair, tmp_path):
    out = tmp_path / "merged"
    report = lfm.merge(*hub_pair, out, "ties", density=0.3, progress=False, log=lambda *_: None)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == ["tiny-org/tiny-llama", "tiny-org/tiny-llama-tuned"]
    assert card.data.base_model_relation == "merge" and card.data.library_name == "transformers"
    assert "ties" in card.data.tags
    facts = card_table(card.text, "# ")
    assert facts["method"] == ["`ties`: TIES K=0.3"] and facts["lfm"] == [lfm.__version__]
    assert "eprint        = {2505.16703}" in card.text and "Yu, Zeping and Ananiadou, Sophia" in card.text
    assert str(hub_pair[0]) not in card.content and str(tmp_path) not in card.content, "a local path in the card"
    assert report["label"] == "TIES K=0.3"


def test_card_kept_fractions_are_what_the_merged_bytes_show(zoo, tmp_path):
    """TIES on an LLM-to-LLM pair keeps an entry's change exactly where merged != base: count them per module."""
    out = tmp_path / "merged"
    lfm.merge(zoo.base, zoo.llm_tuned, out, "ties", density=0.2, progress=False, log=lambda *_: None)
    base, merged = read_state(zoo.base), read_state(out)
    changed, numel = defaultdict(int), defaultdict(int)
    for key, tensor in base.items():
        module = key.split(".")[-2]  # model.layers.0.mlp.up_proj.weight -> up_proj; lm_head.weight -> lm_head
        changed[module] += int((merged[key] != tensor).sum())
        numel[module] += tensor.numel()
    table = card_table((out / "README.md").read_text(), "## Kept fractions")
    assert set(table) == set(numel)
    for module, cells in table.items():
        assert cells[0] == f"{changed[module] / numel[module]:.3f}", module  # the card prints 3 decimals


def test_card_recipe_block_merges_the_same_bytes_again(zoo, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    lfm.merge(zoo.base, zoo.llava, first, "neu-s-ties", density=0.3, neurons=0.2, alpha=0.9, progress=False,
              log=lambda *_: None)
    block = re.search(r"## Recipe\n\n```yaml\n(.*?)```", (first / "README.md").read_text(), re.S).group(1)
    lfm.merge(zoo.base, zoo.llava, again, yaml.safe_load(block), progress=False, log=lambda *_: None)
    assert tree_bytes(again) == tree_bytes(first)
