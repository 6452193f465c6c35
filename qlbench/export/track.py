"""A study's finished cells as MLflow runs, one run per cell, in an experiment named for the study.

Which cells: those `qlbench aggregate` would take (a row made under the current settings; corrupt and stale rows
left out, and counted). Per run: the coordinates and every setting as params, the row's numbers as metrics (at step
0), the training curve as step metrics (`curve.loss`, `curve.lr`, `curve.grad_norm`), the provenance as tags, and
the cell's adapter file(s) as artifacts under `adapter/`.

Idempotent: a run is found again by its tag `qlbench.cell` (study/cell path); `qlbench.config_hash` and
`qlbench.row_digest` (a hash of the row and its curve) say what it holds. Unchanged: skipped. The row changed under
the same settings (a rerun): the same run is updated in place — new metric values (their latest is the new row's;
MLflow keeps the earlier points in each metric's history), tags and artifacts. The settings changed (another config
hash: MLflow params cannot change): the old run is deleted and a new one made (tag `qlbench.replaces`). So the
active runs are always one per finished cell.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from qlbench.results import COORDS, PROVENANCE, SETTINGS
from qlbench.study import grid
from qlbench.study.config import Study

CELL_TAG, HASH_TAG, DIGEST_TAG = "qlbench.cell", "qlbench.config_hash", "qlbench.row_digest"
CURVE_METRICS = ("loss", "lr", "grad_norm")


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # cell: why (corrupt, stale)
    missing: int = 0
    experiment_id: str = ""

    def line(self, study: str, uri: str) -> str:
        extra = (f", {len(self.left_out)} left out (first: {next(iter(self.left_out.items()))})"
                 if self.left_out else "") + (f", {self.missing} without a row" if self.missing else "")
        return (f"{study} -> {uri} (experiment {self.experiment_id}): {len(self.created)} runs created, "
                f"{len(self.updated)} updated, {len(self.replaced)} replaced, {len(self.unchanged)} unchanged{extra}")


def default_uri(results: str, study: str) -> tuple[str, str]:
    """(tracking URI, artifact folder): a SQLite store and its artifacts beside the study's results."""
    root = (Path(results) / study).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", str(root / "mlartifacts")


def finished_cells(study: Study, results: str) -> tuple[list[tuple[grid.Cell, dict, pl.DataFrame]], dict, int]:
    """[(cell, its row, its curve)] of every current finished cell, the left-out ones ({cell: why}) and how many
    have no row yet — read as `qlbench aggregate` reads them."""
    from qlbench.analysis.aggregate import aggregate

    corrupt: dict[str, str] = {}
    tables, missing, stale = aggregate(study, results, corrupt)
    left_out = {**corrupt, **{c: f"made under other settings: {why}" for c, why in stale.items()}}
    axis = study.targets != [None]
    by_key = {_key(c.coords(), axis): c for c in grid.cells(study)}
    curves = {}
    if not tables["curves"].is_empty():
        for part in tables["curves"].partition_by([k for k in COORDS if k != "study"], maintain_order=True):
            curves[_key(part.row(0, named=True), axis)] = part.sort("step")
    out = []
    for row in tables["cells"].iter_rows(named=True):
        key = _key(row, axis)
        cell = by_key.get(key)
        if cell is not None:
            out.append((cell, row, curves.get(key, pl.DataFrame())))
    return out, left_out, len(missing)


def _key(coords: dict, axis: bool) -> tuple:
    return (coords["model"], coords["bits"], coords["rank"], coords["mask"], coords["seed"], coords.get("n_train"),
            coords.get("targets") if axis else None)


def digest(row: dict, curve: pl.DataFrame) -> str:
    blob = json.dumps({"row": row, "curve": curve.to_dicts() if curve.height else []}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def params(row: dict) -> dict[str, str]:
    """The coordinates and every setting (the row's `settings_json`, what its config hash covers)."""
    out = {k: row.get(k) for k in COORDS if k != "study"}
    out.update(json.loads(row.get("settings_json") or "{}"))
    return {k: (v if isinstance(v, str) else json.dumps(v, default=str))[:6000] for k, v in sorted(out.items())}


def metrics(row: dict) -> dict[str, float]:
    """The row's numbers that are not coordinates, settings or provenance."""
    skip = set(COORDS) | set(SETTINGS) | set(PROVENANCE)
    return {k: float(v) for k, v in row.items() if k not in skip and isinstance(v, (int, float))}


def tags(study: str, cell: grid.Cell, row: dict, row_digest: str) -> dict[str, str]:
    prov = {f"qlbench.{k}": str(row[k]) for k in PROVENANCE if k != "config_hash" and row.get(k) is not None}
    return {CELL_TAG: f"{study}/{cell.path}", HASH_TAG: str(row.get("config_hash")), DIGEST_TAG: row_digest,
            "qlbench.status": str(row.get("status")), "mlflow.runName": cell.path, **prov}


def _millis(row: dict) -> int:
    try:
        return int(datetime.fromisoformat(str(row["finished_at"])).timestamp() * 1000)
    except (KeyError, TypeError, ValueError):
        return int(datetime.now().timestamp() * 1000)


def track(study: Study, results: str, uri: str | None = None, artifacts: str | None = None) -> Outcome:
    import mlflow  # noqa: F401  (lazy: qlbench's other commands never pay its import)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    if uri is None:
        uri, default_artifacts = default_uri(results, study.name)
        artifacts = artifacts or default_artifacts
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study.name)
    if exp is None:
        eid = client.create_experiment(study.name, artifact_location=Path(artifacts).resolve().as_uri()
                                       if artifacts else None, tags={"qlbench.study": study.name})
    else:
        eid = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(eid)
    existing: dict[str, object] = {}
    for run in _all_runs(client, eid):
        existing.setdefault(run.data.tags.get(CELL_TAG), run)
    cells, left_out, missing = finished_cells(study, results)
    out = Outcome(left_out=left_out, missing=missing, experiment_id=eid)
    for cell, row, curve in cells:
        name = f"{study.name}/{cell.path}"
        row_digest = digest(row, curve)
        run = existing.get(name)
        if run is not None and run.data.tags.get(DIGEST_TAG) == row_digest:
            out.unchanged.append(cell.path)
            continue
        replaced = run is not None and run.data.tags.get(HASH_TAG) != str(row.get("config_hash"))
        if replaced:
            client.delete_run(run.info.run_id)
        t = _millis(row)
        the_tags = tags(study.name, cell, row, row_digest)
        if run is None or replaced:
            if replaced:
                the_tags["qlbench.replaces"] = run.info.run_id
            run_id = client.create_run(eid, start_time=t, tags=the_tags).info.run_id
            (out.replaced if replaced else out.created).append(cell.path)
            batch_params = [Param(k, v) for k, v in params(row).items()]
        else:
            run_id = run.info.run_id
            out.updated.append(cell.path)
            batch_params = []
        batch = [Metric(k, v, t, 0) for k, v in metrics(row).items()]
        if curve.height:
            for step in curve.iter_rows(named=True):
                batch += [Metric(f"curve.{k}", float(step[k]), t, int(step["step"])) for k in CURVE_METRICS
                          if step.get(k) is not None and not math.isinf(step[k])]
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in the_tags.items()])
        for j in range(0, len(batch_params), 100):  # MLflow's limits per call: 100 params, 1000 metrics
            client.log_batch(run_id, params=batch_params[j:j + 100])
        for i in range(0, len(batch), 1000):
            client.log_batch(run_id, metrics=batch[i:i + 1000])
        folder = Path(grid.cell_dir(os.path.abspath(results), study.name, cell))
        for f in sorted(folder.glob("adapter*.safetensors")):
            client.log_artifact(run_id, str(f), artifact_path="adapter")
        client.set_terminated(run_id, "FINISHED", end_time=t)
    return out


def _all_runs(client, eid: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([eid], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs
