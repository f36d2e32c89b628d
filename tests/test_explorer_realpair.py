"""The explorer and `lfm compare` on the real pair (lfm.realpair, the 'smoke' build: tests/conftest.py
`smoke_pair`), evaluated on the pair's own suite.

References are independent of the explorer's in-memory path: the same recipe written to disk by `lfm merge`
and scored by `lfm.evaluate.harness.evaluate` (lm-eval + lmms-eval on the merged directory, read back by
transformers), and, for `lfm compare`, lmms-eval's own per-item answers of that merged directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lfm.methods import Recipe

LIMIT = 1  # items per task: the numbers must be equal, not large


@pytest.fixture(scope="module")
def pair(smoke_pair):
    root, res = smoke_pair
    return Path(res["base"]), Path(res["tuned"]), Path(res["suite"])


def merged_on_disk(pair, recipe_args: list[str], out: Path) -> Path:
    from lfm.cli import main

    base, tuned, _ = pair
    assert main(["merge", "--base", str(base), "--tuned", str(tuned), *recipe_args, "--out", str(out),
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def restore_truth(pair, tmp_path_factory) -> dict:
    """lm-eval + lmms-eval (samples logged) of Neu-S-TIES K=0.2 M=0.3 as written to disk by `lfm merge`."""
    from lfm.evaluate.harness import evaluate

    out = merged_on_disk(pair, ["--method", "neu-s-ties", "-K", "0.2", "-M", "0.3"],
                         tmp_path_factory.mktemp("merged") / "m")
    return evaluate(out, pair[2], limit=LIMIT, log_samples=True)


def test_live_evaluation_equals_the_harness_on_the_merge_written_by_lfm_merge(pair, restore_truth):
    """The page's LA / VA / per-task numbers and its restore-stage answers for Neu-S-TIES K=0.2 M=0.3 (the
    explorer state, as a served page drives it) equal lm-eval + lmms-eval on `lfm merge`'s output."""
    from lfm.evaluate.harness import evaluate
    from lfm.explorer.state import ExplorerState

    base, tuned, suite = pair
    state = ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(base),
                          tuned_path=str(tuned), suite_path=str(suite), per_task=LIMIT)
    state.load()
    assert state.error == "" and state.source.can_evaluate, state.error
    assert state.recipe == Recipe.from_name("neu-s-ties", density=0.2, neurons=0.3)
    truth = restore_truth
    current = state.current
    assert current["label"] == state.recipe.label
    assert (current["LA"], current["VA"], current["OA"]) == (truth["LA"], truth["VA"], truth["OA"])
    assert current["tasks"] == truth["tasks"] and len(truth["tasks"]) == 7
    # the drill-down: one row per visual item, the restore stage's answers are the harness's
    gens = state.generations
    assert len(gens) == len(truth["answers"]) == 4 * LIMIT
    by_id = {a["id"]: a for a in truth["answers"]}
    for row in gens.to_dict("records"):
        assert row["restore"] == by_id[row["id"]]["generated"]
        assert row["restore_category"] == by_id[row["id"]]["category"]
        assert Path(row["image_path"]).is_file()
    # the references are the harness's too: the base LLM on the language tasks only
    refs = state.references.set_index("label")
    assert set(refs.index) == {"base", "tuned", "hard-merge"}
    base_truth = evaluate(base, suite, limit=LIMIT)
    assert refs.loc["base", "LA"] == base_truth["LA"] and base_truth["VA"] is None
    # no live background sweep on a suite (minutes of evaluations holding the model): the curves are precomputed
    assert not state.source.sweeps_live
    state.run_sweep()
    assert state.sweep is None
    # per-task n and correct counts come from the same samples: accuracy = correct / n
    from lfm.explorer.analysis import per_task_table

    table = per_task_table(current).set_index("task")
    for task, acc in truth["tasks"].items():
        assert table.loc[task, "n"] == LIMIT and table.loc[task, "accuracy"] == pytest.approx(acc)


def test_precompute_with_the_suite_writes_what_the_harness_measures(pair, restore_truth, tmp_path):
    """`lfm precompute --suite` on the real pair: its sweep.csv row of Neu-S-TIES K=0.2 M=0.3 and its
    restore-stage answers (generations.csv, images copied into the folder) are the harness's on `lfm merge`'s
    output; the results folder then serves those numbers as a lookup."""
    import pandas as pd

    from lfm.cli import main
    from lfm.explorer.results import ResultsFolder

    base, tuned, suite = pair
    out = tmp_path / "results"
    assert main(["precompute", "--base", str(base), "--tuned", str(tuned), "--suite", str(suite), "--out", str(out),
                 "--densities", "0.2", "--neurons", "0.3", "--per-task", str(LIMIT), "--quiet"]) == 0
    folder = ResultsFolder(out)
    got = folder.lookup(Recipe.from_name("neu-s-ties", density=0.2, neurons=0.3))
    assert (got["LA"], got["VA"], got["OA"]) == (restore_truth["LA"], restore_truth["VA"], restore_truth["OA"])
    gens = pd.read_csv(out / "generations.csv", keep_default_na=False)
    restore = gens[gens["stage"] == "restore"]
    by_id = {a["id"]: a for a in restore_truth["answers"]}
    assert sorted(restore["id"]) == sorted(by_id)
    for row in restore.to_dict("records"):
        assert (row["generated"], row["category"]) == (by_id[row["id"]]["generated"], by_id[row["id"]]["category"])
        assert (out / row["image"]).is_file() and row["image"].startswith("images/")


def test_a_real_pair_without_a_suite_says_evaluation_needs_one(pair):
    from lfm.explorer.live import NEEDS_SUITE, LivePair

    live = LivePair(pair[0], pair[1])
    assert not live.can_evaluate and live.eval_error == NEEDS_SUITE
    with pytest.raises(RuntimeError, match="needs a suite"):
        live.evaluate(Recipe())


def test_explore_and_precompute_refuse_a_bad_suite_in_one_line(pair, tmp_path, capsys):
    from lfm.cli import main

    base, tuned, _ = pair
    missing = tmp_path / "nope.yaml"
    assert main(["explore", "--base", str(base), "--tuned", str(tuned), "--suite", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0]
    out = tmp_path / "results"
    assert main(["precompute", "--base", str(base), "--tuned", str(tuned), "--suite", str(missing),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0] and not out.exists()


def _subset_items(suite: Path, out_dir: Path, per_task: int) -> Path:
    """The first `per_task` visual items of each task of the suite as an items file in `out_dir` (images copied
    beside it, paths relative to it)."""
    import shutil

    items = suite.parent / "items"
    (out_dir / "images").mkdir(parents=True)
    rows, seen = [], {}
    for line in (items / "visual.jsonl").read_text().splitlines():
        r = json.loads(line)
        seen[r["task"]] = seen.get(r["task"], 0) + 1
        if seen[r["task"]] <= per_task:
            shutil.copyfile(items / r["image"], out_dir / r["image"])
            rows.append(r)
    path = out_dir / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_with_an_items_file_on_the_real_pair(pair, tmp_path):
    """`lfm compare --items FILE.jsonl`: the restore stage's answers and categories equal lmms-eval's answers of
    the restore merge written by `lfm merge` (same prompts and decoding length), and the stage accuracies are
    the share of 'correct' in items.csv."""
    import pandas as pd

    from lfm.cli import main
    from lfm.evaluate.harness import evaluate

    base, tuned, suite = pair
    items = _subset_items(suite, tmp_path / "items", 2)
    out = tmp_path / "cmp"
    assert main(["compare", "--base", str(base), "--tuned", str(tuned), "--items", str(items), "-K", "0.2", "-M",
                 "0.3", "--max-new-tokens", "8", "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "items.csv", keep_default_na=False)
    assert len(table) == 8
    truth = evaluate(merged_on_disk(pair, ["--method", "neu-s-ties", "-K", "0.2", "-M", "0.3"], tmp_path / "m"),
                     suite, limit=2, log_samples=True)
    by_id = {a["id"]: a for a in truth["answers"]}
    assert set(by_id) == set(table["id"])
    for row in table.to_dict("records"):
        assert row["restore_generated"] == by_id[row["id"]]["generated"], row["id"]
        assert row["restore_category"] == by_id[row["id"]]["category"], row["id"]
    s = json.loads((out / "transitions.json").read_text())
    for stage in ("hard", "suppress", "restore"):
        assert s["stages"][stage]["accuracy"] == (table[f"{stage}_category"] == "correct").mean()
    assert s["recipe"]["items"] == str(items)


@pytest.mark.parametrize("line, what", [
    ("not json", "not JSON"),
    ('["a list"]', "expected an object"),
    ('{"id": "x", "question": "q", "choices": ["a", "b"], "image": "i.png"}', "missing answer"),
    ('{"id": "x", "question": "q", "choices": ["a", "b"], "answer": "c", "image": "i.png"}', "not one of its choices"),
    ('{"id": "x", "question": "q", "choices": "ab", "answer": "a", "image": "i.png"}', "choices must be a list"),
    ('{"id": "x", "question": "q", "choices": ["a", "b"], "answer": "a", "image": "missing.png"}', "not found"),
])
def test_compare_refuses_a_bad_items_line_before_loading_anything(pair, tmp_path, capsys, line, what):
    from lfm.cli import main

    base, tuned, suite = pair
    good = (suite.parent / "items" / "visual.jsonl").read_text().splitlines()[0]
    good = json.loads(good)
    good["image"] = str(suite.parent / "items" / good["image"])
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    out = tmp_path / "cmp"
    assert main(["compare", "--base", "/nonexistent/base", "--tuned", "/nonexistent/tuned", "--items", str(path),
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:2:" in err[0] and what in err[0], err
    assert not out.exists()


def test_tour_steps_through_on_the_real_pair(pair):
    """The guided tour on the smoke real pair: each step draws its picture from the loaded pair (the selected
    tensor's C(i), C'(i), located neurons; the stages' answers counted from the generations table)."""
    from lfm.explorer.app import ExplorerApp
    from lfm.explorer.state import ExplorerState
    from lfm.explorer.story import TOUR_STEPS
    from lfm.methods import STAGES

    base, tuned, suite = pair
    app = ExplorerApp(ExplorerState(background=False, auto_sweep=False, source_kind="pair", base_path=str(base),
                                    tuned_path=str(tuned), suite_path=str(suite), per_task=LIMIT))
    app.__panel__()
    state, tour = app.state, app.tour
    assert state.error == "" and state.generations is not None, state.error
    for i, step in enumerate(TOUR_STEPS):
        tour.step = i
        fig = tour.plot.object
        if step == "answers":
            gens = state.generations
            assert list(fig.data[0].y) == [int((gens[f"{s}_category"] == "correct").sum()) for s in STAGES]
        else:
            assert fig.layout.title.text.startswith(f"{step}: layer {state.layer} {state.module}")
        assert f"step {i + 1} of {len(TOUR_STEPS)}" in tour.where.object
    tour.back.clicks += 1
    assert tour.step == len(TOUR_STEPS) - 2
