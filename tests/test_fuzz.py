"""Fuzzing the inputs lfm parses: safetensors headers, weight indexes and config.json (hypothesis, a fixed
number of derandomized examples so the file runs in seconds and the same way in CI).

Every generated input must end in a clean refusal (a ValueError subclass: CheckpointError, PairError,
whose message the CLI prints as its one line) with nothing written, or in a complete merge whose
output holds exactly the tuned tensors. Anything else (a TypeError, a KeyError, a half-written output)
fails the test.
"""
from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import read_state
from hostile_probe import leftovers, set_header_dtype
from lfm.stream import merge

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 200) | st.floats(allow_nan=False, width=32) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I8", "BOOL", "F8_E4M3", "U8", "Q4", ""]) | json_values


def merge_or_refuse(base: Path, tuned: Path, out: Path) -> None:
    """The property: a ValueError and nothing written, or an output with exactly the tuned keys."""
    try:
        merge(base, tuned, out, "ties", device="cpu", progress=False, log=lambda *a: None)
    except ValueError:
        assert not out.exists() and not leftovers(out)
        return
    assert leftovers(out) == []
    assert set(read_state(out)) == set(read_state(tuned)), "the output lost or gained tensors"


def split_file(f: Path) -> tuple[dict, bytes]:
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@st.composite
def header_edits(draw, keys: list[str]):
    """A list of (operation, key, value) edits of a safetensors header."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "add", "metadata", "entry"]))
        key = draw(st.sampled_from(keys))
        if op == "dtype":
            value = draw(dtypes)
        elif op == "shape":
            value = draw(st.lists(st.integers(-2, 70), max_size=3) | json_values)
        elif op == "offsets":
            value = draw(st.lists(st.integers(-8, 300_000), max_size=3) | json_values)
        elif op == "add":
            key = draw(st.text(min_size=1, max_size=12))
            value = {"dtype": draw(dtypes), "shape": draw(st.lists(st.integers(0, 8), max_size=2)),
                     "data_offsets": draw(st.lists(st.integers(0, 4096), min_size=2, max_size=2))}
        else:
            value = draw(json_values)
        edits.append((op, key, value))
    return edits, draw(st.sampled_from([0] * 8 + [-8, 8, 3])), draw(st.sampled_from([0] * 8 + [1, 100, 10**6]))


@pytest.fixture(scope="module")
def llm_pair(zoo):
    return zoo.base, zoo.llm_tuned


@FUZZ
@given(data=st.data())
def test_fuzzed_safetensors_header(llm_pair, data):
    base, tuned = llm_pair
    header, body = split_file(tuned / "model.safetensors")
    keys = [k for k in header if k != "__metadata__"]
    edits, header_len_delta, cut = data.draw(header_edits(keys))
    for op, key, value in edits:
        if op == "drop":
            header.pop(key, None)
        elif op in ("add", "entry"):
            header[key] = value
        elif op == "metadata":
            header["__metadata__"] = value
        elif key in header and isinstance(header[key], dict):
            header[key][{"dtype": "dtype", "shape": "shape", "offsets": "data_offsets"}[op]] = value
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(shutil.copytree(tuned, Path(tmp) / "tuned"))
        data_bytes = body[:len(body) - cut] if cut else body
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(blob) + header_len_delta) + blob + data_bytes)
        merge_or_refuse(base, d, Path(tmp) / "out")


@FUZZ
@given(raw=st.binary(max_size=80))
def test_fuzzed_safetensors_bytes(llm_pair, raw):
    base, tuned = llm_pair
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(shutil.copytree(tuned, Path(tmp) / "tuned"))
        (d / "model.safetensors").write_bytes(raw)
        merge_or_refuse(base, d, Path(tmp) / "out")


@FUZZ
@given(data=st.data())
def test_fuzzed_weight_index(zoo, data):
    base, tuned = zoo.base_sharded, zoo.llava_sharded
    index = json.loads((base / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    keys = sorted(index["weight_map"])
    names = st.sampled_from(shards) | st.sampled_from(["../" + shards[0], "/" + shards[0], "x.bin", "", ".",
                                                       f"./{shards[0]}", f"sub/{shards[0]}"]) | json_values
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["value", "drop", "add"]))
        if op == "value":
            index["weight_map"][data.draw(st.sampled_from(keys))] = data.draw(names)
        elif op == "drop":
            index["weight_map"].pop(data.draw(st.sampled_from(keys)), None)
        else:
            index["weight_map"][data.draw(st.text(max_size=10))] = data.draw(names)
    replaced = data.draw(st.sampled_from([None, None, None, "weight_map", "index"]))
    if replaced == "weight_map":
        index["weight_map"] = data.draw(json_values)
    elif replaced == "index":
        index = data.draw(json_values)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(shutil.copytree(base, Path(tmp) / "base"))
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
        merge_or_refuse(d, tuned, Path(tmp) / "out")


CONFIG_FIELDS = ["text_config", "architectures", "model_type", "hidden_size", "num_hidden_layers",
                 "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size", "head_dim",
                 "tie_word_embeddings"]


@FUZZ
@given(data=st.data())
def test_fuzzed_config(zoo, data):
    base, tuned = zoo.base, zoo.llava
    which = data.draw(st.sampled_from(["base", "tuned"]))
    config = json.loads(((base if which == "base" else tuned) / "config.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        target = config
        if which == "tuned" and isinstance(config.get("text_config"), dict) and data.draw(st.booleans()):
            target = config["text_config"]
        field = data.draw(st.sampled_from(CONFIG_FIELDS))
        if data.draw(st.booleans()):
            target.pop(field, None)
        else:
            target[field] = data.draw(json_values)
    if data.draw(st.integers(0, 9)) == 0:
        config = data.draw(json_values)
    with tempfile.TemporaryDirectory() as tmp:
        b = Path(shutil.copytree(base, Path(tmp) / "base"))
        t = Path(shutil.copytree(tuned, Path(tmp) / "tuned"))
        ((b if which == "base" else t) / "config.json").write_text(json.dumps(config))
        merge_or_refuse(b, t, Path(tmp) / "out")


def test_fuzz_strategies_reach_both_outcomes(zoo, tmp_path):
    """The property above is not vacuous: an unchanged input merges, an edited one is refused."""
    merge_or_refuse(zoo.base, zoo.llm_tuned, tmp_path / "plain")
    assert (tmp_path / "plain" / "model.safetensors").is_file()
    t = Path(shutil.copytree(zoo.llm_tuned, tmp_path / "tuned"))
    set_header_dtype(t / "model.safetensors", "model.norm.weight", "F8_E4M3")
    with pytest.raises(ValueError, match="F8_E4M3"):
        merge(zoo.base, t, tmp_path / "out", "ties", device="cpu", progress=False, log=lambda *a: None)
