"""Sweeps: the grid, resume, the Ray executor, on the organism."""

from __future__ import annotations

import json

import pytest

from lfm.methods import Recipe


def test_parse_values():
    from lfm.evaluate.sweep import parse_values

    assert parse_values("0.05:0.9:0.05") == [round(0.05 * i, 10) for i in range(1, 19)]
    assert parse_values("0:0.5:0.1") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert parse_values("0.3,0.1,0.1") == [0.1, 0.3]
    with pytest.raises(ValueError, match="start:stop:step"):
        parse_values("0.1:0.2")


def test_grid_applies_k_and_m_only_where_they_matter():
    from lfm.evaluate.sweep import grid, point_id

    rs = grid(["neu-s-ties", "ties", "ta", "hard"], [0.1, 0.2], [0.0, 0.3], alpha=1.0)
    labels = [r.label for r in rs]
    assert labels.count("hard-merge") == 1 and sum(lbl.startswith("TaskA") for lbl in labels) == 1
    assert sum(lbl.startswith("TIES") for lbl in labels) == 2
    assert sum(lbl.startswith("Neu-S-TIES") for lbl in labels) == 4
    assert len({point_id(r) for r in rs}) == len(rs)


def test_sweep_writes_table_and_resumes(organism, tmp_path):
    from lfm.evaluate.pareto import best_point
    from lfm.evaluate.sweep import load_results, run_sweep

    out = tmp_path / "sweep"
    r1, r2 = Recipe(density=0.2, neurons=0.0), Recipe(density=0.2, neurons=0.3)
    df = run_sweep(*organism, [r1], out_dir=out, limit=2, references=False, progress=False)
    assert len(df) == 1 and {"LA", "VA", "OA", "label", "density", "neurons", "task:colour"} <= set(df.columns)
    first = json.loads((out / "points.jsonl").read_text().splitlines()[0])
    with pytest.raises(FileExistsError, match="--resume"):
        run_sweep(*organism, [r1, r2], out_dir=out, limit=2, references=False, progress=False)
    with pytest.raises(ValueError, match="different settings"):
        run_sweep(*organism, [r1, r2], out_dir=out, limit=3, references=False, resume=True, progress=False)
    df = run_sweep(*organism, [r1, r2], out_dir=out, limit=2, references=False, resume=True, progress=False)
    lines = (out / "points.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == first  # the finished point was not redone
    assert list(df["neurons"]) == [0.0, 0.3]
    for f in ("results.csv", "results.json"):
        assert len(load_results(out / f)) == 2
    assert best_point(df)["OA"] == df["OA"].max()


def test_sweep_references_and_cli_report(organism, tmp_path, capsys):
    from lfm.cli import main

    out = tmp_path / "s"
    assert main(["sweep", "--base", str(organism[0]), "--tuned", str(organism[1]), "--method", "hard",
                 "--suite", "organism", "--limit", "2", "--out", str(out), "--quiet", "--report"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["point"] for r in rows][:3] == ["base", "tuned", "hard"] and len(rows) == 4
    assert rows[3]["method"] == "hard" and (rows[3]["LA"], rows[3]["VA"]) == (rows[2]["LA"], rows[2]["VA"])
    base = rows[0]
    assert base["VA"] is None and base["LA"] is not None
    assert main(["sweep", "--report", "--out", str(out)]) == 0
    assert "Pareto front" in capsys.readouterr().out


@pytest.mark.slow
def test_ray_executor(organism, tmp_path):
    ray = pytest.importorskip("ray")
    from lfm.evaluate.sweep import run_sweep

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        recipes = [Recipe(density=0.2, neurons=0.0), Recipe(density=0.2, neurons=0.3)]
        df = run_sweep(*organism, recipes, out_dir=tmp_path / "ray", executor="ray", workers=2, limit=2,
                       references=False, progress=False)
        local = run_sweep(*organism, recipes, out_dir=tmp_path / "local", limit=2, references=False, progress=False)
    finally:
        ray.shutdown()
    assert not ray.is_initialized()
    got = df.set_index("point")[["LA", "VA", "OA"]].sort_index()
    want = local.set_index("point")[["LA", "VA", "OA"]].sort_index()
    assert got.equals(want)
