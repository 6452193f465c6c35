"""`qlbench track` against a real local MLflow store (SQLite and a folder of artifacts), read back with MLflow's own
client: one run per finished cell with its params, metrics, curve and adapter; a second call adds nothing; a cell
whose row changed is updated in its own run. The finished cells are synthesized (real rows with the cells' true
config hashes, as bench/control_plane.py writes them): nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from conftest import full_config
from qlbench import results
from qlbench.study import config as studylib, grid

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

STEPS = 5


def _write_row(root: Path, st, cell, eval_loss: float, finished_at: str = "2026-12-01T10:00:00") -> Path:
    settings, chash = studylib.cell_identity(st, cell)
    row = {c: None for c in results.ROW_SCHEMA} | {
        "study": st.name, **cell.coords(), "targets": "c_attn", "status": "ok", "eval_loss": eval_loss,
        "eval_loss_before": eval_loss + 0.5, "wall_s": 3.0, "steps_done": STEPS, "config_hash": chash,
        "settings_json": json.dumps(settings, sort_keys=True, default=str), "backend": st.settings["backend"],
        "steps": STEPS, "finished_at": finished_at, "host": "test", "numerics": results.NUMERICS}
    curve = [{"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3, "grad_norm": 1.0 + s, "step_time_s": 0.1,
              "grad_var": float("nan")} for s in range(1, STEPS + 1)]
    frame = pl.DataFrame([row], schema=results.ROW_SCHEMA).with_columns(
        pl.Series(results.CURVE, [curve], dtype=results.CURVE_DTYPE))
    folder = Path(grid.cell_dir(str(root), st.name, cell))
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(folder / grid.ROW)
    (folder / grid.ADAPTER).write_bytes(b"adapter of " + cell.path.encode())
    return folder


@pytest.fixture
def study(tmp_path):
    config = full_config()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    st = studylib.load(config, "micro")
    cells = grid.cells(st)
    assert len(cells) >= 3
    for i, cell in enumerate(cells[:-1]):  # the last cell has not finished: it gets no run
        _write_row(tmp_path / "results", st, cell, 2.0 + 0.1 * i)
    return tmp_path, st, cells


def _track(work: Path):
    from qlbench.cli import main

    res = CliRunner().invoke(main, ["track", "-c", str(work / "config.yaml"), "micro", "--results",
                                    str(work / "results")])
    assert res.exit_code == 0, res.output
    return res.output


def _runs(work: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{(work / 'results/micro/mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("micro")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_track_logs_one_run_per_finished_cell_and_a_second_call_adds_none(study):
    work, st, cells = study
    out = _track(work)
    assert "2 runs created" in out and "1 without a row" in out
    client, runs = _runs(work)
    assert len(runs) == len(cells) - 1
    by_cell = {r.data.tags["qlbench.cell"]: r for r in runs}
    assert set(by_cell) == {f"micro/{c.path}" for c in cells[:-1]}
    cell = cells[0]
    run = by_cell[f"micro/{cell.path}"]
    _, chash = studylib.cell_identity(st, cell)
    assert run.data.tags["qlbench.config_hash"] == chash and run.info.status == "FINISHED"
    assert run.data.params["bits"] == str(cell.bits) and run.data.params["mask"] == cell.mask
    assert run.data.params["steps"] == str(st.settings["steps"])
    assert run.data.params["backend"] == st.settings["backend"]
    assert run.data.metrics["eval_loss"] == pytest.approx(2.0) and run.data.metrics["wall_s"] == 3.0
    history = client.get_metric_history(run.info.run_id, "curve.loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s, pytest.approx(3.0 - 0.1 * s)) for s in range(1, STEPS + 1)]
    assert len(client.get_metric_history(run.info.run_id, "curve.grad_norm")) == STEPS
    assert [a.path for a in client.list_artifacts(run.info.run_id, "adapter")] == ["adapter/adapter.safetensors"]
    local = Path(client.download_artifacts(run.info.run_id, "adapter/adapter.safetensors", str(work)))
    assert local.read_bytes() == b"adapter of " + cell.path.encode()

    again = _track(work)
    assert "0 runs created, 0 updated, 0 replaced, 2 unchanged" in again
    assert len(_runs(work)[1]) == len(cells) - 1


def test_a_changed_row_updates_its_own_run_and_a_new_cell_gets_one(study):
    work, st, cells = study
    _track(work)
    _, before = _runs(work)
    ids = {r.data.tags["qlbench.cell"]: r.info.run_id for r in before}
    _write_row(work / "results", st, cells[1], 1.5, finished_at="2026-12-01T11:00:00")  # rerun: a new row
    _write_row(work / "results", st, cells[-1], 2.7)  # the last cell finishes
    out = _track(work)
    assert "1 runs created, 1 updated, 0 replaced, 1 unchanged" in out
    client, after = _runs(work)
    assert len(after) == len(cells)
    now = {r.data.tags["qlbench.cell"]: r for r in after}
    changed = now[f"micro/{cells[1].path}"]
    assert changed.info.run_id == ids[f"micro/{cells[1].path}"]  # in place, not a second run
    assert changed.data.metrics["eval_loss"] == pytest.approx(1.5)
    assert now[f"micro/{cells[0].path}"].info.run_id == ids[f"micro/{cells[0].path}"]


def test_a_row_under_new_settings_replaces_its_run_and_stale_rows_are_left_out(study):
    work, st, cells = study
    _track(work)
    _, before = _runs(work)
    old = {r.data.tags["qlbench.cell"]: r.info.run_id for r in before}[f"micro/{cells[0].path}"]
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["studies"]["micro"]["steps"] = st.settings["steps"] + 10  # new settings: every row is now stale
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    new_st = studylib.load(config, "micro")
    _write_row(work / "results", new_st, cells[0], 1.9)  # one cell rerun under them
    out = _track(work)
    assert "0 runs created, 0 updated, 1 replaced, 0 unchanged, 1 left out" in out
    client, after = _runs(work)
    assert len(after) == len(cells) - 1  # the replaced run is deleted; the stale cell's run stays
    new = next(r for r in after if r.data.tags["qlbench.cell"] == f"micro/{cells[0].path}")
    assert new.data.tags["qlbench.replaces"] == old and new.data.params["steps"] == str(new_st.settings["steps"])
    assert client.get_run(old).info.lifecycle_stage == "deleted"
