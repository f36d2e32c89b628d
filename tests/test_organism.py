"""The embedded organism: deterministic worlds, shipped checkpoints that load and generate, evaluation that
reproduces results.json, and a short real training run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, LlamaForCausalLM, LlavaForConditionalGeneration

from lfm.methods import Recipe
from lfm.organism import ORGANISM_DIR, base_dir, load_items, scienceqa_records, tuned_dir, world
from lfm.cli import main as lfm_main
from lfm.organism.evaluate import evaluate, load_model
from lfm.organism.merging import MergeablePair
from lfm.organism.tokenizer import build_tokenizer
from lfm.organism.train import TrainConfig, encode_example, pretrain_base, tune_llava

WORLD_DIGEST = """
import hashlib
from lfm.organism import world
h = hashlib.sha256()
for kind in ("language", "visual"):
    for it in world.eval_items(kind) + world.train_items(kind, 50):
        h.update(repr((it.id, it.task, it.prompt, it.answer, it.choices)).encode())
        if it.image is not None:
            h.update(it.image.tobytes())
print(h.hexdigest())
"""


def _digest_in_subprocess(hash_seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    out = subprocess.run([sys.executable, "-c", WORLD_DIGEST], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_world_is_deterministic_across_processes():
    assert _digest_in_subprocess("1") == _digest_in_subprocess("2")


def test_shipped_items_are_the_worlds_held_out_items():
    for kind in ("language", "visual"):
        shipped, fresh = load_items(kind), world.eval_items(kind)
        assert [(i.id, i.prompt, i.answer) for i in shipped] == [(i.id, i.prompt, i.answer) for i in fresh]
        for a, b in zip(shipped, fresh):
            assert (a.image is None) == (b.image is None)
            if a.image is not None:
                np.testing.assert_array_equal(a.image, b.image)  # PNG is lossless
    train_prompts = {i.prompt for i in world.train_items("language", 500)}
    assert not train_prompts & {i.prompt for i in load_items("language")}, "held-out prompt seen in training"


def test_scienceqa_records():
    recs = scienceqa_records()
    assert len(recs) == len(load_items("visual"))
    for r in recs[:5]:
        assert set(r) == {"id", "task", "question", "choices", "answer", "answer_letter", "image"}
        assert r["choices"][ord(r["answer_letter"]) - ord("A")] == r["answer"]
        assert os.path.exists(r["image"])


def test_tokenizer_covers_the_world_and_aligns_image_token():
    tok = build_tokenizer(world.all_words())
    for kind in ("language", "visual"):
        for it in world.train_items(kind, 200):
            ids = tok(world.format_chat(it.prompt, kind == "visual") + " " + it.answer).input_ids
            assert tok.unk_token_id not in ids, it.prompt
    assert tok.decode(tok(world.REFUSAL).input_ids, skip_special_tokens=True) == world.REFUSAL
    base_tok = AutoProcessor.from_pretrained(tuned_dir()).tokenizer
    assert base_tok.convert_tokens_to_ids("<image>") == tok.convert_tokens_to_ids("<image>") == 4


def test_chat_template_is_the_one_prompt_format():
    proc = AutoProcessor.from_pretrained(tuned_dir())
    it = load_items("visual")[0]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it.prompt}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == world.format_chat(it.prompt, True)


def test_shipped_checkpoints_load_and_generate():
    base = LlamaForCausalLM.from_pretrained(base_dir())
    assert base.config.num_key_value_heads < base.config.num_attention_heads  # GQA is exercised
    assert not base.config.tie_word_embeddings
    tuned = LlavaForConditionalGeneration.from_pretrained(tuned_dir())
    proc = AutoProcessor.from_pretrained(tuned_dir())
    it = load_items("visual")[0]
    from PIL import Image
    enc = proc(text=[world.format_chat(it.prompt, True)], images=[Image.fromarray(it.image)], return_tensors="pt")
    out = tuned.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    tok = proc.tokenizer
    enc = tok([load_items("language")[0].prompt], return_tensors="pt")
    assert base.generate(**enc, max_new_tokens=4, do_sample=False).shape[1] > enc["input_ids"].shape[1]


@pytest.fixture(scope="module")
def results():
    path = ORGANISM_DIR / "results.json"
    if not path.exists():
        pytest.fail(f"{path} missing: run `lfm organism report`")
    return json.loads(path.read_text())


def _close(measured: dict, stated: dict, tol: float = 0.03):
    for key in ("LA", "VA", "OA"):
        if stated[key] is None:
            assert measured[key] is None
        else:
            assert abs(measured[key] - stated[key]) <= tol, (key, measured[key], stated[key])


def test_regression_eval_reproduces_results_json(results):
    """Regression check: results.json was written by `lfm organism report`, this same evaluator."""
    shipped = results["shipped"]
    base = evaluate(base_dir())
    _close(base, shipped["base"])
    assert base["VA"] is None and base["failures"] == {}
    mp = MergeablePair(base_dir(), tuned_dir())
    tuned = evaluate((mp.model, mp.processor))
    _close(tuned, shipped["tuned"])
    hard = evaluate((mp.apply(Recipe(method="hard")), mp.processor))
    _close(hard, shipped["hard"])
    assert sum(hard["failures"].values()) == len(load_items("visual"))
    for cat, n in shipped["hard"]["failures"].items():
        assert abs(hard["failures"][cat] - n) <= 3
    # hard-merge's language model is exactly the base
    base_model = LlamaForCausalLM.from_pretrained(base_dir())
    torch.testing.assert_close(mp.model.model.language_model.layers[0].mlp.up_proj.weight,
                               base_model.model.layers[0].mlp.up_proj.weight, rtol=0, atol=0)
    # and tuned() undoes it
    assert _close(evaluate((mp.tuned(), mp.processor)), shipped["tuned"]) is None


def test_cli_eval_json(capsys):
    assert lfm_main(["organism", "eval", str(base_dir()), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"LA", "VA", "OA", "tasks", "failures"}
    assert res["VA"] is None and set(res["tasks"]) == set(world.LANGUAGE_TASKS)


def test_short_training_run_is_real_and_deterministic(tmp_path):
    cfg = TrainConfig(base_steps=6, tune_steps=4, base_items_per_task=40, tune_items_per_task=20, base_batch=8,
                      tune_batch=4)
    for run in ("a", "b"):
        pretrain_base(tmp_path / run / "base", cfg)
        tune_llava(tmp_path / run / "base", tmp_path / run / "tuned", cfg)
    for part in ("base", "tuned"):
        a = load_file(tmp_path / "a" / part / "model.safetensors")
        b = load_file(tmp_path / "b" / part / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the LM changed during tuning; the frozen vision tower did not move from its seeded init
    model, proc = load_model(tmp_path / "a" / "tuned")
    base = LlamaForCausalLM.from_pretrained(tmp_path / "a" / "base")
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)
    r = evaluate((model, proc), items={"language": load_items("language")[:8], "visual": load_items("visual")[:8]})
    assert 0.0 <= r["VA"] <= 1.0 and sum(r["failures"].values()) == 8


def test_encode_example_masks_the_prompt():
    tok = build_tokenizer(world.all_words())
    ids, labels = encode_example(tok, world.format_chat("Question: x Answer:", True), "red", image_tokens=16)
    assert ids.count(4) == 16 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert labels[:-2] == [-100] * (len(ids) - 2) and labels[-2:] == ids[-2:]



def test_cli_train_tune_only_writes_a_loadable_pair(tmp_path, capsys):
    out = tmp_path / "org"
    assert lfm_main(["organism", "train", "--out", str(out), "--tune-only", "--base", str(base_dir()),
                          "--tune-steps", "2"]) == 0
    model, proc = load_model(out / "tuned")
    assert isinstance(model, LlavaForConditionalGeneration)
    assert [i.prompt for i in load_items("visual", out / "items")] == [i.prompt for i in load_items("visual")]
    assert lfm_main(["organism", "train", "--out", str(out), "--tune-only"]) == 2  # no OUT/base yet
    assert "needs a trained base" in capsys.readouterr().out
