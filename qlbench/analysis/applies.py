"""When a study gets an analysis: the conditions an analysis's declaration names (`applies=`), on the study's grid.

One home for each condition: the workflow's `final_targets` and `qlbench analyze` read them here. A new condition is
a function below, added to CONDITIONS.
"""

from __future__ import annotations

from qlbench.study import masks as masklang


def _masks(study) -> set[str]:
    return {m for ms in study.masks.values() for m in ms}


def references(study) -> bool:
    """Quantized cells and their 16-bit references."""
    return 16 in study.bits and min(study.bits) < 16


def bounds(study) -> bool:
    """≥3 (rank, bits) points of mask `all` with a 16-bit reference."""
    quantized = [b for b in study.bits if b < 16]
    return 16 in study.bits and "all" in _masks(study) and len(quantized) * len(study.ranks) >= 3


def sensitivity(study) -> bool:
    """Single-block or single-module masks (study/masks.py's grammar) with a reference (`none`, or 16 bits)."""
    found = _masks(study)
    return any(masklang.single_block_or_module(m) for m in found) and ("none" in found or 16 in study.bits)


def deploy(study) -> bool:
    """A serving format (`deploy`) the merged models are requantized in."""
    return study.settings.get("deploy") is not None


def adapted(study) -> bool:
    """A record of `qlbench adapt`'s rounds (results/STUDY/adapt/rounds.parquet)."""
    from pathlib import Path

    return (Path(study.results) / study.name / "adapt" / "rounds.parquet").exists()


CONDITIONS = {"always": lambda study: True, "references": references, "bounds": bounds, "sensitivity": sensitivity,
              "deploy": deploy, "adapted": adapted}


def applies(condition: str, study) -> bool:
    if condition not in CONDITIONS:
        raise ValueError(f"applies={condition!r}: no such condition; conditions: {', '.join(CONDITIONS)}")
    return CONDITIONS[condition](study)
