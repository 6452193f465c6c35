"""A study's finished cells in one pass: one `stat` per cell says which have a row, and the files of many cells are
read into one table by polars at once (not one open per file), then kept in a cache beside the results.

The cache (`results/<study>/.cache/<table>.parquet`) holds each file's rows under its path, and
`<table>.files.parquet` the identity (inode, mtime, size) of every file read. A later read takes from the cache
whatever file is unchanged and reads only new or rewritten ones: cells write every file by renaming a fresh one
into place, so a rewritten file always has a new identity. The cache is a convenience: lost, unreadable or
unwritable, the files are read again.

A file that cannot be read (truncated by a full disk, an interrupted copy), or whose columns are not what its table
needs (`required`), is `corrupt`: given a `corrupt` dict, `stack` leaves it out and names it there with the reason,
instead of failing the whole read; it never enters the cache, so it is read again until it is rewritten.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from qlbench.study import grid

CACHE = ".cache"
_FILE, _STAMP, _ORDER = "_file", "_stamp", "_order"
_MISMATCH = (pl.exceptions.SchemaError, pl.exceptions.ColumnNotFoundError, pl.exceptions.ComputeError)
_UNREADABLE = (OSError, pl.exceptions.PolarsError, pl.exceptions.PanicException)  # a panic on some bytes
ROW_COLUMNS = ("status",)  # what any row, of any age, has; its coordinates, where present, have their types
ROW_TYPED = ("study", "model", "bits", "rank", "mask", "seed")
MOVED_ASIDE = ".corrupt"  # suffix of a corrupt file moved aside so that both drivers see its cell as unfinished


def stamp(path: str) -> str | None:
    """The identity of a file as it is now (None: there is none): what the cache is keyed on."""
    try:
        s = os.stat(path)
    except OSError:
        return None
    return f"{s.st_ino}:{s.st_mtime_ns}:{s.st_size}"


def row_required() -> dict:
    """The columns (and types) a file must have to count as a cell's row."""
    from qlbench.results import ROW_SCHEMA

    return {**{c: ROW_SCHEMA[c] for c in ROW_COLUMNS}, **{c + "?": ROW_SCHEMA[c] for c in ROW_TYPED}}


def cell_files(results: str, study: str, cells, name: str) -> list[str]:
    """The absolute path of file `name` in each cell's folder (the cache keys stay valid whatever the cwd)."""
    root = os.path.abspath(results)
    return [f"{grid.cell_dir(root, study, c)}/{name}" for c in cells]


def cache_path(results: str, study: str, table: str) -> Path:
    return Path(results) / study / CACHE / f"{table}.parquet"


def stack(files: list[str], stamps: list[str], cache: Path | None, columns: list[str] | None = None,
          corrupt: dict[str, str] | None = None, required: dict | None = None, one_row: bool = False
          ) -> pl.DataFrame:
    """The tables of `files` (all existing, `stamps` their identities) one under another, in the order given;
    `columns`: only these (the cache still gets every column of what is read).
    `corrupt`: collect here ({file: reason}) the files that cannot be read, lack a column of `required` ({name:
    dtype}) or, with `one_row`, hold other than one row; they are left out of the table (their files' rows are
    missing from it: the caller drops them from its list). Without it, such a file raises."""
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
        bad = {} if corrupt is None else corrupt
        new = read_many(fresh[_FILE].to_list(), None if corrupt is None else bad, required)
        if one_row and corrupt is not None:
            new = _one_row_each(new, fresh[_FILE].to_list(), bad)
        if bad:
            key = key.filter(~pl.col(_FILE).is_in(list(bad)))
        parts = [p for p in parts + [new] if p.width]
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


def read_many(files: list[str], corrupt: dict[str, str] | None = None, required: dict | None = None
              ) -> pl.DataFrame:
    """Many parquet files in one read, each row with its file's path; files whose columns differ (an extra
    measurement, a column that is null in one file) are read in halves and stacked as per-file reads would be.
    `corrupt` (given): a file that cannot be read, or lacks a `required` column of its type, is named there with
    the reason and left out (found by halving too: a corrupt file among 100,000 costs ~17 more reads)."""
    if not files:
        return pl.DataFrame()
    try:
        table = pl.read_parquet(files, include_file_paths=_FILE)
        wrong = _wrong_columns(table.schema, required)
        if wrong is None:
            return table
        if len(files) == 1:
            if corrupt is None:
                raise pl.exceptions.SchemaError(f"{files[0]}: {wrong}")
            corrupt[files[0]] = wrong
            return pl.DataFrame()
    except (_MISMATCH if corrupt is None else _UNREADABLE) as e:
        if len(files) == 1:
            if corrupt is None:
                raise
            corrupt[files[0]] = f"unreadable ({type(e).__name__}: {_first_line(e)})"
            return pl.DataFrame()
    half = len(files) // 2
    parts = [p for p in (read_many(files[:half], corrupt, required), read_many(files[half:], corrupt, required))
             if p.width]
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def _wrong_columns(schema, required: dict | None) -> str | None:
    """Why a table's columns are not those `required` ({name: dtype}; a name ending in `?`: that type where the
    column is present); None where they are."""
    if not required:
        return None
    lacks = [c for c in required if not c.endswith("?") and c not in schema]
    if lacks:
        return f"not a row: lacks columns {', '.join(lacks)}"
    typed = [f"{c.rstrip('?')} is {schema[c.rstrip('?')]}, not {t}" for c, t in required.items()
             if c.rstrip("?") in schema and schema[c.rstrip("?")] not in (t, pl.Null)]
    return f"not a row: {'; '.join(typed)}" if typed else None


def _one_row_each(table: pl.DataFrame, files: list[str], corrupt: dict[str, str]) -> pl.DataFrame:
    """`table` less the rows of files that hold other than exactly one row (each named in `corrupt`)."""
    n = dict(table.group_by(_FILE).len().iter_rows()) if table.width else {}
    for f in files:
        if f not in corrupt and n.get(f, 0) != 1:
            corrupt[f] = f"holds {n.get(f, 0)} rows, not one"
    if table.width and any(n.get(f, 0) != 1 for f in n):
        table = table.filter(~pl.col(_FILE).is_in(list(corrupt)))
    return table


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def move_aside(path: str) -> str | None:
    """Rename a corrupt file to `<name>.corrupt` (kept to look at, ignored by everything): its cell then has no
    row, so Snakemake and `qlbench sweep` rerun it. Returns the new name (None: it was gone already)."""
    aside = path + MOVED_ASIDE
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    return aside


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
