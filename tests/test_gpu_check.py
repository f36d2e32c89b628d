"""benchmarks/gpu_check.py, the GPU check's one command, run as `make test` runs it: --device cpu --size tiny.

Real subprocesses (the script, its children, `lfm merge`); what is checked is what the device run relies on:
the pair it generates is a Llama base and a LLaVA-Next tuned whose language model has the base's shapes, every
merge and the ResidentPair part report their numbers, outputs and the generated pair are removed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_at_tiny_size_on_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--out", str(out),
                           "--work", str(work)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check_tiny_cpu.json").read_text())
    assert report["machine"]["device"] == "cpu" and "tests" not in report  # the gpu tests: on a GPU only
    assert set(report["merges"]) == {"TIES K=0.2", "Neu-S-TIES K=0.2 M=0.3", "DARE K=0.2", "copy floor"}
    for label, row in report["merges"].items():
        assert "error" not in row, (label, row)
        assert row["seconds"] >= row["merge_seconds"] > 0 and row["peak_rss_mib"] > 0
        assert row["output_bytes"] > 0.9 * report["pair"]["tuned"], label  # a whole model was written
    resident = report["resident"]
    assert resident["direct_path"] and resident["device"] == "cpu" and resident["n_tensors_viewed"] == 14
    assert not work.exists()  # the pair and every output were removed


def test_gpu_check_pair_is_llama_base_and_llava_next_tuned(tmp_path):
    """The generated pair opens as an lfm pair (every LM tensor matched, the tuned = base + small noise), and
    transformers loads the tuned directory as LLaVA-Next."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from transformers import AutoModelForImageTextToText

    import lfm

    dirs = gpu_check.build_pair(tmp_path, "tiny", "cpu")
    pair = lfm.open_pair(dirs["base"], dirs["tuned"])
    assert len(pair.entries) == 2 * 9 + 3  # 9 tensors per layer, embeddings, final norm, lm_head
    model = AutoModelForImageTextToText.from_pretrained(dirs["tuned"])
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    for entry in pair.entries:
        delta = pair.tuned.get(entry.tuned_key).float() - pair.base.get(entry.base_key).float()
        assert float(delta.abs().max()) < 0.01 and (entry.name.endswith("norm.weight") or delta.abs().max() > 0), entry.name
