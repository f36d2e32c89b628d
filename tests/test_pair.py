"""lfm.open_pair: key mapping for both LLaVA layouts, LLaVA-Next, plain LLMs, other families, and
every input error of issue 2 (message names the tensor / file)."""
from __future__ import annotations

import pytest
import torch

import lfm
from fixtures import EXTRA_VOCAB, TinyZoo, canonical_from_tuned_key, copy_dir, read_state, to_pickle

N_LM = 3 + 9 * 2  # embed, norm, lm_head + 9 tensors per layer (7 linear + 2 norms) x 2 layers


def _check_mapping(pair, base_dir, tuned_dir):
    base_sd, tuned_sd = read_state(base_dir), read_state(tuned_dir)
    entries = pair.entries
    by_tuned = {e.tuned_key: e for e in entries}
    # every tuned key is either an LM entry or passthrough, never both, never dropped
    assert set(by_tuned) | set(pair.passthrough) == set(tuned_sd)
    assert not set(by_tuned) & set(pair.passthrough)
    # LM entries: the canonical name is the base key, the mapping matches the independent rule
    for key, e in by_tuned.items():
        assert canonical_from_tuned_key(key) == e.name == e.base_key, key
    assert {e.base_key for e in entries} == set(base_sd)
    # passthrough = vision tower, projector, image_newline
    for key in pair.passthrough:
        assert canonical_from_tuned_key(key) is None, key
    return base_sd, tuned_sd


@pytest.mark.parametrize("variant", ["llava", "llava_wild", "llava_next", "llava_extra_vocab", "llava_sharded",
                                     "llava_bf16", "llava_mistral"])
def test_llava_key_mapping(zoo: TinyZoo, variant):
    base_dir, tuned_dir = zoo.all_pairs()[variant]
    pair = lfm.open_pair(base_dir, tuned_dir)
    _check_mapping(pair, base_dir, tuned_dir)
    assert len(pair.entries) == N_LM
    assert any(k.endswith("multi_modal_projector.linear_1.weight") for k in pair.passthrough)
    assert any("vision_tower" in k for k in pair.passthrough)
    if variant == "llava_next":
        assert "image_newline" in pair.passthrough


def test_layouts_map_to_the_same_tensors(zoo):
    hf, wild = lfm.open_pair(zoo.base, zoo.llava), lfm.open_pair(zoo.base, zoo.llava_wild)
    tuned_hf = {e.name: e.tuned_key for e in hf.entries}
    tuned_wild = {e.name: e.tuned_key for e in wild.entries}
    assert set(tuned_hf) == set(tuned_wild)
    assert tuned_hf["lm_head.weight"] == "language_model.lm_head.weight"
    assert tuned_wild["lm_head.weight"] == "lm_head.weight"
    assert tuned_hf["model.layers.1.mlp.down_proj.weight"] == "language_model.model.layers.1.mlp.down_proj.weight"
    assert tuned_wild["model.layers.1.mlp.down_proj.weight"] == "model.language_model.layers.1.mlp.down_proj.weight"
    assert tuned_wild["model.embed_tokens.weight"] == "model.language_model.embed_tokens.weight"
    a = dict((e.name, (b, t)) for e, b, t in hf.iter_lm())
    for e, b, t in wild.iter_lm():
        assert torch.equal(a[e.name][0], b) and torch.equal(a[e.name][1], t), e.name


def test_plain_llm_identity_mapping(zoo):
    pair = lfm.open_pair(zoo.base, zoo.llm_tuned)
    _check_mapping(pair, zoo.base, zoo.llm_tuned)
    assert pair.passthrough == []
    assert all(e.name == e.tuned_key for e in pair.entries)


def test_qwen2_biases_are_lm_tensors(zoo):
    pair = lfm.open_pair(zoo.base_qwen2, zoo.llava_qwen2)
    _check_mapping(pair, zoo.base_qwen2, zoo.llava_qwen2)
    names = {e.name for e in pair.entries}
    assert "model.layers.0.self_attn.q_proj.bias" in names
    assert len(pair.entries) == N_LM + 3 * 2


def test_iter_lm_streams_aligned_pairs(zoo):
    pair = lfm.open_pair(zoo.base, zoo.llava)
    base_sd, tuned_sd = read_state(zoo.base), read_state(zoo.llava)
    n = 0
    for e, b, t in pair.iter_lm():
        assert torch.equal(b, base_sd[e.base_key]) and torch.equal(t, tuned_sd[e.tuned_key])
        n += 1
    assert n == N_LM


@pytest.mark.parametrize("base", ["base", "base_sharded", "base_bf16"])
def test_iter_lm_mapped_reads_the_same_tensors(zoo, base):
    """mapped=True gives read-only views of the files (no copy) with the same values as plain reads."""
    tuned = "llava_bf16" if base == "base_bf16" else "llava_sharded"
    pair = lfm.open_pair(getattr(zoo, base), getattr(zoo, tuned))
    base_sd, tuned_sd = read_state(getattr(zoo, base)), read_state(getattr(zoo, tuned))
    n = 0
    for e, b, t in pair.iter_lm(mapped=True):
        assert b.dtype == base_sd[e.base_key].dtype and torch.equal(b, base_sd[e.base_key])
        assert torch.equal(t, tuned_sd[e.tuned_key])
        n += 1
    assert n == N_LM
    # the same memory on every call: views of one mapping per file, not copies
    e = pair.entries[0]
    assert pair.base.map(e.base_key).data_ptr() == pair.base.map(e.base_key).data_ptr()
    assert pair.base.get(e.base_key).data_ptr() != pair.base.get(e.base_key).data_ptr()


@pytest.mark.parametrize("model", ["base_sharded", "base_bf16", "llava_sharded"])
def test_map_one_reads_each_tensor_from_its_own_mapping(zoo, model, tmp_path):
    """map_one (what the streaming merge reads): the values of safetensors' own reader, one mapping per
    tensor that goes when the tensor goes, and a file cut short after it was opened refused by name."""
    import shutil

    from lfm.checkpoint import Checkpoint, CheckpointError

    truth = read_state(getattr(zoo, model))
    ckpt = Checkpoint(getattr(zoo, model))
    maps_before = len(_mapped_files(getattr(zoo, model)))
    for key in ckpt.keys():
        tensor = ckpt.map_one(key)
        assert tensor.dtype == truth[key].dtype and torch.equal(tensor, truth[key]), key
        del tensor
    assert len(_mapped_files(getattr(zoo, model))) == maps_before  # every mapping went with its tensor

    copy = tmp_path / "copy"
    shutil.copytree(getattr(zoo, model), copy)
    ckpt = Checkpoint(copy)
    key = ckpt.keys()[-1]
    file = ckpt.file_of(key)
    with open(file, "r+b") as handle:  # cut after validation: the last tensor ends past the end
        handle.truncate(file.stat().st_size - 4)
    with pytest.raises(CheckpointError, match=f"tensor {key!r} ends early; the file is truncated"):
        ckpt.map_one(key)


def _mapped_files(folder) -> list[str]:
    """This process's memory maps of files under `folder` (Linux: /proc/self/maps)."""
    return [line for line in open("/proc/self/maps") if str(folder) in line]


def test_extra_vocab_detected(zoo):
    pair = lfm.open_pair(zoo.base, zoo.llava_extra_vocab)
    assert pair.extra_vocab == {"model.embed_tokens.weight": EXTRA_VOCAB, "lm_head.weight": EXTRA_VOCAB}
    assert "extra" in pair.describe()


# ------------------------------------------------------------------------------ errors


def test_hidden_size_mismatch(zoo):
    with pytest.raises(ValueError, match="hidden_size"):
        lfm.open_pair(zoo.base_hidden_mismatch, zoo.llava)


def test_layer_count_mismatch(zoo):
    with pytest.raises(ValueError, match="num_hidden_layers"):
        lfm.open_pair(zoo.base_layers_mismatch, zoo.llava)


def test_shape_mismatch_names_tensor(zoo):
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        lfm.open_pair(zoo.base, zoo.shape_mismatch_tuned)


def test_lm_tensor_without_counterpart_names_it(zoo):
    with pytest.raises(ValueError, match="extra_proj"):
        lfm.open_pair(zoo.base, zoo.orphan_tuned)


def test_base_tensor_missing_from_tuned(zoo, tmp_path):
    d = copy_dir(zoo.llava_wild, tmp_path / "t")
    from fixtures import rewrite_single

    rewrite_single(d, lambda sd: sd.pop("model.language_model.layers.0.mlp.gate_proj.weight"))
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.gate_proj"):
        lfm.open_pair(zoo.base, d)


def test_corrupt_safetensors_names_file(zoo):
    with pytest.raises(ValueError, match="model.safetensors"):
        lfm.open_pair(zoo.base, zoo.corrupt_tuned)


def test_garbage_safetensors_names_file(zoo, tmp_path):
    d = copy_dir(zoo.llava, tmp_path / "t")
    (d / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="model.safetensors"):
        lfm.open_pair(zoo.base, d)


def test_missing_weights(zoo):
    with pytest.raises(ValueError, match=r"safetensors"):
        lfm.open_pair(zoo.base, zoo.no_weights_tuned)


def test_missing_config(zoo, tmp_path):
    d = copy_dir(zoo.llava, tmp_path / "t")
    (d / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        lfm.open_pair(zoo.base, d)


def test_sharded_without_index(zoo):
    with pytest.raises(ValueError, match="index"):
        lfm.open_pair(zoo.base_missing_index, zoo.llava)


def test_index_pointing_to_missing_shard(zoo, tmp_path):
    d = copy_dir(zoo.base_sharded, tmp_path / "b")
    next(iter(sorted(d.glob("model-*.safetensors")))).unlink()
    with pytest.raises(ValueError, match="model-00001"):
        lfm.open_pair(d, zoo.llava)


def test_pickle_refused_without_allow(zoo):
    with pytest.raises(ValueError, match="allow-pickle|allow_pickle"):
        lfm.open_pair(zoo.base_pickle, zoo.llava)


def test_pickle_allowed_loads_same_tensors(zoo):
    pair = lfm.open_pair(zoo.base_pickle, zoo.llava, allow_pickle=True)
    ref = lfm.open_pair(zoo.base, zoo.llava)
    got = {e.name: b for e, b, _ in pair.iter_lm()}
    for e, b, _ in ref.iter_lm():
        assert torch.equal(got[e.name], b)


class NotATensor:  # a pickled global: weights_only=True must refuse it
    pass


def test_pickle_with_arbitrary_object_refused_even_when_allowed(zoo, tmp_path):
    d = copy_dir(zoo.base, tmp_path / "b")
    to_pickle(d)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    sd["evil"] = NotATensor()
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        lfm.open_pair(d, zoo.llava, allow_pickle=True)


def test_base_must_be_causal_lm(zoo):
    with pytest.raises(ValueError, match="base"):
        lfm.open_pair(zoo.llava, zoo.llava_wild)


def test_family_mismatch(zoo):
    with pytest.raises(ValueError, match="model_type|mismatch"):
        lfm.open_pair(zoo.base_mistral, zoo.llava)
