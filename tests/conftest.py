"""Session-scoped tiny checkpoints (see tests/fixtures.py): built once per test session, lazily."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
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
