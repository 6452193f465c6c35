"""Reading many cells' files at once (study/finished.py) and hashing many cells at once (study/identities.py): the
same answers as one file / one cell at a time, and a cache that rereads only what changed."""

from __future__ import annotations

import json
import os
import time

import polars as pl
import pytest

from qlbench.results import NUMERICS
from qlbench.study import config as studylib, finished, grid
from qlbench.study.identities import cell_identities


def _files(tmp_path, frames: list[pl.DataFrame]) -> tuple[list[str], list[str]]:
    paths = []
    for i, frame in enumerate(frames):
        path = tmp_path / f"f{i}" / "row.parquet"
        path.parent.mkdir()
        frame.write_parquet(path)
        paths.append(str(path))
    return paths, [finished.stamp(p) for p in paths]


FRAMES = [pl.DataFrame({"a": [1, 2], "b": [1.0, 2.0]}),
          pl.DataFrame({"a": [3], "b": [None]}),  # b all null: a Null column in this file
          pl.DataFrame({"a": [4], "b": [4.0], "extra": ["x"]}),  # a column only this file has
          pl.DataFrame({"b": [5.0], "a": [5]}),  # the same columns in another order
          pl.DataFrame({"a": [6], "b": [6.0]})]


def one_by_one(paths):
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [2, 1, 0, 4, 3], [1, 0]])
def test_stack_equals_reading_file_by_file(tmp_path, order):
    paths, stamps = _files(tmp_path, [FRAMES[i] for i in order])
    got = finished.stack(paths, stamps, None)
    assert got.equals(one_by_one(paths).select(got.columns)) and set(got.columns) == set(one_by_one(paths).columns)
    assert got["a"].to_list() == [a for i in order for a in FRAMES[i]["a"].to_list()]


def test_cache_rereads_only_changed_files_and_keeps_order(tmp_path, monkeypatch):
    paths, stamps = _files(tmp_path, FRAMES)
    cache = tmp_path / "cache" / "cells.parquet"
    first = finished.stack(paths, stamps, cache)
    read = []
    real = finished.read_many
    monkeypatch.setattr(finished, "read_many", lambda files, *a: read.append(list(files)) or real(files, *a))
    assert finished.stack(paths, stamps, cache).equals(first) and read == []  # all from the cache
    assert finished.stack(paths, stamps, cache, ["a"])["a"].to_list() == [1, 2, 3, 4, 5, 6]
    # file 1 rewritten the way cells write (a new file renamed into place): only it is read again
    time.sleep(0.01)
    tmp = tmp_path / "new.parquet"
    pl.DataFrame({"a": [30, 31], "b": [3.5, 3.6]}).write_parquet(tmp)
    os.replace(tmp, paths[1])
    stamps[1] = finished.stamp(paths[1])
    got = finished.stack(paths, stamps, cache)
    assert read == [[paths[1]]]
    assert got["a"].to_list() == [1, 2, 30, 31, 4, 5, 6] and got["b"].to_list()[2:4] == [3.5, 3.6]
    # a subset (a cell left the grid) drops the others' rows; a lost cache table means reading everything again
    assert finished.stack(paths[3:], stamps[3:], cache)["a"].to_list() == [5, 6]
    cache.unlink()
    read.clear()
    assert finished.stack(paths, stamps, cache)["a"].to_list() == [1, 2, 30, 31, 4, 5, 6]
    assert read[0] == paths  # (then its halves: these files differ in columns)


def test_batch_identities_equal_cell_identity_for_every_study(repo_config):
    for name in repo_config["studies"]:
        study = studylib.load(repo_config, name)
        cells = grid.cells(study)
        assert cell_identities(study, cells) == [studylib.cell_identity(study, c) for c in cells], name


def _cell_files(root, study, cells, stale=(), numerics=None):
    """Rows and curves of `cells` as a cell writes them; the cells in `stale` with another config_hash and a curve
    with a column of their own (an older version's curve). `numerics`: {cell path: its row's numerics version}
    (None: a row without the column); the others' is the code's."""
    identities = dict(zip([c.path for c in cells], cell_identities(study, cells)))
    for i, cell in enumerate(cells):
        folder = grid.cell_dir(str(root), study.name, cell)
        os.makedirs(folder)
        identity, digest = identities[cell.path]
        row = pl.DataFrame({"mask": [cell.mask], "seed": [cell.seed], "status": ["ok"], "eval_loss": [2.0 + i],
                            "config_hash": ["0" * 16 if cell.path in stale else digest],
                            "settings_json": [json.dumps({**identity, "steps": 1}, default=str)],
                            "numerics": [NUMERICS]})
        if cell.path in (numerics or {}):
            version = numerics[cell.path]
            row = row.drop("numerics") if version is None else row.with_columns(numerics=pl.lit(version))
        row.write_parquet(f"{folder}/{grid.ROW}")
        curve = pl.DataFrame({"step": [1, 2, 3], "loss": [3.0 + i, 2.5 + i, 2.0 + i]})
        if cell.path in stale:
            curve = curve.with_columns(old_column=pl.lit("x"))
        curve.write_parquet(f"{folder}/{grid.CURVE}")


def test_aggregate_leaves_out_a_stale_cell_and_its_curve(tmp_path, repo_config):
    from qlbench.analysis.aggregate import aggregate

    study = studylib.load(repo_config, "micro")
    cells = grid.cells(study)
    stale = cells[1].path
    _cell_files(tmp_path, study, cells, stale={stale})
    for attempt in ("nothing cached", "cached"):
        tables, missing, stale_found = aggregate(study, str(tmp_path))
        assert missing == [] and list(stale_found) == [stale], attempt
        assert tables["cells"]["eval_loss"].to_list() == [2.0 + i for i, c in enumerate(cells) if c.path != stale]
        # the current cells' curves alone, as reading them one by one gives: no column of the stale cell's curve
        current = [f"{grid.cell_dir(str(tmp_path), study.name, c)}/{grid.CURVE}" for c in cells if c.path != stale]
        assert tables["curves"].equals(one_by_one(current)), attempt
    # a cell without a row: its curve stays out
    os.remove(f"{grid.cell_dir(str(tmp_path), study.name, cells[1])}/{grid.ROW}")
    tables, missing, stale_found = aggregate(study, str(tmp_path))
    assert missing == [stale] and not stale_found and tables["curves"].height == 3 * (len(cells) - 1)


def test_aggregate_leaves_out_rows_of_other_numerics_and_names_them(tmp_path, repo_config):
    """A row of the current settings made by other numerics (an older version, or none: before the column) is
    stale as a row of other settings is: left out of every table and named with both versions."""
    from qlbench.analysis.aggregate import aggregate

    study = studylib.load(repo_config, "micro")
    cells = grid.cells(study)
    older = {cells[0].path: None, cells[2].path: NUMERICS - 1}
    _cell_files(tmp_path, study, cells, numerics=older)
    tables, missing, stale = aggregate(study, str(tmp_path))
    assert missing == [] and stale == {cells[0].path: f"made by numerics 0, the code's are {NUMERICS}",
                                       cells[2].path: f"made by numerics {NUMERICS - 1}, the code's are {NUMERICS}"}
    assert tables["cells"]["eval_loss"].to_list() == [3.0] and tables["curves"].height == 3


@pytest.mark.parametrize("older", [(), (1,), (0, 2), (0, 1, 2)])
def test_curves_come_from_the_rows_and_from_older_cells_curve_files(tmp_path, repo_config, older):
    """A cell's row carries its training curve; a cell written before rows did keeps it in curve.parquet. curves.parquet
    is every cell's steps in the cells' order, whichever kind each cell is, cached or not."""
    from qlbench import results
    from qlbench.analysis.aggregate import aggregate

    study = studylib.load(repo_config, "micro")
    cells = grid.cells(study)
    assert len(cells) == 3
    expected = []
    for i, (cell, (identity, digest)) in enumerate(zip(cells, cell_identities(study, cells))):
        coords = {"study": study.name, **cell.coords(), "targets": "c_attn"}
        row = {**{name: None for name in results.ROW_SCHEMA}, **coords, "status": "ok", "config_hash": digest,
               "settings_json": json.dumps(identity, sort_keys=True, default=str), "numerics": results.NUMERICS}
        steps = [{"step": s, "loss": 3.0 + i - s / 10, "lr": 1e-3, "grad_norm": 1.0, "step_time_s": 0.1,
                  "grad_var": float("nan")} for s in range(i + 1)]  # curves of 1 to 3 steps
        folder = grid.cell_dir(str(tmp_path), study.name, cell)
        os.makedirs(folder)
        if i in older:  # as a cell wrote it then: the row alone, the curve in its own file
            pl.DataFrame([{**coords, **s} for s in steps], schema=results.CURVE_SCHEMA).write_parquet(
                f"{folder}/{grid.CURVE}")
            results.row_frame(row).write_parquet(f"{folder}/{grid.ROW}")
        else:
            results.row_frame(row, steps).write_parquet(f"{folder}/{grid.ROW}")
        expected += [{**coords, **s} for s in steps]
    expected = pl.DataFrame(expected, schema=results.CURVE_SCHEMA)
    for attempt in ("nothing cached", "cached"):
        tables, missing, stale = aggregate(study, str(tmp_path))
        assert not missing and not stale and results.CURVE not in tables["cells"].columns, attempt
        assert tables["curves"].equals(expected), attempt
