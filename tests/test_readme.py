"""The README states what the code does: its organism numbers are the report's, its commands exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_regression_readme_organism_tables_are_the_shipped_report():
    """Regression check: results.md is what `lfm organism report` wrote (the README quotes it)."""
    # `lfm organism report` writes results.md; tests/test_organism.py checks the checkpoints reproduce results.json
    report = (ROOT / "lfm" / "data" / "organism" / "results.md").read_text().strip()
    assert report in README


def test_readme_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", README, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_regression_readme_real_pair_tables_are_the_study_report():
    """Regression check: lfm/data/realpair/results.md is what `lfm realpair study` wrote (the README quotes it)."""
    report = (ROOT / "lfm" / "data" / "realpair" / "results.md").read_text().strip()
    assert report in README


def test_regression_readme_speed_table_is_the_recorded_run():
    """Regression check: the README's speed table is benchmarks/results/merge_speed*.json as
    `python benchmarks/merge_speed.py --table` renders it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_speed", ROOT / "benchmarks" / "merge_speed.py")
    merge_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge_speed)
    assert merge_speed.readme_table() in README
