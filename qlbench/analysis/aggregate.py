"""Cells -> one table each: `cells.parquet` (a row per cell), `curves.parquet` (a row per training step) and
`probes.parquet` (the one-pass sensitivity estimates of the reference cells that made one).

Reads parquet only, and only the cells of the study's grid, so stale folders of an older grid never leak in.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.study import grid
from qlbench.study.config import Study


def cell_files(study: Study, results: str, name: str) -> tuple[list[Path], list[str]]:
    """The study's existing `name` files, and the cell paths that lack one."""
    found, missing = [], []
    for cell in grid.cells(study):
        path = Path(grid.cell_dir(results, study.name, cell)) / name
        (found if path.exists() else missing).append(path if path.exists() else cell.path)
    return found, missing


def read_all(paths: list[Path]) -> pl.DataFrame:
    if not paths:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


TABLES = {"cells": grid.ROW, "curves": grid.CURVE, "probes": grid.PROBE}


def aggregate(study: Study, results: str) -> tuple[dict[str, pl.DataFrame], list[str]]:
    """{table name: its rows over the grid's finished cells}, and the cells without a row."""
    _, missing = cell_files(study, results, grid.ROW)
    return {name: read_all(cell_files(study, results, file)[0]) for name, file in TABLES.items()}, missing
