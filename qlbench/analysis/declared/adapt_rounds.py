"""The rounds of `qlbench adapt` (results/STUDY/adapt/rounds.parquet, which the loop writes): each verdict's power
against the cell-hours the added cells took, and the table, for the report. A study gets it once it has the record."""

from __future__ import annotations

import polars as pl

from qlbench.registry import Analysis

ANALYSIS = Analysis(
    name="adapt_rounds",
    summary="qlbench adapt's rounds: each verdict's power, predicted and measured, against the cell-hours added",
    needs=["cells"],
    applies="adapted",
    outputs={"figure": "adapt/rounds.png", "table": "adapt/rounds.html", "markdown": "adapt/rounds.md"},
    report={
        "figure": (
            "Adapt",
            "",
            "The rounds of ``qlbench adapt``: each verdict's power (the chance its test decides it correctly, by "
            "simulation on the grid with the fitted values and seed noise) after each round, against the cumulative "
            "cell-hours of the cells the rounds added (round 0, the study's own grid, at 0); an open marker is the "
            "power the plan predicted for the verdict a round's addition was for; the dashed line is the level."
        ),
        "table": (
            "Adapt",
            "",
            "Per round and verdict: the addition, the power before the round, predicted for the verdicts it was for, "
            "and measured after the refit, whether the verdict is decided, the cells added and their cell-hours "
            "(predicted from the measured time per cell, and measured)."
        ),
    },
)

LEVEL = 0.8


def run(job) -> str:
    from qlbench.analysis.tables import html

    rounds = pl.read_parquet(job.folder / "adapt" / "rounds.parquet")
    stopped = job.folder / "adapt" / "stopped.txt"
    note = stopped.read_text().strip() if stopped.exists() else "adapt has not stopped yet"
    for path in job.outputs.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    figure(rounds, job.outputs["figure"], f"{job.folder.name}: power against cell-hours added",
           job.option("level", LEVEL))
    text = markdown(rounds, job.folder.name, note)
    job.outputs["markdown"].write_text(text)
    job.outputs["table"].write_text(html(view(rounds), f"{job.folder.name}: the rounds of qlbench adapt", note))
    return text


def view(rounds: pl.DataFrame) -> pl.DataFrame:
    return rounds.select("round", "verdict", "addition", "targeted", pl.col("power_before").round(2),
                         pl.col("power_predicted").round(2), pl.col("power_after").round(2), "decided_after",
                         "cells_added", pl.col("cell_hours_predicted").round(3), pl.col("cell_hours").round(3),
                         pl.col("cumulative_cell_hours").round(3))


def markdown(rounds: pl.DataFrame, study: str, note: str) -> str:
    from qlbench.analysis.tables import markdown as md

    return md(view(rounds), f"{study}: the rounds of qlbench adapt") + "\n" + note + "\n"


def figure(rounds: pl.DataFrame, path, title: str, level: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (verdict,), g in rounds.sort("round").group_by(["verdict"], maintain_order=True):
        line = ax.plot(g["cumulative_cell_hours"], g["power_after"].fill_null(float("nan")), marker="o",
                       label=verdict)[0]
        hit = g.filter(pl.col("targeted") & pl.col("power_predicted").is_not_null())
        ax.scatter(hit["cumulative_cell_hours"], hit["power_predicted"], facecolors="none",
                   edgecolors=line.get_color(), s=70)
    ax.axhline(level, ls="--", c="grey", lw=1)
    ax.set_xlabel("cell-hours added (cumulative)")
    ax.set_ylabel("power of the verdict's test")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
