"""Stage comparison (hard / suppress / restore) transitions and pick-best (best OA, Pareto front)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from lfm.organism import ORGANISM_DIR

ORG = Path(os.environ.get("LFM_ORGANISM_DIR", ORGANISM_DIR))


def _row(h, s, r):
    return {"hard_category": h, "suppress_category": s, "restore_category": r}


def test_transitions_on_a_hand_built_table():
    from lfm.evaluate.compare import transitions

    table = [_row("not_known", "correct", "correct"),
             _row("not_known", "correct", "correct"),
             _row("context_hallucination", "correct", "wrong_choice"),
             _row("not_known", "context_hallucination", "correct"),
             _row("not_known", "not_known", "not_known"),
             _row("correct", "wrong_choice", "correct"),
             _row("wrong_choice", "context_hallucination", "correct")]
    t = transitions(table, "hard", "suppress")
    assert t["fixed"] == 3 and t["broken"] == 1 and t["n_items"] == 7
    assert t["fixed_by_category"] == {"wrong_choice": 0, "not_known": 2, "context_hallucination": 1}
    assert t["fixed_share"]["not_known"] == pytest.approx(2 / 3)
    assert t["wrong_by_category"] == {"wrong_choice": 1, "not_known": 4, "context_hallucination": 1}
    assert t["fixed_rate"]["not_known"] == pytest.approx(2 / 4) and t["fixed_rate"]["wrong_choice"] == 0
    assert t["accuracy_from"] == pytest.approx(1 / 7) and t["accuracy_to"] == pytest.approx(3 / 7)
    u = transitions(table, "suppress", "restore")
    assert u["fixed_by_category"] == {"wrong_choice": 1, "not_known": 0, "context_hallucination": 2}
    assert u["fixed_rate"]["context_hallucination"] == 1.0 and u["broken"] == 1
    with pytest.raises(KeyError, match="stages present"):
        transitions(table, "hard", "final")


def _dominated(r, rows):
    return any(o["LA"] >= r["LA"] and o["VA"] >= r["VA"] and (o["LA"] > r["LA"] or o["VA"] > r["VA"]) for o in rows)


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_equals_brute_force(seed):
    from lfm.evaluate.pareto import best_point, pareto_front

    rng = random.Random(seed)
    rows = [{"label": f"p{i}", "LA": rng.choice([0.1, 0.2, 0.3, 0.4, rng.random()]),
             "VA": rng.choice([0.1, 0.5, rng.random()]), "OA": None} for i in range(60)]
    for r in rows:
        r["OA"] = (r["LA"] + r["VA"]) / 2
    rows.append({"label": "no-va", "LA": 1.0, "VA": None, "OA": None})
    valid = [r for r in rows if r["VA"] is not None]
    want = sorted(r["label"] for r in valid if not _dominated(r, valid))
    front = pareto_front(rows)
    assert sorted(r["label"] for r in front) == want
    assert [r["LA"] for r in front] == sorted((r["LA"] for r in front), reverse=True)
    assert best_point(rows)["OA"] == max(r["OA"] for r in valid)


def test_compare_stages_on_the_organism(tmp_path):
    if not (ORG / "tuned" / "config.json").exists():
        pytest.skip(f"organism checkpoints not found in {ORG}")
    import json

    from lfm.cli import main
    from lfm.taxonomy import CATEGORIES

    out = tmp_path / "cmp"
    assert main(["compare", "--base", str(ORG / "base"), "--tuned", str(ORG / "tuned"), "--limit", "12",
                 "--out", str(out), "--quiet"]) == 0
    import pandas as pd

    table = pd.read_csv(out / "items.csv", keep_default_na=False)
    assert len(table) == 12
    for stage in ("hard", "suppress", "restore"):
        assert set(table[f"{stage}_category"]) <= set(CATEGORIES)
    s = json.loads((out / "transitions.json").read_text())
    assert [(t["from"], t["to"]) for t in s["transitions"]] == [("hard", "suppress"), ("suppress", "restore")]
    assert s["stages"]["hard"]["accuracy"] == (table["hard_category"] == "correct").mean()


def test_scienceqa_items_fail_clearly_offline(monkeypatch, tmp_path):
    from lfm.evaluate.compare import stage_items
    from lfm.evaluate.suites import DatasetsUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DatasetsUnavailable, match="ScienceQA"):
        stage_items("scienceqa", limit=2)


def test_compare_needs_both_of_a_pair_or_neither(tmp_path, capsys):
    """Neither --base nor --tuned: the embedded organism (tests/test_wheel.py runs it installed); one alone: exit 2."""
    from lfm.cli import main

    assert main(["compare", "--tuned", str(ORG / "tuned"), "--out", str(tmp_path / "cmp")]) == 2
    assert "--base and --tuned go together" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
