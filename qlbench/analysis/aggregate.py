"""Cells -> one table each: `cells.parquet` (a row per cell), `curves.parquet` (a row per training step) and
`probes.parquet` (the one-pass sensitivity estimates of the reference cells that made one).

Reads parquet only, and only the cells of the study's grid, so folders of an older grid never leak in; a row made
under other settings than the config's (its `config_hash` differs) is left out and named, never mixed in.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.study import grid
from qlbench.study.config import Study, cell_identity, changed_settings


def read_all(paths: list[Path]) -> pl.DataFrame:
    if not paths:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


TABLES = {"cells": grid.ROW, "curves": grid.CURVE, "probes": grid.PROBE}


def aggregate(study: Study, results: str) -> tuple[dict[str, pl.DataFrame], list[str], dict[str, str]]:
    """{table name: its rows over the grid's current cells}, the cells without a row, and the cells whose row was
    made under other settings ({path: what changed}) — left out, so no table mixes settings."""
    folders = {cell: Path(grid.cell_dir(results, study.name, cell)) for cell in grid.cells(study)}
    done = [cell for cell, folder in folders.items() if (folder / grid.ROW).exists()]
    finished = set(done)
    missing = [cell.path for cell in folders if cell not in finished]
    rows = read_all([folders[cell] / grid.ROW for cell in done])
    identities = [cell_identity(study, cell) for cell in done]
    stale = {cell.path: changed_settings(settings_json, identity)
             for cell, (identity, chash), row_hash, settings_json
             in zip(done, identities, rows["config_hash"] if done else [], rows["settings_json"] if done else [])
             if row_hash != chash}
    current = [cell for cell in done if cell.path not in stale]
    tables = {"cells": rows.filter(~pl.Series([c.path in stale for c in done], dtype=pl.Boolean)) if stale else rows}
    for name, file in TABLES.items():
        if name != "cells":
            tables[name] = read_all([folders[cell] / file for cell in current if (folders[cell] / file).exists()])
    return tables, missing, stale
