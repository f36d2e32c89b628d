"""lfm/score.py: C(i) of every linear tensor of a pair (against numpy on the files), the summary table and its
safetensors file, an opened pair as `base`, and a non-finite delta named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import lfm
from fixtures import copy_dir, read_state, rewrite_single
from lfm.score import format_summary, linear_deltas, save_scores, summary_rows


def test_scores_of_an_opened_pair_equal_numpy_on_the_files(zoo):
    pair = lfm.open_pair(zoo.base, zoo.llava)
    scores = lfm.neuron_scores(pair, progress=False)
    tuned, base = read_state(zoo.llava), read_state(zoo.base)
    assert len(scores) == 14
    for name, s in scores.items():
        axis = 1 if name.split(".")[-2] in ("o_proj", "down_proj") else 0
        d = tuned[f"language_model.{name}"].double().numpy() - base[name].double().numpy()
        np.testing.assert_allclose(s.double().numpy(), np.abs(d).sum(axis=1 - axis), rtol=1e-5)
    assert list(scores) == [e.name for e, _, _ in linear_deltas(pair, progress=False)]


def test_summary_table_and_file(zoo, tmp_path):
    scores = lfm.neuron_scores(zoo.base, zoo.llava, progress=False)
    rows = summary_rows(scores)
    assert [r["name"] for r in rows] == list(scores)
    row = rows[0]
    s = scores[row["name"]].double()
    assert row["n_neurons"] == s.numel() and row["max"] == pytest.approx(float(s.max()))
    assert row["name"].split(".")[-2] == row["module"] and row["layer"] == 0
    assert len(format_summary(rows).splitlines()) == len(rows) + 2
    save_scores(scores, tmp_path / "s" / "scores.safetensors", {"base": "B"})
    with safe_open(str(tmp_path / "s" / "scores.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["summary"]) == json.loads(json.dumps(rows))
        assert json.loads(f.metadata()["base"]) == "B"
        assert all(torch.equal(f.get_tensor(k), v) for k, v in scores.items())


def test_non_finite_delta_names_the_tensor(zoo, tmp_path):
    base = copy_dir(zoo.base, tmp_path / "base")
    key = "model.layers.1.self_attn.v_proj.weight"

    def poison(sd):
        sd[key].view(-1)[3] = float("inf")
    rewrite_single(base, poison)
    with pytest.raises(ValueError, match=r"non-finite delta in tensor 'model.layers.1.self_attn.v_proj.weight'"):
        lfm.neuron_scores(base, zoo.llava, progress=False)
