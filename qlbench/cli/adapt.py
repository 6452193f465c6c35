"""`qlbench adapt STUDY --budget CELL_HOURS`: run the grid with Snakemake, plan, add the cells that decide the
undecided verdicts as a config overlay (results/STUDY/adapt/round-K.yaml), run it, refit, repeat; the decisions are
qlbench.analysis.adapt's."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from qlbench.cli.group import config_option, load_study, main
from qlbench.cluster import drive
from qlbench.errors import QlbenchError


@main.command(context_settings={"ignore_unknown_options": True})
@config_option
@click.argument("study")
@click.option("--budget", required=True, type=click.FloatRange(min=0),
              help="cell-hours the added cells may take, all rounds together (the study's own grid not counted)")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=0),
              help="at most this many rounds of additions")
@click.option("--profile", default="profiles/local", show_default=True,
              help="the Snakemake profile every round runs with (profiles/slurm: on the cluster)")
@click.option("--plan", "plan_name", default="plan", show_default=True,
              help="the declared analysis whose `plan` output (one row per verdict) the loop follows")
@click.argument("snakemake_args", nargs=-1, type=click.UNPROCESSED)
def adapt(config_files, study, budget, rounds, profile, plan_name, snakemake_args):
    """Run STUDY's grid through Snakemake, then, round by round, add the cells `qlbench plan` names for the
    undecided verdicts and run them, until every verdict is decided, the next addition would pass --budget, or
    --rounds rounds have run. Each round is a config overlay, results/STUDY/adapt/round-K.yaml (which verdict each
    addition is for, its predicted power and cost): `snakemake --profile PROFILE --configfile round-K.yaml`
    reproduces it. Killed, the same command continues where it stopped (finished cells never rerun). Between several
    undecided verdicts, one addition per round: the fewest predicted cell-hours per verdict it is planned to
    decide. Arguments after `--` go to snakemake (e.g. `-- --cores 2`)."""
    from qlbench import registry
    from qlbench.analysis import applies
    from qlbench.analysis.claims import POWER_LEVEL as level  # the plan's level: an addition reaches it or not

    st = load_study(config_files, study)
    declared = registry.analyses().get(plan_name)
    if declared is None or "plan" not in declared.outputs:
        raise QlbenchError(f"adapt --plan {plan_name}: no declared analysis of that name with a `plan` output")
    if not applies.applies(declared.applies, st):
        raise QlbenchError(f"adapt: study {st.name!r} gets no {plan_name} (its condition {declared.applies!r}; "
                           "`qlbench plan` needs 16-bit cells and quantized cells of mask `all` at ≥3 (rank, bits) "
                           "points)")
    Loop(list(config_files), st, budget, rounds, _profile(profile), level, list(snakemake_args), declared).run()


def _profile(profile: str) -> str:
    """The profile as given, or the checkout's of that name (profiles/local from another folder)."""
    from qlbench.study.config import CHECKOUT

    if Path(profile).exists() or not (CHECKOUT / profile).exists():
        return profile
    return str(CHECKOUT / profile)


class Loop:
    def __init__(self, config_files, st, budget, rounds, profile, level, extra, declared):
        self.config_files, self.st, self.budget, self.rounds = config_files, st, budget, rounds
        self.profile, self.level, self.extra = profile, level, extra
        self.study_dir = Path(st.results) / st.name
        self.folder = self.study_dir / "adapt"
        self.plan_path = self.study_dir / declared.outputs["plan"]

    # files
    def path(self, k: int, suffix: str) -> Path:
        return self.folder / f"round-{k}.{suffix}"

    def last_round(self) -> int:
        done = [int(p.stem.removeprefix("round-")) for p in self.folder.glob("round-*.yaml")
                if p.stem.removeprefix("round-").isdigit()]
        return max(done, default=-1)

    def records(self) -> dict[int, dict]:
        return {int(p.stem.removeprefix("round-")): json.loads(p.read_text())
                for p in self.folder.glob("round-*.json")}

    @staticmethod
    def write(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a round file is whole or absent: it is the loop's state

    # the study at a round
    def axes_of(self, config: dict) -> dict:
        raw = config["studies"][self.st.name]
        return {k: raw[k] for k in ("bits", "ranks", "masks", "seeds", "n_train") if k in raw}

    def study_with(self, axes: dict):
        from qlbench.study import config as studylib

        config = studylib.read_config(self.config_files)
        config.setdefault("studies", {}).setdefault(self.st.name, {}).update(axes)
        config["study"] = self.st.name
        return studylib.load(config, self.st.name)

    def reproduce(self, k: int) -> str:
        files = [] if self.config_files == ["config.yaml"] else self.config_files
        return shlex.join(["snakemake", "--profile", self.profile, "--configfile", *files, str(self.path(k, "yaml"))])

    def run(self) -> None:
        from qlbench.analysis import adapt as A

        self.folder.mkdir(parents=True, exist_ok=True)
        k = self.last_round()
        if k < 0:
            k = 0
            axes = self.axes_of(self.st.config)
            self.write(self.path(0, "yaml"), A.overlay_yaml(self.st.name, axes, 0, [], self.reproduce(0),
                                                            self._header()))
        else:
            click.echo(f"adapt {self.st.name}: continuing at round {k} ({self.path(k, 'yaml')})")
        while True:
            self.snakemake(k)
            rows, table, cells = self.refit(k)
            records = self.records()
            spent = self.write_record(records, k)
            axes = records[k]["axes"] if k in records else self.round0_axes()
            step = A.next_step(rows, self.cost(axes, cells), spent, self.budget, k, self.rounds)
            if step.stop:
                text = f"adapt {self.st.name}: stopped after round {k}: {step.stop}; {spent:.3f} cell-hours added"
                self.write(self.folder / "stopped.txt", text + "\n")
                self.figure()
                click.echo(text)
                return
            k += 1
            rec = A.record(k, step.choice, axes)
            self.write(self.path(k, "json"), json.dumps(rec, indent=1))
            records[k] = rec
            self.write(self.path(k, "yaml"), A.overlay_yaml(
                self.st.name, step.choice.axes, k, [records[j] for j in sorted(records)], self.reproduce(k),
                self._header()))
            click.echo(f"adapt {self.st.name}: round {k}: {rec['addition']} for {', '.join(rec['for'])} "
                       f"({len(rec['cells'])} cells, {rec['cell_hours_predicted']:.3f} cell-hours predicted)")

    def _header(self) -> list[str]:
        return [f"Budget {self.budget:g} cell-hours for the added cells, at most {self.rounds} rounds, level "
                f"{self.level}; each round adds the addition with the fewest predicted cell-hours per verdict it "
                "is planned to decide."]

    def snakemake(self, k: int) -> None:
        exe = Path(sys.executable).with_name("snakemake")
        cmd = [str(exe) if exe.exists() else "snakemake"]
        if not Path("Snakefile").exists():
            from qlbench.study.config import CHECKOUT

            cmd += ["--snakefile", str(CHECKOUT / "Snakefile")]
        cmd += ["--profile", self.profile, "--configfile", *self.config_files, str(self.path(k, "yaml")), *self.extra]
        log = self.path(k, "log")
        click.echo(f"adapt {self.st.name}: round {k}: {shlex.join(cmd)} (log: {log})")
        rc, stopped = drive.run(cmd, log, say=lambda m: click.echo(f"adapt {self.st.name}: round {k}: {m}"))
        if stopped:
            raise QlbenchError(f"adapt: round {k} stopped by signal {stopped}; the same command continues it")
        if rc != 0:
            locked = "cannot be locked" in log.read_text()[-5000:]
            raise QlbenchError(f"adapt: round {k}: snakemake failed (exit {rc}); see {log}; " + (
                "another snakemake holds the folder's lock (if none runs, a killed one left it: "
                f"{shlex.join(cmd[:1] + ['--unlock'] + cmd[1:])})" if locked else
                "the same command continues once it is fixed"))

    def refit(self, k: int):
        """The workflow's plan after round k (kept as plan-K.parquet) as verdict rows."""
        import polars as pl

        from qlbench.analysis import adapt as A, plan_overlay

        if not self.plan_path.exists():
            raise QlbenchError(f"adapt: round {k} made no {self.plan_path}")
        cells = pl.read_parquet(self.study_dir / "cells.parquet")
        table = plan_overlay.with_overlays(pl.read_parquet(self.plan_path), cells)  # until plan writes `overlay`
        table.write_parquet(self.folder / f"plan-{k}.parquet.tmp")
        os.replace(self.folder / f"plan-{k}.parquet.tmp", self.folder / f"plan-{k}.parquet")
        return A.verdicts(table, self.level), table, cells

    def cost(self, axes: dict, cells):
        """overlay -> (axes, the cell paths it adds, their cell-hours by the measured time per cell at the nearest
        rank, why not or None)."""
        import math

        from qlbench.analysis import adapt as A, plan
        from qlbench.study import grid as gridlib

        seconds = plan.cell_seconds(cells)
        have = {c.path for c in gridlib.cells(self.study_with(axes))}
        measured_n = sorted(cells["train_examples"].drop_nulls().unique().to_list())

        def cost(overlay):
            new, why = A.grown(axes, overlay, measured_n)
            if why:
                return None, [], 0.0, why
            try:
                grid = gridlib.cells(self.study_with(new))
            except QlbenchError as e:
                return None, [], 0.0, str(e)
            added = [c for c in grid if c.path not in have]
            if not seconds:
                return new, [c.path for c in added], float("nan"), None
            near = lambda r: seconds[min(seconds, key=lambda s: abs(math.log2(s) - math.log2(r)))]
            return new, [c.path for c in added], sum(near(c.rank) for c in added) / 3600, None

        return cost

    def measured_hours(self, paths) -> float:
        import polars as pl

        total = 0.0
        for p in paths:
            row = self.study_dir / "cells" / p / "row.parquet"
            if row.exists():
                total += float(pl.read_parquet(row, columns=["wall_s"])["wall_s"].fill_null(0.0).sum())
        return total / 3600

    def write_record(self, records: dict, k: int) -> float:
        """rounds.parquet from the round files and plans so far; returns the added cells' measured cell-hours."""
        import polars as pl

        from qlbench.analysis import adapt as A
        from qlbench.study import grid as gridlib

        plans = {}
        for j in range(k + 1):
            p = self.folder / f"plan-{j}.parquet"
            if p.exists():
                plans[j] = A.verdicts(pl.read_parquet(p), self.level)
        base = [c.path for c in gridlib.cells(self.study_with(self.round0_axes()))]
        hours = {0: self.measured_hours(base)} | {j: self.measured_hours(records[j]["cells"])
                                                  for j in records if j <= k}
        table = A.rounds_table({j: r for j, r in records.items() if j <= k}, plans, hours, len(base))
        from qlbench.results import write_parquet

        write_parquet(table, self.folder / "rounds.parquet")
        return sum(h for j, h in hours.items() if j > 0)

    def round0_axes(self) -> dict:
        from qlbench.study import config as studylib

        return self.axes_of(studylib.read_config([self.path(0, "yaml")]))

    def figure(self) -> None:
        """The report's adapt section, redrawn from the final rounds.parquet (the workflow drew it before the
        last refit)."""
        from qlbench import registry
        from qlbench.analysis import job as joblib

        declared = registry.analyses().get("adapt_rounds")
        if declared is None:
            return
        job = joblib.make(declared, self.st, self.study_dir)
        for path in job.outputs.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        registry.analysis_module("adapt_rounds").run(job)
