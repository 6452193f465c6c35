"""Cells -> one table each: `cells.parquet` (a row per cell), `curves.parquet` (a row per training step, from the
curve each row carries) and `probes.parquet` (the one-pass sensitivity estimates of the reference cells that made
one).

Reads parquet only, and only the cells of the study's grid, so folders of an older grid never leak in; a row made
under other settings than the config's (its `config_hash` differs) is left out and named, never mixed in. One stat
per file and one vectorised read of whatever changed since the last read (study/finished.py): 10,000 cells
aggregate in seconds.
"""

from __future__ import annotations

import polars as pl

from qlbench.results import COORDS, CURVE, CURVE_SCHEMA, PROBE_SCHEMA, curve_frame
from qlbench.study import finished, grid
from qlbench.study.config import Study, changed_settings
from qlbench.study.identities import cell_identities


def aggregate(study: Study, results: str) -> tuple[dict[str, pl.DataFrame], list[str], dict[str, str]]:
    """{table name: its rows over the grid's current cells}, the cells without a row, and the cells whose row was
    made under other settings ({path: what changed}) — left out, so no table mixes settings."""
    cells = grid.cells(study)
    done, rows = _existing(results, study.name, cells, grid.ROW)
    finished_at = {cell for cell, _ in done}
    missing = [cell.path for cell in cells if cell not in finished_at]
    table = _stack(results, study.name, "cells", done)
    stale = {}
    if done:
        identities = cell_identities(study, [cell for cell, _ in done])
        current_hash = pl.Series([h for _, h in identities], dtype=pl.String)
        is_stale = table["config_hash"].ne_missing(current_hash) if "config_hash" in table.columns else \
            pl.Series([True] * len(done))
        for i in is_stale.arg_true().to_list():
            stale[done[i][0].path] = changed_settings(table["settings_json"][i], identities[i][0])
        if stale:
            table = table.filter(~is_stale)
    current = [cell for cell, _ in done if cell.path not in stale]
    tables = {"cells": table.drop(CURVE, strict=False), "curves": _curves(results, study.name, table, current)}
    if study.tree.eval.probe_bits:
        probed = _existing(results, study.name, current, grid.PROBE)[0]
        tables["probes"] = _stack(results, study.name, "probes", probed)
    else:  # no cell of this study probes: 0 rows each
        tables["probes"] = pl.DataFrame(schema=PROBE_SCHEMA)
    return tables, missing, stale


def _curves(results: str, study: str, rows: pl.DataFrame, cells: list) -> pl.DataFrame:
    """Every step of every row's curve, in the rows' order; a row written before rows carried their curves (no
    `curve`) gives the steps of the curve.parquet in its folder."""
    if rows.is_empty():
        return pl.DataFrame(schema=CURVE_SCHEMA)
    inline = rows[CURVE].is_not_null() if CURVE in rows.columns else pl.Series([False] * rows.height)
    if inline.all():
        return curve_frame(rows)
    older = [cell for cell, has in zip(cells, inline) if not has]
    read = _stack(results, study, "curves", _existing(results, study, older, grid.CURVE)[0])
    if not inline.any():
        return read
    # both kinds (cells added to a study after an upgrade): each cell's steps where its row stands
    at = rows.select(list(COORDS)).with_row_index("_at")
    both = pl.concat([curve_frame(rows.filter(inline)), read], how="diagonal_relaxed")
    return both.join(at, on=list(COORDS), how="left", nulls_equal=True, maintain_order="left").sort(
        "_at", maintain_order=True).drop("_at")


def _existing(results: str, study: str, cells, name: str) -> tuple[list[tuple], list[str]]:
    """[(cell, (path, stamp))] of the cells whose file `name` exists: one stat each, no separate existence check."""
    paths = finished.cell_files(results, study, cells, name)
    found = [(cell, (path, stamp)) for cell, path in zip(cells, paths) if (stamp := finished.stamp(path))]
    return found, paths


def _stack(results: str, study: str, table: str, found: list[tuple]) -> pl.DataFrame:
    return finished.stack([p for _, (p, _) in found], [s for _, (_, s) in found],
                          finished.cache_path(results, study, table))
