"""A study's finished cells in one pass: one `stat` per cell says which have a row, and the files of many cells are
read into one table by polars at once (not one open per file), then kept in a cache beside the results.

The cache (`results/<study>/.cache/<table>.parquet`) holds each file's rows under its path, and
`<table>.files.parquet` the identity (inode, mtime, size) of every file read. A later read takes from the cache
whatever file is unchanged and reads only new or rewritten ones: cells write every file by renaming a fresh one
into place, so a rewritten file always has a new identity. The cache is a convenience: lost, unreadable or
unwritable, the files are read again.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from qlbench.study import grid

CACHE = ".cache"
_FILE, _STAMP, _ORDER = "_file", "_stamp", "_order"
_MISMATCH = (pl.exceptions.SchemaError, pl.exceptions.ColumnNotFoundError, pl.exceptions.ComputeError)


def stamp(path: str) -> str | None:
    """The identity of a file as it is now (None: there is none): what the cache is keyed on."""
    try:
        s = os.stat(path)
    except OSError:
        return None
    return f"{s.st_ino}:{s.st_mtime_ns}:{s.st_size}"


def cell_files(results: str, study: str, cells, name: str) -> list[str]:
    """The absolute path of file `name` in each cell's folder (the cache keys stay valid whatever the cwd)."""
    root = os.path.abspath(results)
    return [f"{grid.cell_dir(root, study, c)}/{name}" for c in cells]


def cache_path(results: str, study: str, table: str) -> Path:
    return Path(results) / study / CACHE / f"{table}.parquet"


def stack(files: list[str], stamps: list[str], cache: Path | None, columns: list[str] | None = None
          ) -> pl.DataFrame:
    """The tables of `files` (all existing, `stamps` their identities) one under another, in the order given;
    `columns`: only these (the cache still gets every column of what is read)."""
    key = pl.DataFrame({_FILE: files, _STAMP: stamps, _ORDER: range(len(files))},
                       schema={_FILE: pl.String, _STAMP: pl.String, _ORDER: pl.Int64})
    if not files:
        return pl.DataFrame()
    known = _read(cache.with_suffix(".files.parquet")) if cache else None
    fresh = key if known is None else key.join(known, on=[_FILE, _STAMP], how="anti")
    table, in_order = None, False
    if fresh.is_empty():  # nothing new: the cache alone answers
        table = _read(cache, None if columns is None else [_FILE, *columns])
    if table is None:
        unchanged = key.join(fresh, on=_FILE, how="anti")
        kept = _read(cache) if cache is not None and not unchanged.is_empty() else None
        if kept is None:  # no cache, or its table is gone: read every file
            fresh, parts = key, []
        else:
            parts = [kept.join(unchanged.select(_FILE), on=_FILE, how="semi")]
        parts = [p for p in parts + [read_many(fresh[_FILE].to_list())] if p.width]
        table = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame({_FILE: []}, schema={_FILE: pl.String})
        table = table.rechunk()  # read_many gives a chunk per file: 10,000 chunks make every later step slow
        in_order = kept is None  # every file read now, in the order given: nothing to put in order below
        if cache is not None:
            _write(cache, table, key.select(_FILE, _STAMP))
        if columns is not None:
            table = table.select(_FILE, *[c for c in columns if c in table.columns])
    if in_order:
        return table.drop(_FILE)
    # files of other cells the cache may also hold drop out here; rows keep their files' order, and theirs within
    order = table.join(key.select(_FILE, _ORDER), on=_FILE, how="inner", maintain_order="left")
    return order.sort(_ORDER, maintain_order=True).drop(_FILE, _ORDER)


def read_many(files: list[str]) -> pl.DataFrame:
    """Many parquet files in one read, each row with its file's path; files whose columns differ (an extra
    measurement, a column that is null in one file) are read in halves and stacked as per-file reads would be."""
    if not files:
        return pl.DataFrame()
    try:
        return pl.read_parquet(files, include_file_paths=_FILE)
    except _MISMATCH:
        if len(files) == 1:
            raise
        half = len(files) // 2
        return pl.concat([read_many(files[:half]), read_many(files[half:])], how="diagonal_relaxed")


def _read(path: Path, columns: list[str] | None = None) -> pl.DataFrame | None:
    try:
        return pl.read_parquet(path, columns=columns)
    except (OSError, pl.exceptions.PolarsError):
        return None


def _write(cache: Path, table: pl.DataFrame, stamps: pl.DataFrame) -> None:
    """The table first, the stamps last: a reader that sees new stamps finds the table they describe."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        for frame, path in ((table, cache), (stamps, cache.with_suffix(".files.parquet"))):
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            frame.write_parquet(tmp)
            os.replace(tmp, path)
    except OSError:
        pass  # a read-only results tree: no cache, the same answer
