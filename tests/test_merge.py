"""lfm.merge end to end on tiny real checkpoints: output completeness, values against an in-test
reference, loading + generate with the tuned class, sharding, dtype, lfm_recipe.json, determinism,
atomicity and every error of issue 2."""
from __future__ import annotations

import importlib
import json
import re

import numpy as np
import pytest
import torch

import lfm
from fixtures import (EXTRA_VOCAB, TinyZoo, canonical_from_tuned_key, load_json, read_state, tree_bytes,
                      tree_mtimes)
from test_methods import ref_band_mask, ref_neuron_fusion, ref_top_mask

ROWS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
COLS = ("o_proj", "down_proj")


def axis_of(name: str):
    m = re.search(r"\.(\w+_proj)\.weight$", name)
    if not m:
        return None
    return 0 if m.group(1) in ROWS else 1 if m.group(1) in COLS else None


def reference_merge(base_dir, tuned_dir, method: str, *, K=0.2, M=0.3, alpha=1.0, gamma=0.01,
                    suppress="ties", restore="rescale") -> dict[str, torch.Tensor]:
    """The merged checkpoint computed here from both state dicts (numpy, float64), keyed like tuned."""
    base, tuned = read_state(base_dir), read_state(tuned_dir)
    out = {}
    for key, t in tuned.items():
        name = canonical_from_tuned_key(key)
        if name is None:
            out[key] = t
            continue
        b = base[name]
        nb = b.shape[0]
        d = (t[:nb].double() - b.double())
        dn = d.numpy()
        if method == "hard":
            new = np.zeros_like(dn)
        elif method == "task_arithmetic":
            new = alpha * dn
        elif method == "ties":
            new = alpha * dn * ref_top_mask(dn, int(K * dn.size))
        elif method == "breadcrumbs":
            new = alpha * dn * ref_band_mask(dn, K, gamma)
        elif method == "neuron_fusion":
            axis = axis_of(name)
            if axis is None:  # others=method: only suppressed
                if suppress == "ties":
                    new = alpha * dn * ref_top_mask(dn, int(K * dn.size))
                elif suppress == "breadcrumbs":
                    new = alpha * dn * ref_band_mask(dn, K, gamma)
                else:
                    new = alpha * dn
            else:
                new, _, _ = ref_neuron_fusion(d.float(), K=K, M=M, suppress=suppress, restore=restore, alpha=alpha,
                                              gamma=gamma, axis=axis)
        else:
            raise ValueError(method)
        merged = torch.from_numpy(b.double().numpy() + new)
        if t.shape[0] > nb:
            merged = torch.cat([merged, t[nb:].double()])
        out[key] = merged.to(t.dtype)
    return out


def assert_matches_reference(out_dir, ref: dict, *, exact_dtype=True):
    got = read_state(out_dir)
    assert set(got) == set(ref)
    for k, want in ref.items():
        g = got[k]
        assert g.dtype == want.dtype and g.shape == want.shape, k
        if want.dtype == torch.float32:
            torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-7, msg=lambda m: f"{k}: {m}")
        else:  # bf16: one rounding step of difference allowed (float32 vs float64 math before the cast)
            torch.testing.assert_close(g.float(), want.float(), rtol=8e-3, atol=1e-6, msg=lambda m: f"{k}: {m}")


def merge(zoo_pair, out, method, **kw):
    base, tuned = zoo_pair
    return lfm.merge(base, tuned, out, method, progress=False, log=lambda *a: None, **kw)


# ------------------------------------------------------------------------------ values and completeness

CASES = [
    ("llava", "ties", dict(density=0.2)),
    ("llava_wild", "neu-s-ties", dict(density=0.2, neurons=0.3)),
    ("llava_next", "neu-p-bread", dict(density=0.3, neurons=0.2, gamma=0.02)),
    ("llm", "task_arithmetic", dict(alpha=0.7)),
    ("llava_extra_vocab", "neu-s-bread", dict(density=0.2, neurons=0.3)),
    ("llava_sharded", "breadcrumbs", dict(density=0.3)),
    ("llava_mistral", "neu-p-taska", dict(alpha=0.5, neurons=0.3)),
    ("llava_qwen2", "neu-s-ties", dict(density=0.1, neurons=0.1, alpha=1.2)),
    ("llava_bf16", "ties", dict(density=0.5)),
]


def _ref_args(method, kw):
    r = lfm.Recipe.from_name(method, **kw)
    return r.method, dict(K=r.density, M=r.neurons, alpha=r.alpha, gamma=r.gamma, suppress=r.suppress, restore=r.restore)


@pytest.mark.parametrize("variant,method,kw", CASES, ids=[c[0] + "-" + c[1] for c in CASES])
def test_merged_values_equal_reference(zoo: TinyZoo, tmp_path, variant, method, kw):
    pair = zoo.all_pairs()[variant]
    out = tmp_path / "out"
    merge(pair, out, method, **kw)
    m, args = _ref_args(method, kw)
    ref = reference_merge(*pair, m, **args)
    assert_matches_reference(out, ref)
    # vision tower / projector: bit-identical to tuned
    tuned, got = read_state(pair[1]), read_state(out)
    for k in tuned:
        if canonical_from_tuned_key(k) is None:
            assert torch.equal(got[k], tuned[k]) and got[k].dtype == tuned[k].dtype, k
    # the in-memory merge is the same merge
    sd = lfm.merged_state_dict(*pair, lfm.Recipe.from_name(method, **kw))
    assert set(sd) == set(got)
    for k in got:
        assert torch.equal(sd[k], got[k]), k


def _generate(model_cls, out):
    model = model_cls.from_pretrained(out)
    model.eval()
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), min_new_tokens=4, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 9)
    return model


@pytest.mark.parametrize("variant,cls", [
    ("llava", "LlavaForConditionalGeneration"), ("llava_wild", "LlavaForConditionalGeneration"),
    ("llava_next", "LlavaNextForConditionalGeneration"), ("llm", "LlamaForCausalLM"),
    ("llava_extra_vocab", "LlavaForConditionalGeneration"), ("llava_bf16", "LlavaForConditionalGeneration"),
    ("llava_sharded", "LlavaForConditionalGeneration"), ("llava_qwen2", "LlavaForConditionalGeneration"),
])
def test_merged_model_loads_with_tuned_class_and_generates(zoo, tmp_path, variant, cls):
    import transformers

    pair = zoo.all_pairs()[variant]
    out = tmp_path / "out"
    merge(pair, out, "neu-s-ties", density=0.2, neurons=0.3)
    assert load_json(out / "config.json") == load_json(pair[1] / "config.json")
    model = _generate(getattr(transformers, cls), out)
    # the loaded weights are the file's weights (no key silently re-initialised)
    got = read_state(out)
    lm_head = "language_model.lm_head.weight" if "language_model.lm_head.weight" in got else "lm_head.weight"
    assert torch.equal(model.lm_head.weight.detach(), got[lm_head])


def test_every_tuned_tensor_in_output_for_all_pairs(zoo, tmp_path):
    for name, pair in zoo.all_pairs().items():
        out = tmp_path / name
        merge(pair, out, "ties", density=0.2)
        tuned, got = read_state(pair[1]), read_state(out)
        assert set(got) == set(tuned), name
        for k in tuned:
            assert got[k].shape == tuned[k].shape and got[k].dtype == tuned[k].dtype, (name, k)


@pytest.mark.parametrize("variant", ["llava", "llava_wild", "llava_extra_vocab", "llm"])
def test_hard_merge_lm_is_base(zoo, tmp_path, variant):
    base_dir, tuned_dir = zoo.all_pairs()[variant]
    out = tmp_path / "out"
    merge((base_dir, tuned_dir), out, "hard")
    base, tuned, got = read_state(base_dir), read_state(tuned_dir), read_state(out)
    for k, t in tuned.items():
        name = canonical_from_tuned_key(k)
        if name is None:
            assert torch.equal(got[k], t), k
        else:
            nb = base[name].shape[0]
            assert torch.equal(got[k][:nb], base[name]), k
            assert torch.equal(got[k][nb:], t[nb:]), k  # extra vocabulary rows stay tuned


def test_ties_K1_gives_back_tuned(zoo, tmp_path):
    merge((zoo.base_bf16, zoo.llava_bf16), tmp_path / "bf", "ties", density=1.0)
    tuned, got = read_state(zoo.llava_bf16), read_state(tmp_path / "bf")
    for k in tuned:
        assert torch.equal(got[k], tuned[k]), k
    merge((zoo.base, zoo.llava), tmp_path / "f32", "ties", density=1.0)
    tuned, got = read_state(zoo.llava), read_state(tmp_path / "f32")
    for k in tuned:  # float32: base + (tuned - base) may differ from tuned by one rounding
        torch.testing.assert_close(got[k], tuned[k], rtol=0, atol=1e-8)


@pytest.mark.parametrize("others", ["tuned", "base"])
def test_others_switch(zoo, tmp_path, others):
    out = tmp_path / "out"
    merge((zoo.base, zoo.llava), out, "ties", density=0.2, others=others)
    src = read_state(zoo.llava if others == "tuned" else zoo.base)
    got = read_state(out)
    for k in got:
        name = canonical_from_tuned_key(k)
        if name is None or axis_of(name) is not None:
            continue
        want = src[k if others == "tuned" else name]
        assert torch.equal(got[k], want), k


def test_keep_base_and_keep_tuned_regex(zoo, tmp_path):
    out = tmp_path / "out"
    merge((zoo.base, zoo.llava), out, "ties", density=0.2, keep_base=[r"layers\.0\.mlp"], keep_tuned=[r"lm_head"])
    base, tuned, got = read_state(zoo.base), read_state(zoo.llava), read_state(out)
    for m in ("gate_proj", "up_proj", "down_proj"):
        assert torch.equal(got[f"language_model.model.layers.0.mlp.{m}.weight"], base[f"model.layers.0.mlp.{m}.weight"])
        assert not torch.equal(got[f"language_model.model.layers.1.mlp.{m}.weight"], base[f"model.layers.1.mlp.{m}.weight"])
    assert torch.equal(got["language_model.lm_head.weight"], tuned["language_model.lm_head.weight"])


# ------------------------------------------------------------------------------ sharding and dtype


def test_sharded_in_sharded_out(zoo, tmp_path):
    out = tmp_path / "out"
    merge((zoo.base_sharded, zoo.llava_sharded), out, "ties", density=0.2, max_shard_size="30KB")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    index = load_json(out / "model.safetensors.index.json")
    assert set(index["weight_map"]) == set(read_state(zoo.llava_sharded))
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    for key, shard in index["weight_map"].items():
        from safetensors import safe_open

        with safe_open(str(out / shard), "pt") as f:
            assert key in f.keys()
    _generate(__import__("transformers").LlavaForConditionalGeneration, out)


def test_bf16_preserved(zoo, tmp_path):
    out = tmp_path / "out"
    merge((zoo.base_bf16, zoo.llava_bf16), out, "neu-s-ties")
    assert all(t.dtype == torch.bfloat16 for t in read_state(out).values())
    assert load_json(out / "config.json") == load_json(zoo.llava_bf16 / "config.json")


def test_dtype_override(zoo, tmp_path):
    out = tmp_path / "out"
    merge((zoo.base, zoo.llava), out, "ties", dtype="bfloat16")
    sd = read_state(out)
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    assert load_json(out / "config.json")["dtype"] == "bfloat16"
    ref = reference_merge(zoo.base, zoo.llava, "ties", K=0.2)
    for k, v in ref.items():
        assert torch.equal(sd[k], v.to(torch.bfloat16)) or torch.allclose(sd[k].float(), v.float(), rtol=8e-3), k


# ------------------------------------------------------------------------------ lfm_recipe.json


def test_recipe_json_contents(zoo, tmp_path):
    out = tmp_path / "out"
    report = merge((zoo.base, zoo.llava_extra_vocab), out, "neu-s-ties", density=0.2, neurons=0.3, alpha=0.9)
    rec = load_json(out / "lfm_recipe.json")
    assert rec == json.loads(json.dumps(report))
    assert rec["method"] == "neuron_fusion"
    r = rec["recipe"]
    assert (r["density"], r["neurons"], r["alpha"], r["suppress"], r["restore"]) == (0.2, 0.3, 0.9, "ties", "rescale")
    assert rec["lfm_version"] == lfm.__version__
    for side, d in (("base", zoo.base), ("tuned", zoo.llava_extra_vocab)):
        assert rec["inputs"][side]["path"] == str(d.resolve())
        fp = rec["inputs"][side]["fingerprint"]
        assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert rec["inputs"]["base"]["fingerprint"] != rec["inputs"]["tuned"]["fingerprint"]
    # per-module kept fractions and restored counts, recomputed here
    n_layers = 2
    sizes = {"q_proj": (32, 32, 32), "k_proj": (16, 32, 16), "v_proj": (16, 32, 16), "o_proj": (32, 32, 32),
             "gate_proj": (64, 32, 64), "up_proj": (64, 32, 64), "down_proj": (32, 64, 64)}
    mods = rec["modules"]
    for m, (o, i, n_neurons) in sizes.items():
        s = mods[m]
        assert s["numel"] == n_layers * o * i
        assert s["kept"] == n_layers * int(0.2 * o * i)
        assert s["kept_fraction"] == pytest.approx(int(0.2 * o * i) / (o * i))
        assert s["n_neurons"] == n_layers * n_neurons
        assert s["n_located"] == n_layers * int(0.3 * n_neurons)
        assert "n_fallback_replace" in s
    assert rec["extra_vocab_rows"] == {"model.embed_tokens.weight": EXTRA_VOCAB, "lm_head.weight": EXTRA_VOCAB}


def test_recipe_json_records_the_device_outside_its_fingerprint(zoo, tmp_path):
    """docs/devices.md: the device a merge ran on is in `run`, resolved; the fingerprint is the sha256 of every
    other field (recomputed here from the file), so a merge whose bytes equal another's (e.g. TIES on a GPU and on
    the CPU) compares equal by it, and a changed recipe does not."""
    import hashlib

    a, b = tmp_path / "a", tmp_path / "b"
    merge((zoo.base, zoo.llava), a, "ties", density=0.2, device="cpu:0")
    merge((zoo.base, zoo.llava), b, "ties", density=0.3, device="cpu")
    rec_a, rec_b = load_json(a / "lfm_recipe.json"), load_json(b / "lfm_recipe.json")
    assert rec_a["run"] == rec_b["run"] == {"device": "cpu"}  # 'cpu:0' is the CPU: recorded resolved
    for rec in (rec_a, rec_b):
        rest = {k: v for k, v in rec.items() if k not in ("run", "fingerprint")}
        assert rec["fingerprint"] == hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()
    assert rec_a["fingerprint"] != rec_b["fingerprint"]
    moved = {**rec_a, "run": {"device": "cuda:0"}}
    assert lfm.stream.recipe_fingerprint(moved) == rec_a["fingerprint"]


def test_recipe_json_fallback_count_matches_reference(zoo, tmp_path):
    """At a tiny K some located neurons lose every entry: their count is reported."""
    out = tmp_path / "out"
    merge((zoo.base, zoo.llava), out, "neu-s-ties", density=0.002, neurons=0.5)
    rec = load_json(out / "lfm_recipe.json")
    base, tuned = read_state(zoo.base), read_state(zoo.llava)
    total = 0
    for k, t in tuned.items():
        name = canonical_from_tuned_key(k)
        if name and axis_of(name) is not None:
            d = t.float() - base[name].float()
            _, _, fb = ref_neuron_fusion(d, K=0.002, M=0.5, suppress="ties", restore="rescale", axis=axis_of(name))
            total += fb
            assert rec["tensors"][name]["n_fallback_replace"] == fb, name
    assert total > 0
    assert sum(s["n_fallback_replace"] for s in rec["modules"].values()) == total


# ------------------------------------------------------------------------------ determinism


def _weights(out):
    """The output's files but the two that describe its inputs (lfm_recipe.json, the README.md model card)."""
    return {k: v for k, v in tree_bytes(out).items() if k not in ("lfm_recipe.json", "README.md")}


@pytest.mark.parametrize("method,kw", [("dare", {}), ("della", {}), ("neuron_fusion", {"locate": "random"}),
                                       ("neu-s-ties", {})])
def test_seed_gives_byte_identical_output(zoo, tmp_path, method, kw):
    pair = (zoo.base, zoo.llava)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    merge(pair, a, method, seed=7, **kw)
    merge(pair, b, method, seed=7, **kw)
    merge(pair, c, method, seed=8, **kw)
    assert _weights(a) == _weights(b)
    assert (a / "lfm_recipe.json").read_bytes() == (b / "lfm_recipe.json").read_bytes()
    if method != "neu-s-ties":
        assert _weights(a)["model.safetensors"] != _weights(c)["model.safetensors"]


# ------------------------------------------------------------------------------ output directory safety


def _no_leftovers(parent, name="out"):
    return [p.name for p in parent.iterdir() if name in p.name and p.name != name]


def test_error_midway_leaves_nothing_and_inputs_untouched(zoo, tmp_path):
    before_b, before_t = tree_bytes(zoo.base), tree_bytes(zoo.nan_tuned)
    mt_b, mt_t = tree_mtimes(zoo.base), tree_mtimes(zoo.nan_tuned)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.v_proj\.weight"):
        merge((zoo.base, zoo.nan_tuned), out, "ties")
    assert not out.exists()
    assert _no_leftovers(tmp_path) == []
    assert tree_bytes(zoo.base) == before_b and tree_bytes(zoo.nan_tuned) == before_t
    assert tree_mtimes(zoo.base) == mt_b and tree_mtimes(zoo.nan_tuned) == mt_t


def test_inf_delta_names_tensor(zoo, tmp_path):
    with pytest.raises(ValueError, match=r"v_proj"):
        merge((zoo.base, zoo.inf_tuned), tmp_path / "out", "neu-s-ties")
    assert not (tmp_path / "out").exists()


def test_error_keeps_existing_output_when_forced(zoo, tmp_path):
    out = tmp_path / "out"
    merge((zoo.base, zoo.llava), out, "ties")
    before = tree_bytes(out)
    with pytest.raises(ValueError):
        merge((zoo.base, zoo.nan_tuned), out, "ties", force=True)
    assert tree_bytes(out) == before
    assert _no_leftovers(tmp_path) == []


def test_success_leaves_inputs_untouched(zoo, tmp_path):
    before, mt = tree_bytes(zoo.llava), tree_mtimes(zoo.llava)
    merge((zoo.base, zoo.llava), tmp_path / "out", "neu-p-ties")
    assert tree_bytes(zoo.llava) == before and tree_mtimes(zoo.llava) == mt
    assert _no_leftovers(tmp_path) == []


def test_existing_nonempty_out_needs_force(zoo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="force"):
        merge((zoo.base, zoo.llava), out, "ties")
    assert (out / "keep.txt").read_text() == "x"
    merge((zoo.base, zoo.llava), out, "ties", force=True)
    assert not (out / "keep.txt").exists() and (out / "lfm_recipe.json").exists()


def test_existing_empty_out_is_fine(zoo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    merge((zoo.base, zoo.llava), out, "ties")
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("where", ["base", "tuned", "inside_tuned", "parent_of_base"])
def test_out_equal_to_or_inside_an_input_refused(zoo, tmp_path, where):
    from fixtures import copy_dir

    base, tuned = copy_dir(zoo.base, tmp_path / "in" / "b"), copy_dir(zoo.llava, tmp_path / "in" / "t")
    before_b, before_t = tree_bytes(base), tree_bytes(tuned)
    out = {"base": base, "tuned": tuned, "inside_tuned": tuned / "merged", "parent_of_base": tmp_path / "in"}[where]
    with pytest.raises(ValueError, match="input"):
        merge((base, tuned), out, "ties", force=True)
    assert tree_bytes(base) == before_b and tree_bytes(tuned) == before_t


@pytest.mark.parametrize("kw,match", [
    (dict(density=0.0), "density"), (dict(density=1.5), "density"), (dict(neurons=1.5), "neurons"),
    (dict(neurons=-0.5), "neurons"),
])
def test_bad_recipe_fails_before_io(zoo, tmp_path, kw, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        merge((zoo.base, zoo.llava), out, "neu-s-ties", **kw)
    assert not out.exists()


def test_unknown_method(zoo, tmp_path):
    with pytest.raises(ValueError, match="frobnicate"):
        merge((zoo.base, zoo.llava), tmp_path / "out", "frobnicate")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("attr,match", [
    ("corrupt_tuned", "model.safetensors"), ("no_weights_tuned", "safetensors"), ("shape_mismatch_tuned", "up_proj"),
    ("orphan_tuned", "extra_proj"),
])
def test_bad_tuned_inputs(zoo, tmp_path, attr, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        merge((zoo.base, getattr(zoo, attr)), out, "ties")
    assert not out.exists() and _no_leftovers(tmp_path) == []


@pytest.mark.parametrize("attr,match", [
    ("base_missing_index", "index"), ("base_hidden_mismatch", "hidden_size"),
    ("base_layers_mismatch", "num_hidden_layers"), ("base_pickle", "pickle"),
])
def test_bad_base_inputs(zoo, tmp_path, attr, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        merge((getattr(zoo, attr), zoo.llava), out, "ties")
    assert not out.exists()


def test_allow_pickle_merges(zoo, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    merge((zoo.base_pickle, zoo.llava), a, "ties", allow_pickle=True)
    merge((zoo.base, zoo.llava), b, "ties")
    assert _weights(a) == _weights(b)


def test_seed_gives_byte_identical_recipe_file_too(zoo, tmp_path):
    """Issue 2: 'same inputs + seed => byte-identical output files'. lfm_recipe.json is an output file, so
    run-dependent values (wall-clock seconds) must not be in it (log them instead)."""
    a, b = tmp_path / "a", tmp_path / "b"
    merge((zoo.base, zoo.llava), a, "dare", seed=3)
    merge((zoo.base, zoo.llava), b, "dare", seed=3)
    assert tree_bytes(a) == tree_bytes(b)


@pytest.mark.parametrize("method", ["ties", "neu-s-ties", "neu-p-ties", "dare", "della", "task_arithmetic"])
def test_bytes_do_not_depend_on_threads_or_workers(zoo, tmp_path, monkeypatch, method):
    """One tensor at a time on one thread, or several at once (one thread each, the bigger ones alone on
    every thread): the same files. Small blocks so that the block-by-block paths run on the tiny pair."""
    monkeypatch.setattr("lfm.methods.blocked.MERGE_BLOCK", 1000)
    monkeypatch.setattr("lfm.methods.tensor.BLOCKED_FROM", 500)
    monkeypatch.setattr("lfm.methods.select.EXACT_SELECT_MAX", 300)
    monkeypatch.setattr("lfm.methods.select.SAMPLE_SIZE", 200)
    pair = (zoo.base, zoo.llava)
    previous = torch.get_num_threads()
    outputs = []
    try:
        for threads, parallel_bytes in ((1, 2**40), (2, 2**40), (2, 20_000), (3, 2**40)):
            torch.set_num_threads(threads)
            monkeypatch.setattr(importlib.import_module("lfm.stream"), "PARALLEL_BYTES", parallel_bytes)
            outputs.append(tmp_path / f"out-{threads}-{parallel_bytes}")
            merge(pair, outputs[-1], method)
            assert torch.get_num_threads() == threads  # put back as it was
    finally:
        torch.set_num_threads(previous)
    first = tree_bytes(outputs[0])
    for out in outputs[1:]:
        assert tree_bytes(out) == first, out.name
