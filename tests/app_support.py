"""Shared by the explorer tests: an evaluable organism pair (the shipped one, or a few-step one trained
into a temporary folder when data/organism has no checkpoints yet)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "organism"


def organism_pair(tmp_root: Path) -> tuple[Path, Path]:
    """(base, tuned) of an organism that `lfm.organism.evaluate` can score."""
    if (SHIPPED / "base" / "config.json").exists() and (SHIPPED / "tuned" / "config.json").exists():
        return SHIPPED / "base", SHIPPED / "tuned"
    out = tmp_root / "organism"
    if not (out / "tuned" / "config.json").exists():
        subprocess.run([sys.executable, "-m", "lfm.cli", "organism", "train", "--out", str(out), "--steps", "3",
                        "--tune-steps", "3"], check=True, capture_output=True, timeout=300)
    return out / "base", out / "tuned"
