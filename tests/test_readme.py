"""The README is a front door whose links lead somewhere; the chapters it points to state what the code does:
their organism, real-pair and speed numbers are the reports', their commands exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_regression_organism_tables_are_the_shipped_report():
    """Regression check: results.md is what `lfm organism report` wrote (docs/organism.md quotes it)."""
    # `lfm organism report` writes results.md; tests/test_organism.py checks the checkpoints reproduce results.json
    report = (ROOT / "lfm" / "data" / "organism" / "results.md").read_text().strip()
    assert report in (ROOT / "docs" / "organism.md").read_text()


def test_readme_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", README, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_is_a_front_door_whose_links_exist():
    """At most ~200 lines; every relative link (docs, notebooks, the screenshot) names a file of the tree."""
    assert len(README.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith("http")]
    assert len(local) > 8
    for link in local:
        assert (ROOT / link).exists(), link


@pytest.mark.parametrize("report", ["results.md", "replay/results.md", "overshoot/results.md"])
def test_regression_real_pair_tables_are_the_study_report(report):
    """Regression check: lfm/data/realpair/results.md (the paper preset), replay/results.md and
    overshoot/results.md are what `lfm realpair study` wrote; docs/realpair.md quotes all three."""
    text = (ROOT / "lfm" / "data" / "realpair" / report).read_text().strip()
    assert text in (ROOT / "docs" / "realpair.md").read_text()


def test_regression_speed_table_is_the_recorded_run():
    """Regression check: docs/benchmarks.md's speed table is benchmarks/results/merge_speed*.json as
    `python benchmarks/merge_speed.py --table` renders it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_speed", ROOT / "benchmarks" / "merge_speed.py")
    merge_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge_speed)
    assert merge_speed.readme_table() in (ROOT / "docs" / "benchmarks.md").read_text()


def test_regression_readme_real_pair_table_is_the_study_report():
    """Regression check: README's real-pair table is lfm/data/realpair/results.json as
    `lfm.realpair.study.readme_table` renders it (the study writes the report; the README reads it)."""
    import json

    from lfm.realpair.study import readme_table

    report = json.loads((ROOT / "lfm" / "data" / "realpair" / "results.json").read_text())
    assert readme_table(report) in README


def test_regression_readme_families_line_is_the_table():
    """Regression check: README's supported / refused line is `lfm.families.families_summary()` (the table's)."""
    from lfm.families import families_summary

    assert families_summary() in README.replace("\n", " ")
