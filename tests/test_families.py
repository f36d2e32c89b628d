"""Every MLLM family of lfm's table (lfm/families.py) on tiny real checkpoints (tests/families_support.py).

Per supported row and per layout it lists: the pair opens as that row and layout; TIES, TA (alpha) and
Neu-S-TIES give LM tensors equal to the formulas written out below, from tensors found in the files by value
(the LM's tensors as transformers itself loads them, through get_decoder() / get_output_embeddings()); every other
tensor is byte-equal to tuned; the merged output loads with the tuned class, its LM weights are the merged ones,
and it generates from an image (inputs from AutoProcessor loaded from the output where the family's processor is
buildable here); `ResidentPair.apply` writes the merged bytes; `lfm score` gives C(i) = sum |delta|; `lfm pair`
names the row. Refused rows and MLLMs the table does not know are refused in one line. `lfm eval`'s text model
gives each MLLM's own logits; `lfm eval` runs on Qwen2-VL (language tasks: its LM's answers) and Idefics3 (both
harnesses); a processor that needs torchvision is a row's claim checked against transformers, refused in one line;
`lfm compare --items scienceqa` reads a hub-layout dataset cache offline.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lfm
from families_support import EXTRA, MEMORY, SAVED, SPECS, VOCAB, FamilyZoo, has_image_path, image_inputs, lm_handles
from fixtures import read_state
from lfm.pair import PairError
from lfm.families import CHECKS, FAMILIES, FAMILY_ROWS, FamilyTableError, families_markdown, load_families

ROOT = Path(__file__).resolve().parents[1]
ROWS = {f.name: f for f in FAMILIES}
CASES = [(f.name, layout.name) for f in FAMILIES if f.supported for layout in f.layouts]
K, M, ALPHA = 0.2, 0.3, 0.7
ROW_NEURONS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # neuron = row; o/down: neuron = column


@pytest.fixture(scope="module")
def family_zoo(tmp_path_factory) -> FamilyZoo:
    return FamilyZoo(tmp_path_factory.mktemp("families"))


def writer_of(layout: str) -> str:
    """The fixture writer that produces a row's layout: save_pretrained, or the in-memory names."""
    return MEMORY if layout == MEMORY else SAVED


# ------------------------------------------------------------------------------------------ the formulas

def top_mask(d: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-np.abs(d).ravel(), kind="stable")
    mask = np.zeros(d.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(d.shape)


def neuron_axis(name: str):
    m = re.search(r"\.(\w+_proj)\.weight$", name)
    if not m:
        return None
    return 0 if m.group(1) in ROW_NEURONS else 1


def expected_delta(name: str, d: np.ndarray, method: str) -> np.ndarray:
    """The merged delta of one LM tensor (float64), from the paper and issue 2:
    TA: alpha * d.  TIES: d on the int(K * n) largest |d|, 0 elsewhere.
    Neu-S-TIES: TIES at K; then the top int(M * n) neurons by C(i) = sum |d| along the neuron's weights are
    rescaled to their C(i) (times C(i) / C'(i), C' over the suppressed delta; back to d when C' = 0); tensors
    that are not linear modules (norms, biases, embeddings) are the TIES delta."""
    if method == "ta":
        return ALPHA * d
    ties = d * top_mask(d, int(K * d.size))
    axis = neuron_axis(name)
    if method == "ties" or axis is None:
        return ties
    rows, full = (ties.copy(), d) if axis == 0 else (ties.T.copy(), d.T)
    scores = np.abs(full).sum(axis=1)
    for i in np.argsort(-scores, kind="stable")[:int(M * len(scores))]:
        after = np.abs(rows[i]).sum()
        rows[i] = full[i] if after == 0 else rows[i] * (scores[i] / after)
    return rows if axis == 0 else rows.T


RECIPES = {"ties": ("ties", dict(density=K)), "ta": ("task_arithmetic", dict(alpha=ALPHA)),
           "neu-s-ties": ("neu-s-ties", dict(density=K, neurons=M))}


def lm_keys_by_value(tuned_dir: Path, lm: dict[str, torch.Tensor]) -> dict[str, str]:
    """{file key: canonical name} for the LM tensors of a tuned checkpoint, found by value: each tensor in the
    file that is bit-equal to one of the LM tensors transformers loaded (every one is base + its own delta)."""
    by_bytes = {t.detach().contiguous().numpy().tobytes(): name for name, t in lm.items()}
    found = {k: by_bytes[t.numpy().tobytes()] for k, t in read_state(tuned_dir).items()
             if t.numpy().tobytes() in by_bytes}
    assert sorted(found.values()) == sorted(lm), "every LM tensor is in the file once"
    return found


def load(spec, directory):
    import transformers

    return getattr(transformers, ROWS[spec.row].classes[0]).from_pretrained(directory).eval()


# ------------------------------------------------------------------------------------------ per family

@pytest.mark.parametrize("row,layout", CASES, ids=[f"{r}-{l}" for r, l in CASES])
def test_family_merges_loads_and_generates(family_zoo, tmp_path, row, layout):
    spec = SPECS[row]
    base_dir, tuned_dir = family_zoo.base(row), family_zoo.tuned(row, writer_of(layout))
    pair = lfm.open_pair(base_dir, tuned_dir)
    assert (pair.family.name, pair.layout.name) == (row, layout)

    tuned_model = load(spec, tuned_dir)
    tuned_lm = {n: t.detach().clone() for n, t in lm_handles(tuned_model).items()}
    file_lm = lm_keys_by_value(tuned_dir, tuned_lm)
    assert {e.tuned_key: e.name for e in pair.entries} == file_lm  # lfm finds exactly transformers' LM
    base, tuned = read_state(base_dir), read_state(tuned_dir)
    base.setdefault("lm_head.weight", base["model.embed_tokens.weight"])  # a tied base's head is its embedding

    outs = {}
    for tag, (method, kw) in RECIPES.items():
        out = outs[tag] = tmp_path / tag
        lfm.merge(base_dir, tuned_dir, out, method, progress=False, log=lambda *a: None, **kw)
        merged = read_state(out)
        assert set(merged) == set(tuned)
        for key, t in tuned.items():
            if key not in file_lm:  # vision tower, projector, ...: the tuned bytes
                assert merged[key].dtype == t.dtype and merged[key].numpy().tobytes() == t.numpy().tobytes(), key
                continue
            name, b = file_lm[key], base[file_lm[key]]
            d = t[: b.shape[0]].double().numpy() - b.double().numpy()
            want = torch.from_numpy(b.double().numpy() + expected_delta(name, d, tag))
            want = torch.cat([want, t[b.shape[0]:].double()]).to(t.dtype)  # extra vocabulary rows: tuned's
            torch.testing.assert_close(merged[key], want, rtol=1e-6, atol=1e-7, msg=lambda m: f"{tag} {key}: {m}")

    # the output loads with the tuned class, its LM is the merged tensors, and it generates from an image
    out = outs["neu-s-ties"]
    merged = read_state(out)
    model = load(spec, out)
    for key, name in file_lm.items():
        assert torch.equal(lm_handles(model)[name].detach(), merged[key]), name
    inputs = image_inputs(spec, out)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert bool(inputs["input_ids"].ge(VOCAB).any()) == has_image_path(spec)  # the family's image tokens are in

    # ResidentPair.apply into the loaded tuned model: lfm merge's bytes
    resident = lfm.ResidentPair(pair, progress=False)
    resident.apply(tuned_model, "neu-s-ties", density=K, neurons=M)
    for key, name in file_lm.items():
        assert torch.equal(lm_handles(tuned_model)[name].detach(), merged[key]), name


@pytest.mark.parametrize("row", [f.name for f in FAMILIES if f.supported])
def test_lfm_score_and_lfm_pair_on_a_family(family_zoo, tmp_path, capsys, row):
    """`lfm score` writes C(i) = sum_j |delta_ij| per linear LM weight; `lfm pair` names the row, layout and counts."""
    from lfm.cli import main

    base_dir, tuned_dir = family_zoo.base(row), family_zoo.tuned(row, SAVED)
    scores_file = tmp_path / "scores.safetensors"
    assert main(["score", "--base", str(base_dir), "--tuned", str(tuned_dir), "--out", str(scores_file), "--quiet",
                 "--device", "cpu"]) == 0
    from safetensors.torch import load_file

    scores = load_file(str(scores_file))
    tuned_lm = {n: t.detach() for n, t in lm_handles(load(SPECS[row], tuned_dir)).items()}
    base = read_state(base_dir)
    linear = [n for n in tuned_lm if neuron_axis(n) is not None]
    assert sorted(scores) == sorted(linear)
    for name in linear:
        d = tuned_lm[name].double() - base[name].double()
        np.testing.assert_allclose(scores[name].double().numpy(), d.abs().sum(dim=1 - neuron_axis(name)).numpy(),
                                   rtol=1e-5)
    capsys.readouterr()
    assert main(["pair", str(base_dir), str(tuned_dir)]) == 0
    printed = capsys.readouterr().out
    pair = lfm.open_pair(base_dir, tuned_dir)
    assert f"family   {row} (" in printed and f"layout   {pair.layout.name}: LM at " in printed
    assert f"merged   {len(pair.entries)} language-model tensors" in printed
    assert f"copied   {len(pair.passthrough)} tensors from tuned: " in printed


# ------------------------------------------------------------------------------------------ refusals

def _tiny_mllm(tmp_path, model_type: str, **kw) -> Path:
    """A tiny random checkpoint of a refused or unknown MLLM class, saved by transformers."""
    import transformers

    cfg = transformers.CONFIG_MAPPING[model_type](**kw)
    model = transformers.AutoModelForImageTextToText.from_config(cfg)
    model.save_pretrained(tmp_path / model_type)
    return tmp_path / model_type


def test_refused_row_says_why(family_zoo, tmp_path):
    from lfm.cli import main

    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=136, pad_token_id=0, cross_attention_layers=[1])
    mllama = _tiny_mllm(tmp_path, "mllama", text_config=text,
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_global_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
                                           intermediate_layers_indices=[0], vision_output_dim=32))
    with pytest.raises(PairError, match=r"MllamaForConditionalGeneration \(Mllama\) cannot be merged with a base "
                                            r"LLM: its decoder interleaves cross-attention layers"):
        lfm.open_pair(family_zoo.base("LLaVA"), mllama)
    out = tmp_path / "out"
    assert main(["merge", "--base", str(family_zoo.base("LLaVA")), "--tuned", str(mllama), "--out", str(out),
                 "--quiet"]) == 2
    assert not out.exists()


def test_unknown_mllm_names_its_class_the_nearest_row_and_where_to_add_one(family_zoo, tmp_path, capsys):
    from lfm.cli import main

    tuned = Path(shutil.copytree(family_zoo.tuned("LLaVA", SAVED), tmp_path / "tuned"))
    config = json.loads((tuned / "config.json").read_text())
    config.update(model_type="my_vlm", architectures=["MyVLMForConditionalGeneration"])
    (tuned / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["merge", "--base", str(family_zoo.base("LLaVA")), "--tuned", str(tuned), "--out",
                 str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "MyVLMForConditionalGeneration (model_type 'my_vlm') is not in lfm's family table" in err
    assert "nearest supported family: LLaVA (its LM keys sit under language_model.lm_head., " \
           "language_model.model.)" in err
    assert "add a row for it to FAMILY_ROWS in lfm/families.py" in err


def test_base_of_the_wrong_type_names_what_the_family_pairs_with(family_zoo):
    with pytest.raises(PairError, match=r"base model_type 'llama' vs tuned language model 'qwen2_vl_text' "
                                            r"\(Qwen2-VL's qwen2_vl_text pairs with a qwen2 base\)"):
        lfm.open_pair(family_zoo.base("LLaVA"), family_zoo.tuned("Qwen2-VL", SAVED))


def test_a_field_that_must_match_is_refused(family_zoo, tmp_path):
    base = Path(shutil.copytree(family_zoo.base("Qwen2-VL"), tmp_path / "base"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(PairError, match="hidden_act is gelu in the base .* but silu in the tuned language model"):
        lfm.open_pair(base, family_zoo.tuned("Qwen2-VL", SAVED))


# ------------------------------------------------------------------------------------------ the table

def test_table_loads_strictly():
    row = dict(FAMILY_ROWS[0])
    for bad, needle in ((dict(row, colour="red"), "unknown field(s) ['colour']"),
                        ({k: v for k, v in row.items() if k != "vocab"}, "missing field(s) ['vocab']"),
                        (dict(row, tied="no"), "tied must be a bool"),
                        (dict(row, verified=("layouts", "vibes")), "verified names ['vibes']"),
                        (dict(row, layouts={"x": {"lm": {"model.": "model."}}}), "a layout has exactly"),
                        (dict(row, layouts={"x": {"lm": {"model": "model."}, "passthrough": {}}}), "prefixes ending"),
                        (dict(row, layouts={}), "needs at least one layout")):
        with pytest.raises(FamilyTableError, match=re.escape(needle)):
            load_families([bad])
    with pytest.raises(FamilyTableError, match="model_type 'llava' is in two rows"):
        load_families([row, dict(row, name="again")])


def test_table_agrees_with_transformers():
    """Each row's classes and model types exist in the locked transformers, its LM types are its text config's,
    and `tied` is the class default of tie_word_embeddings (what transformers ties by)."""
    import transformers

    from lfm.families import BASE_TIED_BY_DEFAULT

    for f in FAMILIES:
        for cls in f.classes:
            assert hasattr(transformers, cls), cls
        for model_type in f.model_types:
            config_cls = transformers.CONFIG_MAPPING[model_type]
            assert getattr(config_cls(), "tie_word_embeddings", None) in (f.tied, None), f.name
            text_cls = config_cls.sub_configs.get("text_config")
            if f.lm_types and text_cls is not transformers.AutoConfig:
                assert f.lm_types == (text_cls.model_type,), f.name
    for model_type in ("llama", "mistral", "qwen2", "qwen3", *BASE_TIED_BY_DEFAULT):
        assert transformers.CONFIG_MAPPING[model_type]().tie_word_embeddings is (model_type in BASE_TIED_BY_DEFAULT)


def test_every_supported_row_is_proven_here():
    """A supported row claims exactly the checks this file runs on it (docs/families.md shows the claims)."""
    for f in FAMILIES:
        if not f.supported:
            assert not f.verified
            continue
        spec = SPECS[f.name]
        skipped = {"processor": spec.processor is None, "image": not has_image_path(spec),
                   "explorer": f.name not in EXPLORER_ROWS, "compare": f.name not in COMPARE_ROWS,
                   "notebooks": f.name not in NOTEBOOK_ROWS}
        proven = {check for check in CHECKS if not skipped.get(check, False)}
        assert set(f.verified) == proven, f.name
        assert {writer_of(layout.name) for layout in f.layouts} == set(spec.layouts), f.name


def test_docs_families_md_is_the_generated_table_regression():
    assert (ROOT / "docs" / "families.md").read_text() == families_markdown(), \
        "regenerate: python -m lfm.families > docs/families.md"


# ------------------------------------------------------------------------------------------ hub ids, offline

def test_hub_ids_resolve_through_an_offline_hub_cache(family_zoo, tmp_path):
    """`--base org/name` as a user passes it: huggingface_hub finds the snapshot in HF_HUB_CACHE (blobs + links +
    refs/main, as it stores downloads) with HF_HUB_OFFLINE=1; the merge is the local directories' merge."""
    import os
    import subprocess
    import sys

    from families_support import hub_cache

    base_dir, tuned_dir = family_zoo.base("Qwen2-VL"), family_zoo.tuned("Qwen2-VL", SAVED)
    cache = tmp_path / "hub"
    base_snapshot = hub_cache(cache, "acme/qwen2-base", base_dir)
    tuned_snapshot = hub_cache(cache, "acme/qwen2-vl-tuned", tuned_dir)
    assert (tuned_snapshot / "model.safetensors").is_symlink()
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    work = tmp_path / "work"  # no 'acme' folder here: the ids are not local paths
    work.mkdir()

    def lfm_cli(*args):
        return subprocess.run([sys.executable, "-m", "lfm.cli", *args], env=env, cwd=work, capture_output=True,
                              text=True, timeout=300)

    done = lfm_cli("merge", "--base", "acme/qwen2-base", "--tuned", "acme/qwen2-vl-tuned", "--out", "out",
                   "--method", "neu-s-ties", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    local = tmp_path / "local"
    lfm.merge(base_dir, tuned_dir, local, "neu-s-ties", progress=False, log=lambda *a: None)
    out = work / "out"
    assert (out / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        assert not (out / name).is_symlink() and (out / name).read_bytes() == (tuned_dir / name).read_bytes()
    inputs = json.loads((out / "lfm_recipe.json").read_text())["inputs"]
    assert inputs["base"]["path"] == str(base_snapshot.resolve()) and \
        inputs["tuned"]["path"] == str(tuned_snapshot.resolve())

    shown = lfm_cli("pair", "acme/qwen2-base", "acme/qwen2-vl-tuned")
    assert shown.returncode == 0 and "family   Qwen2-VL (" in shown.stdout, shown.stderr[-2000:]
    missing = lfm_cli("pair", "acme/qwen2-base", "acme/not-cached")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "acme/not-cached: not a local directory" in missing.stderr and "HF_HUB_OFFLINE is set" in missing.stderr


# ------------------------------------------------------------------------------------------ the explorer, live

EXPLORER_ROWS, COMPARE_ROWS, NOTEBOOK_ROWS = ("Qwen2-VL", "Idefics3"), ("Gemma 3",), ("Idefics3",)


@pytest.mark.parametrize("row", EXPLORER_ROWS)
def test_explorer_opens_a_non_llava_pair_live(family_zoo, row):
    """lfm.explorer's live source and its neuron / merge-outcome views on a non-LLaVA pair (no browser: the
    figures the panes show). C(i) of the neuron curve is sum_j |delta_ij| of the tensors transformers loads."""
    from lfm.explorer import compute
    from lfm.explorer.live import LivePair
    from lfm.explorer.views import MergeView, NeuronView
    from lfm.methods import Recipe

    base_dir, tuned_dir = family_zoo.base(row), family_zoo.tuned(row, SAVED)
    source = LivePair(base_dir, tuned_dir)
    assert f"family {row} (" in source.description and not source.can_evaluate
    heat = NeuronView.heatmap_figure(source, "top1_lift", 1, "up_proj")
    assert np.asarray(heat.data[0].z).shape == (2, 7)  # layers x the seven linear modules
    tuned = {n: t.detach() for n, t in lm_handles(load(SPECS[row], tuned_dir)).items()}
    base = read_state(base_dir)
    recipe = Recipe.from_name("neu-s-ties", density=K, neurons=M)
    for module, axis in (("up_proj", 0), ("down_proj", 1)):
        name = compute.tensor_name(source, 1, module)
        view = compute.module_view(source, name, recipe)
        d = tuned[name].double() - base[name].double()
        np.testing.assert_allclose(view.scores.double().numpy(), d.abs().sum(dim=1 - axis).numpy(), rtol=1e-5)
        assert int(view.located.sum()) == int(M * d.shape[axis]) and abs(view.kept_fraction - K) < 1e-3
    outcome, _ = compute.merge_outcome(source, recipe)
    assert len(outcome) == len([n for n in tuned if neuron_axis(n) is not None])
    assert MergeView.figure(source, recipe).data  # the outcome figure has traces


# ------------------------------------------------------------------------------------------ lfm compare

@pytest.mark.parametrize("row", COMPARE_ROWS)
def test_lfm_compare_items_file(family_zoo, tmp_path, row):
    """`lfm compare --items FILE.jsonl` on a non-LLaVA family (its processor and chat template, saved with the tuned
    model): each stage's answers are what the stage's `lfm merge` output, loaded with the tuned class, says greedily
    to the same chat turn built by AutoProcessor from the tuned directory."""
    import csv
    import subprocess
    import sys

    from transformers import AutoProcessor

    from families_support import sample_image
    from lfm.evaluate.compare import neuron_fusion_stages

    base_dir, tuned_dir = family_zoo.base(row), family_zoo.tuned(row, SAVED)
    items = write_items(tmp_path / "items", SPECS[row].image_size, prompt="w5 w6 w7")
    done = subprocess.run([sys.executable, "-m", "lfm.cli", "compare", "--base", str(base_dir), "--tuned",
                           str(tuned_dir), "--items", str(items), "--out", str(tmp_path / "out"),
                           "--max-new-tokens", "4", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = list(csv.DictReader(open(tmp_path / "out" / "items.csv")))
    assert [r["id"] for r in table] == ["q0", "q1", "q2"]

    processor = AutoProcessor.from_pretrained(tuned_dir)
    turn = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                        {"type": "text", "text": "w5 w6 w7"}]}],
                                         add_generation_prompt=True, tokenize=False)
    for stage, recipe in neuron_fusion_stages(density=0.2, neurons=0.3).items():
        out = tmp_path / stage
        lfm.merge(base_dir, tuned_dir, out, recipe, progress=False, log=lambda *a: None)
        model = load(SPECS[row], out)
        for i, r in enumerate(table):
            enc = processor(text=[turn], images=[[sample_image(SPECS[row].image_size, seed=i)]], return_tensors="pt")
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=4, do_sample=False, num_beams=1,
                                     pad_token_id=processor.tokenizer.pad_token_id,
                                     eos_token_id=processor.tokenizer.eos_token_id)
            said = processor.tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            assert r[f"{stage}_generated"] == said, (stage, r["id"])


# ------------------------------------------------------------------------------------------ notebooks

def write_items(folder: Path, image_size: int, prompt: str | None = None) -> Path:
    """A three-item JSONL items file (lfm.evaluate.compare.read_items_file) with its images."""
    from families_support import sample_image

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "items.jsonl", "w") as f:
        for i in range(3):
            sample_image(image_size, seed=i).save(folder / f"{i}.png")
            f.write(json.dumps({"id": f"q{i}", "question": "w5 w6", "choices": ["w7", "w8"], "answer": "w7",
                                "image": f"{i}.png", **({"prompt": prompt} if prompt else {})}) + "\n")
    return folder / "items.jsonl"


@pytest.mark.parametrize("row", NOTEBOOK_ROWS)
@pytest.mark.parametrize("name", ["01_neuron_changes.ipynb", "04_ffn_key_value_memories.ipynb"])
def test_notebooks_run_on_a_non_llava_family(family_zoo, tmp_path, row, name):
    """The teaching notebooks as a user runs them on their own pair (papermill -p base -p tuned [-p items]), with
    tests/test_notebooks.py's checks: every cell ran, the asserting cell's CHECK lines printed, figures, summary."""
    from test_notebooks import PARAMS, check_run

    params = {"base": str(family_zoo.base(row)), "tuned": str(family_zoo.tuned(row, SAVED)), **PARAMS[name]}
    if name.startswith("04"):
        params["items"] = str(write_items(tmp_path / "items", SPECS[row].image_size))
    check_run(name, tmp_path, params, tag=f"family-{row}")


# ------------------------------------------------------------------------------------------ lfm eval's text model

TEXT_PROMPTS = torch.tensor([[0, 0, 1, 5, 6, 7, 8, 9], [1, 12, 13, 14, 15, 16, 17, 18]])  # left-padded, base vocab


@pytest.mark.parametrize("row", [f.name for f in FAMILIES if f.supported])
def test_eval_text_model_gives_the_mllms_own_logits(family_zoo, row):
    """`lfm eval`'s language tasks score `text_model(mllm)`: the base's own causal-LM class (the class
    save_pretrained wrote into the base's config) on the MLLM's modules, no copy. Its logits and greedy tokens on a
    text prompt are the tuned MLLM's own (transformers' MLLM class, its forward and generate)."""
    from transformers import AutoConfig

    from lfm.evaluate.models import text_model

    mllm = load(SPECS[row], family_zoo.tuned(row, SAVED))
    lm = text_model(mllm)
    assert type(lm).__name__ == AutoConfig.from_pretrained(family_zoo.base(row)).architectures[0]
    shared = {p.data_ptr() for p in mllm.parameters()}
    assert all(p.data_ptr() in shared for p in lm.parameters())
    mask = TEXT_PROMPTS.ne(0).long()
    with torch.no_grad():
        want, got = mllm(input_ids=TEXT_PROMPTS, attention_mask=mask).logits, \
            lm(input_ids=TEXT_PROMPTS, attention_mask=mask).logits
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-6)
        kw = dict(input_ids=TEXT_PROMPTS, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert torch.equal(lm.generate(**kw), mllm.generate(**kw))


def _causal_lm(family_zoo, row: str):
    """A plain causal LM of the base's class holding the tuned MLLM's LM weights (put in through transformers' handles
    on the MLLM), with the tuned tokenizer: what the MLLM's LM is as a text-only model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lfm.evaluate.models import EvalModel

    tuned = family_zoo.tuned(row, SAVED)
    causal = AutoModelForCausalLM.from_pretrained(family_zoo.base(row))
    causal.resize_token_embeddings(VOCAB + EXTRA)
    lm = lm_handles(load(SPECS[row], tuned))
    with torch.no_grad():
        for name, param in causal.state_dict(keep_vars=True).items():
            param.copy_(lm[name])
    return EvalModel(causal.eval(), None, AutoTokenizer.from_pretrained(tuned))


def test_lfm_eval_language_tasks_on_qwen2_vl_are_its_lms_scores(family_zoo):
    """Qwen2-VL (qwen2_vl_text LM, no processor without torchvision): lm-eval's organism language tasks through
    lfm.evaluate on the MLLM directory give the answers they give on a Qwen2ForCausalLM holding its LM."""
    from lfm.evaluate.harness import evaluate
    from lfm.evaluate.suites import ORGANISM

    language = dataclasses.replace(ORGANISM, name="organism-language", visual=())
    res = evaluate(family_zoo.tuned("Qwen2-VL", SAVED), language, limit=3, log_samples=True)
    ref = evaluate(_causal_lm(family_zoo, "Qwen2-VL"), language, limit=3, log_samples=True)
    assert set(res["tasks"]) == {t.label for t in ORGANISM.language}
    assert res["language_answers"] == ref["language_answers"] and len(res["language_answers"]) == 4 * 3
    assert res["tasks"] == ref["tasks"] and res["LA"] == ref["LA"]


def test_lfm_eval_on_idefics3_runs_both_harnesses(family_zoo, tmp_path):
    """`lfm eval MODEL --limit 2` as a user runs it, on Idefics3 (LM at model.text_model, processor + chat template
    saved with the model): every organism task scored, LA / VA / OA from them."""
    import subprocess
    import sys

    out = tmp_path / "res.json"
    done = subprocess.run([sys.executable, "-m", "lfm.cli", "eval", str(family_zoo.tuned("Idefics3", SAVED)),
                           "--suite", "organism", "--limit", "2", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(out.read_text())
    from lfm.evaluate.suites import ORGANISM

    assert set(res["tasks"]) == {t.label for t in ORGANISM.language + ORGANISM.visual}
    lang = [res["tasks"][t.label] for t in ORGANISM.language]
    vis = [res["tasks"][t.label] for t in ORGANISM.visual]
    assert res["LA"] == pytest.approx(sum(lang) / len(lang)) and res["VA"] == pytest.approx(sum(vis) / len(vis))


# ------------------------------------------------------------------------------------------ processors

def _needs_torchvision(model_type: str) -> bool:
    """What transformers 5.24 says, without torchvision installed: the family's processor class cannot be imported,
    or it holds a video processor (torchvision-only), or its image processor has no PIL backend."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        attributes = getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type]).get_attributes()
    except ImportError:
        return True
    return "video_processor" in attributes or "pil" not in IMAGE_PROCESSOR_MAPPING_NAMES[model_type]


TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.mark.skipif(TORCHVISION, reason="the rows describe an environment without torchvision (lfm's lock)")
def test_processor_needs_are_what_transformers_needs(family_zoo):
    for f in FAMILIES:
        if f.supported:
            assert ("torchvision" in f.processor_needs) == _needs_torchvision(f.model_types[0]), f.name
    with pytest.raises(ImportError, match="(?i)torchvision"):  # the claim, on a saved Qwen2-VL
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(family_zoo.tuned("Qwen2-VL", SAVED))


@pytest.mark.skipif(TORCHVISION, reason="torchvision is installed: the processor loads")
def test_visual_tasks_without_the_processors_package_fail_in_one_line(family_zoo, tmp_path):
    """`lfm eval` with visual tasks and `lfm compare` on a family whose processor needs torchvision: exit 2, one line
    naming `pip install torchvision`, nothing written, before any task runs."""
    import subprocess
    import sys

    tuned = family_zoo.tuned("Qwen2-VL", SAVED)
    items = write_items(tmp_path / "items", SPECS["Qwen2-VL"].image_size)
    for args in (["eval", str(tuned), "--suite", "organism", "--limit", "1", "--out", str(tmp_path / "r.json")],
                 ["compare", "--base", str(family_zoo.base("Qwen2-VL")), "--tuned", str(tuned), "--items",
                  str(items), "--out", str(tmp_path / "cmp"), "--quiet"]):
        done = subprocess.run([sys.executable, "-m", "lfm.cli", *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        err = done.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert "Qwen2-VL's processor needs torchvision" in err and "pip install torchvision" in err
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------------------- lfm compare --items scienceqa

SCIENCEQA_TEXT = ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")


def scienceqa_repo(folder: Path, rows: list[dict]) -> Path:
    """A copy of the hub dataset lmms-eval's scienceqa_img reads, in its repo's layout and schema: README.md whose
    YAML names the configs' data files, ScienceQA-IMG/test-00000-of-00001.parquet written by `datasets` with the
    hub's features (image, question, choices: list of strings, answer: int8 index, hint ... solution: strings);
    ScienceQA-FULL, listed first as on the hub, holds the same rows. `rows`: those fields, image a file path."""
    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "answer": datasets.Value("int8"),
                                  **{k: datasets.Value("string") for k in SCIENCEQA_TEXT}})
    table = {k: [r.get(k, "") for r in rows] for k in features if k != "image"}
    table["image"] = [Image.open(r["image"]) for r in rows]
    for config in ("ScienceQA-FULL", "ScienceQA-IMG"):
        (folder / config).mkdir(parents=True)
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(folder / config / "test-00000-of-00001.parquet"))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: ScienceQA-FULL\n  data_files:\n  - split: test\n"
                                      "    path: ScienceQA-FULL/test-*\n- config_name: ScienceQA-IMG\n  data_files:\n"
                                      "  - split: test\n    path: ScienceQA-IMG/test-*\n---\n")
    return folder


def test_lfm_compare_items_scienceqa_from_the_hub_cache(organism, tmp_path):
    """`lfm compare --items scienceqa` as a user runs it offline: the dataset id resolved by huggingface_hub in
    HF_HOME's hub cache (blobs + snapshot links + refs/main), read by `datasets` in the repo's own layout. Each item
    is the row (answer = choices[answer]), its image the row's pixels, asked with the prompt lmms-eval's
    scienceqa_img builds from it (hint as context). No cache: one line, exit 2, nothing written."""
    import csv
    import os
    import subprocess
    import sys

    from lmms_eval.tasks.scienceqa.utils import sqa_doc_to_text

    import hashlib

    from families_support import hub_cache
    from lfm.evaluate.compare import HUB_ITEMS
    from lfm.images import open_rgb
    from lfm.organism import scienceqa_records

    source = HUB_ITEMS["scienceqa"]
    rows = [{"question": r["question"], "choices": r["choices"], "answer": r["choices"].index(r["answer"]),
             "image": r["image"], "subject": "natural science"} for r in scienceqa_records()[::12][:6]]
    rows[0]["hint"] = "the shape is small ."
    repo = scienceqa_repo(tmp_path / "repo", rows)
    hub_cache(tmp_path / "home" / "hub", source.repo, repo, repo_type="dataset")
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_DATASETS_CACHE", None)
    base, tuned = map(str, organism)

    def compare(out: Path):
        return subprocess.run([sys.executable, "-m", "lfm.cli", "compare", "--base", base, "--tuned", tuned, "--items",
                               "scienceqa", "--out", str(out), "--quiet"], env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    done = compare(tmp_path / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    table = list(csv.DictReader(open(tmp_path / "out" / "items.csv")))
    assert [(r["question"], r["choices"], r["answer"]) for r in table] == \
        [(x["question"], " | ".join(x["choices"]), x["choices"][x["answer"]]) for x in rows]

    # the records lfm asks, read through the same path: lmms-eval's prompt for each row, the row's image pixels
    kwargs = {"format": "default", "pre_prompt": "",
              "post_prompt": "\nAnswer with the option's letter from the given choices directly."}
    script = ("import json, hashlib, numpy; from lfm.evaluate.compare import stage_items; "
              "print(json.dumps([(r['prompt'], hashlib.sha256(numpy.asarray(r['image']).tobytes()).hexdigest()) "
              "for r in stage_items('scienceqa')]))")
    read = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert read.returncode == 0, read.stderr[-2000:]
    pixels = [hashlib.sha256(np.asarray(open_rgb(x["image"])).tobytes()).hexdigest() for x in rows]
    assert json.loads(read.stdout.splitlines()[-1]) == \
        [[sqa_doc_to_text({"hint": "", **x}, kwargs), h] for x, h in zip(rows, pixels)]

    env["HF_HOME"] = str(tmp_path / "empty")
    missing = compare(tmp_path / "none")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert f"needs the hub dataset {source.repo}" in missing.stderr and "hf download" in missing.stderr
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------------------------------------ shared prefix

SHARED_PREFIX_ROWS = [f.name for f in FAMILIES if f.supported and SPECS[f.name].processor is not None]


@pytest.mark.parametrize("row", SHARED_PREFIX_ROWS)
def test_a_batch_sharing_its_prompts_prefix_answers_as_each_prompt_alone(family_zoo, row):
    """lfm.generate.greedy_answers runs the tokens a batch's prompts share before the image once
    (``with_shared_prefix``); each answer equals the model's own greedy generate of that prompt alone, on every
    family whose processor is buildable here (families whose positions depend on the images share nothing)."""
    from transformers import AutoProcessor

    from families_support import sample_image
    from lfm.generate import (MIN_SHARED_PREFIX, greedy_answers, placeholder_ids, positions_follow_tokens,
                              with_shared_prefix)

    tuned_dir = family_zoo.tuned(row, SAVED)
    try:
        processor = AutoProcessor.from_pretrained(tuned_dir)
    except (ImportError, ValueError) as e:  # processor_needs a package the lock does not hold
        pytest.skip(f"{row}: processor not buildable here ({e})")
    model = load(SPECS[row], tuned_dir)
    prefix = " ".join(f"w{i}" for i in range(1, 13))
    turns = [processor.apply_chat_template([{"role": "user", "content": [
        {"type": "text", "text": prefix}, {"type": "image"}, {"type": "text", "text": " w5 w6 w7"[:3 * (i + 1)]}]}],
        add_generation_prompt=True, tokenize=False) for i in range(3)]  # three lengths: the batch is left-padded
    images = [[sample_image(SPECS[row].image_size, seed=i)] for i in range(3)]
    processor.tokenizer.padding_side = "left"  # as greedy_answers pads
    enc = dict(processor(text=turns, images=images, padding=True, return_tensors="pt"))
    assert not bool(enc["attention_mask"].all())
    with torch.no_grad():
        cache = with_shared_prefix(model, enc).get("cache")
    starts_with_image = int(enc["input_ids"][-1, 0]) in placeholder_ids(model.config)  # PaliGemma's prompts
    assert (cache is not None) == (positions_follow_tokens(model) and not starts_with_image), row
    if cache is not None:
        assert cache.get_seq_length() >= MIN_SHARED_PREFIX and cache.layers[0].keys.shape[0] == 3
    shared = greedy_answers(model, processor, turns, images, max_new_tokens=4, batch_size=3)
    tok = processor.tokenizer
    for i, (turn, image) in enumerate(zip(turns, images)):
        one = processor(text=[turn], images=[image], return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**one, max_new_tokens=4, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert shared[i] == tok.decode(gen[0, one["input_ids"].shape[1]:], skip_special_tokens=True).strip(), (row, i)


@pytest.mark.parametrize("row", ["Qwen2-VL", "Qwen2.5-VL"])
def test_a_family_whose_positions_follow_its_images_shares_no_prefix(family_zoo, row):
    """Qwen2-VL's rotary positions are computed from the whole prompt and its images (``get_rope_index``): a
    cache of the text before the image cannot be continued, so greedy_answers runs such batches whole."""
    from lfm.generate import positions_follow_tokens, with_shared_prefix

    model = load(SPECS[row], family_zoo.tuned(row, SAVED))
    ids = torch.arange(4, 24).repeat(2, 1)
    assert not positions_follow_tokens(model)
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert with_shared_prefix(model, enc) is enc
