"""The real pair (lfm.realpair): GGUF conversion, real items, the build pipeline end to end, the suite.

Fast path (no network): a tiny random Llama is written as a GGUF with the `gguf` package's writer (q/k rows
permuted as llama.cpp's converter does, one tensor Q8_0-quantised), converted, checked against the weights
it was made from, then the whole build (vision tower, alignment, tuning, LLaVA + processor) runs on it at the
'smoke' preset. The cached full build (SmolLM2-135M, `make realpair`) is checked when present, else skipped. The tiny GGUF and
the smoke build are session fixtures (tests/conftest.py: `tiny_gguf`, `smoke_pair`), shared with the explorer,
compare and notebook tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from lfm.realpair import data  # noqa: E402
from lfm.realpair.build import DEFAULT_ROOT, build  # noqa: E402
from lfm.realpair.config import preset  # noqa: E402
from lfm.realpair.fetch import convert_gguf  # noqa: E402
from lfm.realpair.tasks import short_answer_correct  # noqa: E402

HAVE_DEBIAN_DATA = data.COUNTRIES.exists() and data.WORDNET.exists()
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN_DATA, reason="Debian miscfiles / wordnet-base not installed "
                                  "(make install installs them)")


def test_convert_gguf_recovers_the_weights_it_was_written_from(tiny_gguf, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    path, expected, fields = tiny_gguf
    info = convert_gguf(path, tmp_path / "base")
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert cfg[k] == fields[k], k
    sd = load_file(tmp_path / "base" / "model.safetensors")
    assert set(sd) == set(expected)
    for k, v in expected.items():  # q/k un-permuted, the Q8_0 tensor dequantised, the rest exact
        np.testing.assert_array_equal(sd[k].numpy(), v, err_msg=k)
    assert info["parameters"] == sum(v.size for v in expected.values())
    model = LlamaForCausalLM.from_pretrained(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(tmp_path / "base")
    ids = tok("the cat", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "the cat"
    assert model(ids).logits.shape == (1, ids.shape[1], fields["vocab_size"])


def test_smoke_build_end_to_end_on_a_tiny_gguf(tiny_gguf, smoke_pair, tmp_path):
    """The whole pipeline on the tiny GGUF: HF base + LLaVA with processor, one extra vocab row, cached rerun,
    deterministic for a seed (a second build into another folder gives byte-identical tuned weights)."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    import lfm
    from lfm.evaluate.harness import generate_answers

    path, _, fields = tiny_gguf
    root, res = smoke_pair
    cfg = preset("smoke")
    base, tuned = res["base"], res["tuned"]
    processor = AutoProcessor.from_pretrained(tuned)
    model = LlavaForConditionalGeneration.from_pretrained(tuned)
    assert len(processor.tokenizer) == fields["vocab_size"] + 1
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == fields["vocab_size"]
    assert model.config.image_token_id == fields["vocab_size"]
    assert model.lm_head.weight.shape[0] == fields["vocab_size"] + 1
    pair = lfm.open_pair(base, tuned)
    assert pair.extra_vocab == {"model.embed_tokens.weight": 1}
    item = data.visual_items("colour", "test", 1)[0]
    out = generate_answers(model, processor, [item.prompt], [[Image.fromarray(item.image)]], max_new_tokens=3)
    assert len(out) == 1 and isinstance(out[0], str)

    stamp = (tuned / "lfm_realpair_stage.json").stat().st_mtime_ns
    again = build(root, cfg, gguf=path, log=lambda m: pytest.fail(f"rerun redid a stage: {m}"))
    assert (tuned / "lfm_realpair_stage.json").stat().st_mtime_ns == stamp and again["tuned"] == tuned
    other = build(tmp_path / "b", cfg, gguf=path, log=lambda m: None)
    assert (other["tuned"] / "model.safetensors").read_bytes() == (tuned / "model.safetensors").read_bytes()


@needs_debian
def test_real_items():
    caps = dict(data.capitals())
    assert caps["France"] == "Paris" and caps["Japan"] == "Tokyo" and len(caps) > 150
    words = dict(data.wordnet_glosses(50))
    assert len(words) == 50 and all(w.isalpha() and w not in g.lower() for w, g in words.items())
    from sklearn.datasets import load_digits

    digits = load_digits()
    test = data.visual_items("digits", "test", 300)
    train = data.visual_items("digits", "train", 2000)
    assert len(test) == 300 and len(train) == len(digits.target) - 300
    assert not {it.id for it in test} & {it.id for it in train}
    i = int(test[0].id.rsplit("-", 1)[1])
    assert test[0].answer == str(digits.target[i])
    np.testing.assert_array_equal(test[0].image[::4, ::4, 0], (digits.images[i] * 255 / 16).astype(np.uint8))
    for task in ("colour", "shape", "count"):
        a, b = data.visual_items(task, "train", 20), data.visual_items(task, "test", 20)
        assert not any(np.array_equal(x.image, y.image) for x in a for y in b)
        assert all(it.answer in it.choices for it in a + b)
    count = data.visual_items("count", "test", 10)
    for it in count:  # the squares drawn are the answer: count connected non-background blobs
        from scipy import ndimage

        grey = it.image.astype(int)
        fg = np.abs(grey - np.median(grey, axis=(0, 1))).max(axis=2) > 40
        assert ndimage.label(fg)[1] == int(it.answer), it.id


def test_short_answer_rule():
    assert short_answer_correct("The capital of Colombia is Bogota.", "Bogotá")
    assert not short_answer_correct("Medellín", "Bogotá")


ROOT = Path(__file__).resolve().parents[1]
FULL_TUNED = DEFAULT_ROOT / "seed0" / "tuned"


@pytest.mark.skipif(not (FULL_TUNED / "lfm_realpair_stage.json").exists(),
                    reason=f"no cached full build at {FULL_TUNED} (run `make realpair`)")
def test_cached_full_build_is_the_real_pair():
    import lfm

    pair = lfm.open_pair(DEFAULT_ROOT / "base", FULL_TUNED)
    assert pair.extra_vocab == {"model.embed_tokens.weight": 1}
    cfg = json.loads((DEFAULT_ROOT / "base" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]) == \
        (30, 576, 1536, 49152)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)


def test_cli_build_prints_the_pair_last_and_fails_in_one_line(tiny_gguf, smoke_pair, capsys, tmp_path):
    from lfm.cli import main

    root, res = smoke_pair
    assert main(["realpair", "build", "--preset", "smoke", "--gguf", str(tiny_gguf[0]), "--out", str(root)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2:] == [f"base: {res['base']}", f"tuned: {res['tuned']}"]
    # the commands it prints for the pair are true: lfm's parser takes them, every path they name exists,
    # and the compare command runs (on its first item, into a temporary folder)
    import shlex

    from lfm.cli import build_parser

    commands = dict(line.split(": ", 1) for line in printed if line.split(": ", 1)[0] in
                    ("explore", "compare", "eval", "notebook 01", "notebook 02", "notebook 03", "notebook 04"))
    assert len(commands) == 7, printed
    explore = build_parser().parse_args(shlex.split(commands["explore"])[1:])
    assert (explore.base, explore.tuned, explore.suite) == (str(res["base"]), str(res["tuned"]), str(res["suite"]))
    compare = shlex.split(commands["compare"])
    assert Path(build_parser().parse_args(compare[1:]).items).is_file()
    out = tmp_path / "cmp"
    assert main(compare[1:-2] + ["--out", str(out), "--limit", "1", "--quiet"]) == 0 and (out / "items.csv").exists()
    for name in ("notebook 01", "notebook 02", "notebook 03", "notebook 04"):
        words = shlex.split(commands[name])
        assert words[0] == "papermill" and (ROOT / words[1]).is_file(), words
        params = dict(zip(words[4::3], words[5::3]))
        assert all(Path(v).exists() for v in params.values()), params
    capsys.readouterr()
    assert main(["realpair", "build", "--preset", "smoke", "--gguf", str(root / "nope.gguf"), "--out", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.gguf" in err[0]


@pytest.mark.slow
def test_study_on_the_smoke_pair(smoke_pair, tmp_path):
    """The study end to end through run_sweep and compare_stages. Cross-check of two independent paths:
    hard-merge VA from lmms-eval (2 items per task) equals hard-merge accuracy from compare_stages on the
    same 2 items per task (generate_answers + lfm.taxonomy)."""
    from lfm.methods import Recipe
    from lfm.realpair.study import run_study

    root, _ = smoke_pair
    recipes = [("average", Recipe.from_name("ta", alpha=0.5)),
               ("paper", Recipe.from_name("neu-s-ties", density=0.2, neurons=0.3))]
    res = run_study(root, recipes=recipes, limit=2, stage_limit=2, results_dir=tmp_path, progress=False)
    labels = [r["label"] for r in res["rows"]]
    assert labels[:3] == ["base LLM", "tuned MLLM", "hard-merge"] and "TaskA a=0.5" in labels
    by = {r["label"]: r for r in res["rows"]}
    assert by["base LLM"]["VA"] is None and by["base LLM"]["tasks"]["ppl_gpl3"] > 1
    assert set(by["tuned MLLM"]["tasks"]) == {"capitals_mc", "capitals_qa", "wordnet_mc", "digits", "colour",
                                              "shape", "count", "ppl_gpl3", "ppl_pydoc"}
    assert by["hard-merge"]["VA"] == pytest.approx(res["stages"]["stages"]["hard"]["accuracy"])
    assert [t["from"] for t in res["stages"]["transitions"]] == ["hard", "suppress"]
    md = (tmp_path / "results.md").read_text()
    assert "| reference | tuned MLLM |" in md and json.loads((tmp_path / "results.json").read_text())["rows"]
    again = run_study(root, recipes=recipes, limit=2, results_dir=None, report_only=True)  # from the logs alone
    assert again["rows"] == res["rows"] and again["stages"] == res["stages"]
    # the seed table: seed 7 was never built, so it is reported missing; seed 0's rows carry its values
    seeds = run_study(root, recipes=recipes, limit=2, results_dir=None, report_only=True, seeds=[0, 7])["seeds"]
    assert seeds["seeds"] == [0] and seeds["missing"] == [7]
    points = {r["point"]: r for r in res["rows"]}
    assert {r["point"] for r in seeds["rows"]} == set(points)
    for r in seeds["rows"]:
        assert r["OA"]["values"] == [points[r["point"]]["OA"]] and r["LA"]["mean"] == points[r["point"]]["LA"]
