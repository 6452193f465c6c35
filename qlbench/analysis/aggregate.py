"""Cells -> one table each: `cells.parquet` (a row per cell), `curves.parquet` (a row per training step, from the
curve each row carries) and `probes.parquet` (the one-pass sensitivity estimates of the reference cells that made
one).

Reads parquet only, and only the cells of the study's grid, so folders of an older grid never leak in; a row made
under other settings than the config's (its `config_hash` differs), or by other numerics (`results.NUMERICS`), is
left out and named, never mixed in. One stat per file and one vectorised read of whatever changed since the last
read (study/finished.py): 10,000 cells aggregate in seconds.
"""

from __future__ import annotations

import polars as pl

from qlbench.errors import QlbenchError
from qlbench.results import COORDS, CURVE, CURVE_SCHEMA, NUMERICS, PROBE_SCHEMA, curve_frame, numerics_stale
from qlbench.study import finished, grid
from qlbench.study.config import Study, changed_settings
from qlbench.study.identities import cell_identities


def aggregate(study: Study, results: str, corrupt: dict[str, str] | None = None
              ) -> tuple[dict[str, pl.DataFrame], list[str], dict[str, str]]:
    """{table name: its rows over the grid's current cells}, the cells without a row, and the cells whose row was
    made under other settings ({path: what changed}) — left out, so no table mixes settings.
    A row or curve that cannot be read (or is not one) is left out and named in `corrupt` ({cell: file and
    reason}); without `corrupt`, the first one raises a one-line QlbenchError."""
    bad: dict[str, str] = {}
    cells = grid.cells(study)
    done, rows = _existing(results, study.name, cells, grid.ROW)
    table = _stack(results, study.name, "cells", done, bad, finished.row_required())
    done = [(cell, found) for cell, found in done if found[0] not in bad]
    finished_at = {cell for cell, _ in done}
    missing = [cell.path for cell in cells if cell not in finished_at]
    stale = {}
    if done:
        identities = cell_identities(study, [cell for cell, _ in done])
        current_hash = pl.Series([h for _, h in identities], dtype=pl.String)
        is_stale = table["config_hash"].ne_missing(current_hash) if "config_hash" in table.columns else \
            pl.Series([True] * len(done))
        numerics = table["numerics"] if "numerics" in table.columns else pl.Series([None] * len(done), dtype=pl.Int64)
        other_numerics = numerics.fill_null(0).ne(NUMERICS)  # a row without the column: numerics 0
        for i in is_stale.arg_true().to_list():
            stale[done[i][0].path] = changed_settings(table["settings_json"][i], identities[i][0])
        for i in (other_numerics & ~is_stale).arg_true().to_list():
            stale[done[i][0].path] = numerics_stale(numerics[i])
        is_stale = is_stale | other_numerics
        if stale:
            table = table.filter(~is_stale)
    current = [cell for cell, _ in done if cell.path not in stale]
    tables = {"cells": table.drop(CURVE, strict=False), "curves": _curves(results, study.name, table, current, bad)}
    if study.tree.eval.probe_bits:
        probed = _existing(results, study.name, current, grid.PROBE)[0]
        tables["probes"] = _stack(results, study.name, "probes", probed, bad)
    else:  # no cell of this study probes: 0 rows each
        tables["probes"] = pl.DataFrame(schema=PROBE_SCHEMA)
    by_cell = {f"{cell.path}": f"{path}: {bad[path]}" for cell, path in zip(cells, rows) if path in bad}
    by_cell.update({f: f"{f}: {why}" for f, why in bad.items() if f not in set(rows)})  # curves, probes
    if bad and corrupt is None:
        first = next(iter(by_cell.values()))
        raise QlbenchError(f"{len(bad)} unreadable result files (first: {first}); rerun their cells")
    if corrupt is not None:
        corrupt.update(by_cell)
    return tables, missing, stale


def _curves(results: str, study: str, rows: pl.DataFrame, cells: list, bad: dict) -> pl.DataFrame:
    """Every step of every row's curve, in the rows' order; a row written before rows carried their curves (no
    `curve`) gives the steps of the curve.parquet in its folder."""
    if rows.is_empty():
        return pl.DataFrame(schema=CURVE_SCHEMA)
    inline = rows[CURVE].is_not_null() if CURVE in rows.columns else pl.Series([False] * rows.height)
    if inline.all():
        return curve_frame(rows)
    older = [cell for cell, has in zip(cells, inline) if not has]
    read = _stack(results, study, "curves", _existing(results, study, older, grid.CURVE)[0], bad,
                  {c: CURVE_SCHEMA[c] for c in ("step", "loss")})
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


def _stack(results: str, study: str, table: str, found: list[tuple], bad: dict, required: dict | None = None,
           ) -> pl.DataFrame:
    return finished.stack([p for _, (p, _) in found], [s for _, (_, s) in found],
                          finished.cache_path(results, study, table), corrupt=bad, required=required,
                          one_row=table == "cells")
