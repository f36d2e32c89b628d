"""Session-scoped tiny checkpoints (see tests/fixtures.py): built once per test session, lazily."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# a machine that has built the real pair (`make realpair`) runs the same tests as one that has not: commands
# given no pair open the organism (lfm.default_pair); tests of that rule set it per subprocess
os.environ["LFM_DEFAULT_PAIR"] = "organism"
sys.path.insert(0, str(Path(__file__).parent))

from lfm.cli import let_idle_threads_sleep  # noqa: E402

let_idle_threads_sleep()  # as the `lfm` command does; must come before torch is imported

from fixtures import TinyZoo  # noqa: E402


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> TinyZoo:
    """All tiny checkpoints (bases, tuned LLaVA/LLaVA-Next/LLM, sharded, bf16, broken), built on first use."""
    return TinyZoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def organism() -> tuple[Path, Path]:
    """(base, tuned) directories of the shipped organism (or $LFM_ORGANISM_DIR); skips when absent."""
    from lfm.organism import ORGANISM_DIR

    org = Path(os.environ.get("LFM_ORGANISM_DIR", ORGANISM_DIR))
    base, tuned = org / "base", org / "tuned"
    if not (tuned / "config.json").exists():
        pytest.skip(f"organism checkpoints not found in {org} (run `lfm organism train`)")
    return base, tuned


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """(path, HF state dict it encodes, HF config fields) of a tiny llama GGUF (fixtures.write_tiny_gguf)."""
    pytest.importorskip("gguf")
    from fixtures import write_tiny_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    expected, fields = write_tiny_gguf(path)
    return path, expected, fields


@pytest.fixture(scope="session")
def smoke_pair(tiny_gguf, tmp_path_factory):
    """(root, build result) of the real pair's 'smoke' build on the tiny GGUF (offline, seconds): base, tuned
    LLaVA + processor, and its suite (root/suite/suite.yaml, root/suite/items/visual.jsonl)."""
    from lfm.realpair import data
    from lfm.realpair.build import build
    from lfm.realpair.config import preset

    if not (data.COUNTRIES.exists() and data.WORDNET.exists()):
        pytest.skip("Debian miscfiles / wordnet-base not installed (make install installs them)")
    root = tmp_path_factory.mktemp("realpair")
    return root, build(root, preset("smoke"), gguf=tiny_gguf[0], log=lambda m: None)
