"""`qlbench adapt`'s decisions and record: from a plan table (one row per verdict, `qlbench.analysis.plan`) and the
study's axes, which cells the next round adds, or why the loop stops; the round's config overlay as readable YAML;
and the rounds' record (rounds.parquet). Pure: the command (qlbench/cli/adapt.py) runs Snakemake and reads files.

The rule between several undecided verdicts: one addition per round, the one with the fewest predicted cell-hours
per verdict it is planned to decide (ties: fewer cells, then the plan's order). One at a time because the refit on
it may decide others too (a third rank makes c1 testable): the loop pays for the next only when it still is needed.

The state is the round files under results/STUDY/adapt/: round-K.yaml (the overlay: a `--configfile` that, layered
on the study's config, defines the study with every cell of rounds 0..K) and round-K.json (what the loop chose and
predicted), written before round K runs; plan-K.parquet, the plan refitted on round K's cells.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import polars as pl

AXIS_KEYS = ("bits", "ranks", "masks", "seeds", "n_train")


@dataclass(frozen=True)
class Option:
    """One addition the plan names: the verdicts it is planned for, the axes it makes, the cells it adds."""

    addition: str
    verdicts: tuple[str, ...]
    axes: dict
    cells: tuple[str, ...]  # the cell paths it adds
    hours: float  # their predicted cell-hours
    power_now: dict = field(default_factory=dict)  # verdict -> power now
    power_after: dict = field(default_factory=dict)  # verdict -> power predicted with the addition

    @property
    def per_verdict(self) -> float:
        return self.hours / len(self.verdicts)


@dataclass(frozen=True)
class Step:
    """What the loop does next: add `choice`, or stop for `stop` (a sentence); `blocked`: verdict -> why it cannot
    be decided by any addition the plan named."""

    choice: Option | None
    stop: str | None
    blocked: dict


def verdicts(table: pl.DataFrame, level: float) -> list[dict]:
    """The plan's rows, one form for both plans: the bounds plan (`claim`, decided when its addition is "none
    needed") and the all-kinds plan (`kind`, `verdict`, `decided`, `overlay`)."""
    out = []
    for row in table.iter_rows(named=True):
        after = row.get("power_after")
        decided = row["decided"] if "decided" in row else row.get("addition") == "none needed"
        out.append({"kind": row.get("kind") or "bounds", "verdict": row.get("verdict") or row.get("claim"),
                    "decided": bool(decided), "power_now": row.get("power_now"), "addition": row.get("addition"),
                    "overlay": json.loads(row["overlay"]) if row.get("overlay") else None,
                    "power_after": after, "reaches": after is not None and after == after and after >= level})
    return out


def grown(axes: dict, overlay: dict, measured_n: list[int]) -> tuple[dict | None, str | None]:
    """The study's axes with `overlay`'s keys added (a value the axis holds stays where it is; `seeds` a count or a
    list), or None and why not. `measured_n`: the N (train_examples) the study's cells measured."""
    new = {k: (list(v) if isinstance(v, list) else v) for k, v in axes.items()}
    for key, value in overlay.items():
        if key == "bits":
            new["bits"] = sorted(set(axes["bits"]) | set(value), reverse=True)
        elif key == "ranks":
            new["ranks"] = sorted(set(axes["ranks"]) | set(value))
        elif key == "masks":
            new["masks"] = axes["masks"] + [m for m in value if m not in axes["masks"]]
        elif key == "seeds":
            seeds = list(axes["seeds"])
            if isinstance(value, int):  # a count: the next unused seeds
                while len(seeds) < value:
                    seeds.append(max(seeds) + 1)
            else:
                seeds += [s for s in value if s not in seeds]
            new["seeds"] = seeds
        elif key in ("train_examples", "n_train"):
            # null: the study's default N (the whole split), whose cells are measured already
            more = sorted({n for n in value if n is not None} - set(measured_n))
            if not more:
                continue
            if max(more) > max(measured_n):
                return None, (f"N {max(more)} is beyond the largest N measured ({max(measured_n)}): the dataset "
                              "may hold no more")
            have = axes.get("n_train")
            if have is None and None not in value:
                return None, (f"N {', '.join(map(str, more))}: the study has no n_train axis (every cell trains on "
                              "the whole training split); adding one would move every finished cell")
            have = have if isinstance(have, list) else [have]  # [None]: the default N stays, its cells keep their path
            new["n_train"] = have + [n for n in more if n not in have]
        else:
            return None, f"the addition sets {key!r}, which adapt cannot grow"
    return new, None


def options(rows: list[dict], cost) -> tuple[list[Option], dict]:
    """The undecided verdicts' additions that reach the level, merged where two verdicts name the same cells, and
    the rest: verdict -> why not. `cost(overlay) -> (axes, cell paths, hours, why-not or None)`."""
    found: dict[tuple, Option] = {}
    blocked = {}
    for row in rows:
        if row["decided"]:
            continue
        name = row["verdict"]
        if not row["reaches"] or row["overlay"] is None:
            best = f" (best tried: {row['addition']}, power {row['power_after']:.2f})" if (
                row["power_after"] is not None and row["power_after"] == row["power_after"]) else ""
            blocked[name] = f"no addition the plan tried reaches the level{best}"
            continue
        axes, cells, hours, why = cost(row["overlay"])
        if why:
            blocked[name] = f"{row['addition']}: {why}"
            continue
        if not cells:
            blocked[name] = f"{row['addition']}: adds no cell (the grid already holds it)"
            continue
        key = tuple(sorted(cells))
        prior = found.get(key)
        found[key] = Option(
            addition=prior.addition if prior else row["addition"],
            verdicts=(*prior.verdicts, name) if prior else (name,), axes=axes, cells=tuple(cells), hours=hours,
            power_now={**(prior.power_now if prior else {}), name: row["power_now"]},
            power_after={**(prior.power_after if prior else {}), name: row["power_after"]})
    return list(found.values()), blocked


def next_step(rows: list[dict], cost, spent: float, budget: float, done: int, rounds: int) -> Step:
    """The next round's addition, or why the loop stops: every verdict decided (or none left that an addition the
    plan names can decide), K rounds done, or the cheapest addition past the budget. `spent`: the cell-hours the
    added cells took so far; `done`: rounds run beyond round 0."""
    undecided = [r["verdict"] for r in rows if not r["decided"]]
    if not undecided:
        return Step(None, "every verdict is decided", {})
    found, blocked = options(rows, cost)
    if not found:
        return Step(None, f"every verdict an addition can decide is decided; undecided: {_why(blocked)}", blocked)
    best = min(enumerate(found), key=lambda t: (_hours(t[1].per_verdict), len(t[1].cells), t[0]))[1]
    if done >= rounds:
        return Step(None, f"{rounds} round{'s' * (rounds != 1)} done; undecided: {', '.join(undecided)}", blocked)
    if not best.hours == best.hours:
        return Step(None, "no measured wall time per cell: the next addition's cost is unknown", blocked)
    if spent + best.hours > budget:
        return Step(None, f"the next addition ({best.addition} for {', '.join(best.verdicts)}: {len(best.cells)} "
                          f"cells, {best.hours:.3f} cell-hours) would pass the budget ({spent:.3f} of "
                          f"{budget:g} cell-hours spent)", blocked)
    return Step(best, None, blocked)


def _hours(h: float) -> float:
    return h if h == h else math.inf


def _why(blocked: dict) -> str:
    return "; ".join(f"{name}: {why}" for name, why in blocked.items())


def overlay_yaml(study: str, axes: dict, k: int, records: list[dict], reproduce: str, header: list[str]) -> str:
    """Round k's overlay: `study: NAME` and the study's axes with every cell of rounds 0..k, each key commented with
    the rounds that added to it (which verdict, predicted power, cost)."""
    notes: dict[str, list[str]] = {}
    for rec in records:
        for key, added in rec["added"].items():
            notes.setdefault(key, []).append(
                f"round {rec['round']}: +{','.join(map(str, added))} for {_for(rec)}")
    lines = [f"# qlbench adapt, study {study}: round {k}. Layered on the study's config, this file defines the study "
             f"with every cell of rounds 0..{k}.", f"# Reproduce this round: {reproduce}", *map("# {}".format, header)]
    for rec in records:
        lines.append(f"# round {rec['round']}: {rec['addition']} for {_for(rec)}; {len(rec['cells'])} cells, "
                     f"{rec['cell_hours_predicted']:.3f} cell-hours predicted")
    lines += [f"study: {study}", "studies:", f"  {study}:"]
    for key in AXIS_KEYS:
        if key not in axes or axes[key] is None:
            continue
        value = json.dumps(axes[key])
        comment = f"  # {'; '.join(notes[key])}" if key in notes else ""
        lines.append(f"    {key}: {value}{comment}")
    return "\n".join(lines) + "\n"


def _for(rec: dict) -> str:
    return ", ".join(f"{v!r} (power {_p(rec['power_now'].get(v))} -> {_p(rec['power_predicted'].get(v))} predicted)"
                     for v in rec["for"])


def _p(x) -> str:
    return "–" if x is None or x != x else f"{x:.2f}"


def added_keys(old: dict, new: dict) -> dict:
    """axis -> the values `new` adds to `old`."""
    out = {}
    for key in AXIS_KEYS:
        before = old.get(key) if isinstance(old.get(key), list) else ([old[key]] if old.get(key) is not None else [])
        after = new.get(key) if isinstance(new.get(key), list) else ([new[key]] if new.get(key) is not None else [])
        more = [v for v in after if v not in before]
        if more:
            out[key] = more
    return out


def record(k: int, choice: Option, old_axes: dict) -> dict:
    """round-K.json: what the loop chose for round k and what it predicted."""
    return {"round": k, "addition": choice.addition, "for": list(choice.verdicts),
            "power_now": choice.power_now, "power_predicted": choice.power_after, "cells": list(choice.cells),
            "cell_hours_predicted": choice.hours, "axes": choice.axes, "added": added_keys(old_axes, choice.axes)}


ROUND_SCHEMA = {"round": pl.Int64, "kind": pl.String, "verdict": pl.String, "addition": pl.String,
                "targeted": pl.Boolean, "power_before": pl.Float64, "power_predicted": pl.Float64,
                "power_after": pl.Float64, "decided_after": pl.Boolean, "cells_added": pl.Int64,
                "cell_hours_predicted": pl.Float64, "cell_hours": pl.Float64, "cumulative_cell_hours": pl.Float64}


def rounds_table(records: dict[int, dict], plans: dict[int, list[dict]], hours: dict[int, float],
                 base_cells: int) -> pl.DataFrame:
    """rounds.parquet: per round and verdict, its power before the round (the last plan's power now), predicted
    (for the verdicts the round's addition is for) and measured after (the refitted plan's power now), the cells
    the round added and their cell-hours, predicted and measured (round 0: the study's own grid), and the
    cumulative cell-hours of the added cells (round 0 not counted). `plans`: round -> `verdicts(...)` rows."""
    rows = []
    cumulative = 0.0
    for k in sorted(plans):
        rec = records.get(k)
        before = {r["verdict"]: r["power_now"] for r in plans.get(k - 1, [])}
        if k > 0:
            cumulative += hours.get(k, float("nan"))
        for r in plans[k]:
            name = r["verdict"]
            targeted = bool(rec and name in rec["for"])
            rows.append({"round": k, "kind": r["kind"], "verdict": name,
                         "addition": rec["addition"] if rec else "the study's grid",
                         "targeted": targeted, "power_before": before.get(name),
                         "power_predicted": rec["power_predicted"].get(name) if targeted else None,
                         "power_after": r["power_now"], "decided_after": r["decided"],
                         "cells_added": len(rec["cells"]) if rec else base_cells,
                         "cell_hours_predicted": rec["cell_hours_predicted"] if rec else None,
                         "cell_hours": hours.get(k), "cumulative_cell_hours": cumulative})
    return pl.DataFrame(rows, schema=ROUND_SCHEMA)
