"""lfm.evaluate harness adapters: real lm-eval and lmms-eval runs on the organism's local tasks, the
cross-check against the organism's own evaluation, suites, the paper suite's offline error, `lfm eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml




@pytest.fixture(scope="module")
def tuned_model(organism):
    from lfm.evaluate.models import load_eval_model

    return load_eval_model(organism[1])


def test_organism_suite_runs_both_harnesses(tuned_model):
    from lfm.evaluate.harness import evaluate
    from lfm.evaluate.suites import ORGANISM

    res = evaluate(tuned_model, "organism", limit=6)
    assert set(res["tasks"]) == {t.label for t in ORGANISM.language + ORGANISM.visual}
    assert all(0.0 <= v <= 1.0 for v in res["tasks"].values())
    lang = [res["tasks"][t.label] for t in ORGANISM.language]
    vis = [res["tasks"][t.label] for t in ORGANISM.visual]
    assert res["LA"] == pytest.approx(sum(lang) / len(lang))
    assert res["VA"] == pytest.approx(sum(vis) / len(vis))
    assert res["OA"] == pytest.approx((res["LA"] + res["VA"]) / 2)
    assert res["harness"]["lm_eval"] and res["harness"]["lmms_eval"]


def test_harness_agrees_with_organism_evaluate(tuned_model):
    """Same model, same items: the harness accuracies equal lfm.organism.evaluate's, task by task."""
    from lfm.evaluate.harness import evaluate
    from lfm.organism import load_items
    from lfm.organism.evaluate import evaluate as organism_evaluate

    n = 12
    res = evaluate(tuned_model, "organism", limit=n)
    items = {}
    for kind in ("language", "visual"):
        per_task: dict[str, list] = {}
        for it in load_items(kind):
            per_task.setdefault(it.task, []).append(it)
        items[kind] = [it for group in per_task.values() for it in group[:n]]
    ref = organism_evaluate((tuned_model.model, tuned_model.processor), items=items)
    assert set(ref["tasks"]) == set(res["tasks"])
    for task, acc in ref["tasks"].items():
        assert res["tasks"][task] == pytest.approx(acc), task
    assert res["LA"] == pytest.approx(ref["LA"]) and res["VA"] == pytest.approx(ref["VA"])


def test_plain_llm_gets_language_only(organism):
    from lfm.evaluate.harness import evaluate

    res = evaluate(organism[0], "organism", limit=3)
    assert res["VA"] is None and res["OA"] is None and 0 <= res["LA"] <= 1
    assert set(res["tasks"]) == {"arithmetic", "facts", "reading", "noimage"}


def test_text_model_shares_weights_with_the_mllm(tuned_model):
    import torch

    lm = tuned_model.language_model()
    w = lm.model.layers[0].mlp.up_proj.weight
    assert w.data_ptr() == tuned_model.model.model.language_model.layers[0].mlp.up_proj.weight.data_ptr()
    assert not any(p.is_meta for p in lm.parameters())
    assert isinstance(w, torch.nn.Parameter)


def test_paper_suite_names_the_papers_tasks():
    from lfm.evaluate.suites import PAPER

    assert [t.label for t in PAPER.language] == ["RACE", "CommonsenseQA", "PIQA", "OpenBookQA", "ARC-E", "ARC-C", "GSM8K"]
    assert [t.label for t in PAPER.visual] == ["MME", "MMMU", "ScienceQA-IMG", "MMBench-EN", "MMBench-CN", "GQA"]
    shots = {t.label: t.num_fewshot for t in PAPER.language}
    assert shots.pop("GSM8K") == 8 and set(shots.values()) == {0}
    assert next(t for t in PAPER.language if t.label == "GSM8K").task == "gsm8k_cot"  # chain-of-thought


def _harness_yaml(root: Path, task: str) -> dict:
    """The installed harness YAML defining `task` (following one `include`)."""
    loader = yaml.SafeLoader
    loader.add_constructor("!function", lambda l, n: None)
    for path in root.rglob("*.yaml"):
        try:
            data = yaml.load(path.read_text(), Loader=loader) or {}
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and data.get("task") == task:
            if "include" in data and "dataset_path" not in data:
                inc = yaml.load((path.parent / data["include"]).read_text(), Loader=loader)
                data = {**inc, **data}
            return data
    raise AssertionError(f"task {task} not found under {root}")


def test_paper_suite_dataset_ids_match_the_installed_harnesses():
    import lm_eval
    import lmms_eval

    from lfm.evaluate.suites import PAPER

    for specs, pkg in ((PAPER.language, lm_eval), (PAPER.visual, lmms_eval)):
        root = Path(pkg.__file__).parent / "tasks"
        for spec in specs:
            assert _harness_yaml(root, spec.task)["dataset_path"] == spec.dataset, spec.task


def test_paper_suite_fails_clearly_offline(monkeypatch, organism, tmp_path):
    from lfm.cli import main
    from lfm.evaluate.harness import evaluate
    from lfm.evaluate.suites import DatasetsUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached
    with pytest.raises(DatasetsUnavailable) as err:
        evaluate(organism[1], "paper")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "--suite organism" in msg
    for ds in ("EleutherAI/race", "openai/gsm8k", "lmms-lab-encoder/ScienceQA", "lmms-lab-encoder/MMBench"):
        assert ds in msg
    assert main(["eval", str(organism[1]), "--suite", "paper"]) == 2


def test_suite_yaml_file(tmp_path, tuned_model):
    from lfm.evaluate.harness import evaluate
    from lfm.evaluate.suites import TASKS_DIR, get_suite

    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"name": "mine", "include_path": [str(TASKS_DIR / "lm_eval")],
                                 "lmms_include_path": [str(TASKS_DIR / "lmms_eval")],
                                 "language": ["organism_facts"], "visual": [{"task": "organism_colour", "label": "col"}]}))
    suite = get_suite(f)
    assert suite.include_defaults is False and suite.task_names() == ["organism_facts", "organism_colour"]
    res = evaluate(tuned_model, suite, limit=2)
    assert set(res["tasks"]) == {"organism_facts", "col"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlangauge: [a]\n")
    with pytest.raises(ValueError, match="langauge"):
        get_suite(bad)
    with pytest.raises(ValueError, match="unknown suite"):
        get_suite("nope")


def test_cli_eval_writes_results_json(organism, tmp_path, capsys):
    from lfm.cli import main

    out = tmp_path / "r.json"
    assert main(["eval", str(organism[1]), "--suite", "organism", "--limit", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"LA", "VA", "OA", "tasks", "harness"} <= set(res)
    assert "OA" in capsys.readouterr().out
