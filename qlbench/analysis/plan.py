"""Experimental design for the bounds verdicts: which cells would decide a claim this grid cannot.

For every claim whose test has power below the level on the study's grid (or that the grid cannot test at all),
the smallest additions to the grid — widths, ranks, data sizes N, seeds — that bring its power above the level,
found by the same simulation as the verdicts' power (qlbench.analysis.power): the claim and its rival fitted on
the study's cells and planted on the larger grid, with each point's seed noise (a new point gets the median seed
variance of the measured ones), refitted by the verdicts' own test. Each addition's cost: the cells it adds (of
mask `all`, 16-bit included) and the cell-hours they would take, from the study's measured wall time per cell at
the nearest rank.

Without cells, the plan plants a nominal law and says so: the bound L = 2 + 0.5·√(r/N) + c2·r·2^(−2b) with the
4-bit gap at rank 8 of 0.02 nats, and a seed sd of 0.003 nats.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import polars as pl

from qlbench.analysis import claims, freefit, power
from qlbench.analysis.bounds import REFERENCE_BITS, design_of

EXTRA_WIDTHS = (2, 3, 5, 6)
EXTRA_RANKS = (2, 64)
AIM_ABOVE = 0.0  # with draws, an addition aims at level + this share of (1 − level); 0.5 decided 21/25 as planted but promised a plan in few studies
DRAWS = 20  # parametric-bootstrap copies of the fit whose nuisance values the plan plants (0: the fit's alone)
PER_DRAW = 20  # simulated data sets per copy at least
MC_Z = 1.645  # with draws, an addition's simulated power must clear the level by this many Monte-Carlo sds
NOMINAL = {"L_star": 2.0, "c1": 0.5, "gap4_r8": 0.02, "seed_sd": 0.003}
CLAIMS = {"kappa": "κ = 2 (bit term ∝ 2^(−2b))", "rho": "ρ = 1 (rank coupling)",
          "c1": "c1·√(r/N) > 0 (not a rank trend)", "ratio": "½ bit per doubling of r",
          "beta": "½ bit per doubling of N"}


def nominal_points(bits, ranks, examples, seeds: int) -> pl.DataFrame:
    """Points of the nominal law (no noise) with the nominal seed variance: a plan before any cell has run."""
    c2 = NOMINAL["gap4_r8"] / (8 * 2.0**-8)
    rows = [{"rank": r, "bits": b, "train_examples": n, "seeds": seeds, "var": NOMINAL["seed_sd"] ** 2,
             "loss": NOMINAL["L_star"] + NOMINAL["c1"] * math.sqrt(r / n)
             + (0.0 if b >= REFERENCE_BITS else c2 * r * 2.0 ** (-2 * b))}
            for n in examples for r in ranks for b in bits]
    return pl.DataFrame(rows).with_columns((pl.col("seeds") / pl.col("var")).alias("weight"))


def _grid(pts: pl.DataFrame) -> dict:
    return {"bits": sorted(pts["bits"].unique().to_list()), "ranks": sorted(pts["rank"].unique().to_list()),
            "examples": sorted(pts["train_examples"].unique().to_list()), "seeds": int(pts["seeds"].max())}


def design_for(pts: pl.DataFrame, grid: dict, floor: float) -> tuple[freefit.Design, np.ndarray]:
    """The design of a (larger) grid and each point's noise sd: a measured point keeps its seed variance (its
    weight scaled to the new seed count), a new one gets `floor` (the median seed variance)."""
    known = {(r, b, n): (w, s) for r, b, n, w, s in zip(pts["rank"], pts["bits"], pts["train_examples"],
                                                       pts["weight"], pts["seeds"])}
    r, b, n, w = [], [], [], []
    for nn, rr, bb in itertools.product(grid["examples"], grid["ranks"], grid["bits"]):
        if (rr, bb, nn) in known:
            w0, s0 = known[(rr, bb, nn)]
            weight = w0 * grid["seeds"] / s0
        else:
            weight = grid["seeds"] / floor
        r.append(rr), b.append(bb), n.append(nn), w.append(weight)
    d = freefit.make_design(r, b, n, w)
    return d, 1 / np.sqrt(d.w)


def candidates(grid: dict) -> list[tuple[str, dict]]:
    """Additions to try: more widths, ranks, N (×¼ and ×4 around the range), seeds, and a few combinations."""
    widths = [w for w in EXTRA_WIDTHS if w not in grid["bits"]]
    ranks = [r for r in EXTRA_RANKS if r not in grid["ranks"]]
    lo, hi = min(grid["examples"]), max(grid["examples"])
    more_n = [[hi * 4], [max(lo // 4, 1), hi * 4]]
    out: list[tuple[str, dict]] = []

    def add(label, bits=(), ranks_=(), examples=(), seeds=None):
        g = {"bits": sorted(set(grid["bits"]) | set(bits)), "ranks": sorted(set(grid["ranks"]) | set(ranks_)),
             "examples": sorted(set(grid["examples"]) | set(examples)), "seeds": seeds or grid["seeds"]}
        out.append((label, g))

    for k in range(1, len(widths) + 1):
        for ws in itertools.combinations(widths, k):
            add("widths +" + ",".join(map(str, ws)), bits=ws)
    for k in range(1, len(ranks) + 1):
        for rs in itertools.combinations(ranks, k):
            add("ranks +" + ",".join(map(str, rs)), ranks_=rs)
    for ns in more_n:
        add("N +" + ",".join(map(str, ns)), examples=ns)
    for s in (grid["seeds"] + 1, 2 * grid["seeds"]):
        add(f"seeds {s}", seeds=s)
    if widths:
        add(f"widths +{','.join(map(str, widths))}, seeds {2 * grid['seeds']}", bits=widths, seeds=2 * grid["seeds"])
        add(f"widths +{','.join(map(str, widths))}, N +{','.join(map(str, more_n[1]))}", bits=widths,
            examples=more_n[1])
    add(f"ranks +{','.join(map(str, ranks))}, N +{','.join(map(str, more_n[1]))}", ranks_=ranks, examples=more_n[1])
    add("all of the above", bits=widths, ranks_=ranks, examples=more_n[1], seeds=2 * grid["seeds"])
    return out


def cell_seconds(cells: pl.DataFrame | None) -> dict[int, float]:
    """Median wall time of a cell per rank, from the study's cells (empty without them)."""
    if cells is None or "wall_s" not in cells.columns or not cells["wall_s"].is_not_null().any():
        return {}
    t = cells.filter(pl.col("wall_s").is_not_null()).group_by("rank").agg(pl.col("wall_s").median())
    return dict(zip(t["rank"].to_list(), t["wall_s"].to_list()))


def _cost(grid: dict, base: dict, seconds: dict[int, float]) -> tuple[int, float]:
    """Cells the grid adds to `base`, and their cell-hours (NaN without measured times)."""
    def cells_at(g):
        return {(b, r, n, s) for b in g["bits"] for r in g["ranks"] for n in g["examples"] for s in range(g["seeds"])}

    new = cells_at(grid) - cells_at(base)
    if not seconds:
        return len(new), float("nan")
    near = lambda r: seconds[min(seconds, key=lambda k: abs(math.log2(k) - math.log2(r)))]
    return len(new), sum(near(r) for _, r, _, _ in new) / 3600


def plan(pts: pl.DataFrame, cells: pl.DataFrame | None = None, level: float = claims.POWER_LEVEL,
         replicates: int = 100, rng_seed: int = 0, draws: int = DRAWS, only: tuple[str, ...] | None = None,
         additions: list[tuple[str, dict]] | None = None) -> pl.DataFrame:
    """One row per claim the grid cannot decide: its power now, and the cheapest addition (by cells, then
    cell-hours) whose power reaches `level`, or the best one tried. Claims the grid decides are listed with
    `addition` = "none needed".

    power_now is the verdicts' own (power.claim_powers' simulation), so the plan and the bounds page agree.
    `draws` > 0: power_after (the promise) accounts for the fitted nuisance values' uncertainty — the claim and its
    rival are planted at the values fitted on `draws` parametric-bootstrap copies of the study's points (the free
    fit plus its seed noise, refitted), `replicates` simulated data sets spread over them (PER_DRAW each at least),
    the chances averaged, and an addition is chosen when that power clears the level by MC_Z Monte-Carlo sds; 0
    plants them at the values fitted on the study's points alone (aiming exactly at the level). `only`: the claims to plan
    (CLAIMS' keys); `additions`: (label, grid) pairs to try instead of `candidates`."""
    design = design_of(pts)
    y = pts["loss"].to_numpy()
    observed, pairs = _truth_pairs(pts, y)
    exps = power._exps(observed)
    floor = float(pts["var"].drop_nulls().median()) if pts["var"].drop_nulls().len() else float(observed["s2"][0])
    base = _grid(pts)
    seconds = cell_seconds(cells)
    names = [n for n in CLAIMS if only is None or n in only]
    pairs = {k: v for k, v in pairs.items() if k in names}
    per_draw = max(replicates // draws, PER_DRAW) if draws else replicates
    # an addition must reach this power to be chosen: with draws, above the level by the simulation's own error (a
    # power estimated from draws·per_draw data sets that only just reaches the level is short of it half the time)
    aim = level + AIM_ABOVE * (1 - level) + MC_Z * math.sqrt(level * (1 - level) / (draws * per_draw)) \
        if draws else level
    # power now: the verdicts' own (qlbench.analysis.power.claim_powers: the fit's values planted, the measured
    # seed noise, its replicates and seed), so the plan and the bounds page print one power per claim
    now = power.simulate(design, power.noise_sd(pts, design, observed),
                         {k: v for k, v in pairs.items() if _testable(k, design)}, power.REPLICATES, rng_seed, exps)
    if draws:  # each bootstrap copy: a seed variance drawn, new points at it, the claims planted where a refit puts them
        rng = np.random.default_rng(rng_seed + 1)
        sigma2 = _seed_variances(pts, observed, design, draws, rng)
        free = freefit.predict(design, freefit.coefficients(design, y, *exps), *exps)
        seeds0 = pts["seeds"].to_numpy().astype(float) if "seeds" in pts.columns else np.ones(len(y))
        z = rng.standard_normal((draws, len(y)))
        copies = [_truth_pairs(pts, free + np.sqrt(sigma2[i] / seeds0) * z[i])[1] for i in range(draws)]
        pairs = {f"{k}@{i}": c[k] for i, c in enumerate(copies) for k in names if k in c}

    def powers_on(grid):
        d, sd = design_for(pts, grid, floor)
        testable = {k: v for k, v in pairs.items() if _testable(k.split("@")[0], d)}
        if not draws:
            return power.simulate(d, sd, testable, per_draw, rng_seed, exps)
        got = {}
        k = grid["seeds"]
        for i in range(draws):  # per draw: its seed variance, and weights estimated from k seeds as the refit's are
            mine = {key: v for key, v in testable.items() if key.endswith(f"@{i}")}
            wr = np.random.default_rng(rng_seed + 100 + i)
            est = sigma2[i] * (wr.chisquare(k - 1, len(d.r)) / (k - 1) if k >= 2 else np.ones(len(d.r)))
            w = k / np.maximum(est, np.median(est))
            di = freefit.make_design(d.r, d.b, d.n, w)
            got.update(power.simulate(di, np.full(len(d.r), math.sqrt(sigma2[i] / k)), mine, per_draw,
                                      rng_seed + i, exps))
        return _pooled(got)

    rows = []
    tried = [(label, g, _cost(g, base, seconds)) for label, g in (additions or candidates(base))]
    tried.sort(key=lambda t: (t[2][0], t[2][1] if t[2][1] == t[2][1] else 0))
    results = {}
    for name in names:
        text = CLAIMS[name]
        p_now = now.get(name, {}).get("power", float("nan"))
        row = {"claim": text, "power_now": p_now, "testable_now": name in now}
        if name in now and p_now >= level:
            rows.append({**row, "addition": "none needed", "cells": 0, "cell_hours": 0.0, "power_after": p_now,
                         "overlay": "{}"})
            continue
        best = None
        for label, g, (n_cells, hours) in tried:
            if label not in results:
                results[label] = powers_on(g)
            p = results[label].get(name, {}).get("power", float("nan"))
            if p >= aim:
                best = (label, n_cells, hours, p, g)
                break
            if best is None or (p == p and p > best[3]):
                best = (label + (" (best tried; below the level)" if p < level else " (best tried; below the aim)"),
                        n_cells, hours, p, g) if p == p else best
        label, n_cells, hours, p, g = best or ("none of the tried additions", 0, float("nan"), float("nan"), base)
        rows.append({**row, "addition": label, "cells": n_cells, "cell_hours": hours, "power_after": p,
                     "overlay": overlay(g, base)})
    return pl.DataFrame(rows, schema_overrides={"cell_hours": pl.Float64, "power_now": pl.Float64,
                                                "power_after": pl.Float64})


def overlay(grid: dict, base: dict, seeds: list[int] | None = None) -> str:
    """The study keys a config overlay sets to add `grid`'s cells to `base`'s, as studies/*.yaml write them (JSON):
    `bits` (widest first), `ranks`, `n_train`, `seeds` — the whole list, the study's own values kept. Seeds are
    the study's: the grid has no per-cell seeds, so more seeds run every cell of the study again (counted so)."""


    out = {}
    if grid["bits"] != base["bits"]:
        out["bits"] = sorted(grid["bits"], reverse=True)
    if grid["ranks"] != base["ranks"]:
        out["ranks"] = sorted(grid["ranks"])
    if grid["examples"] != base["examples"]:
        out["n_train"] = sorted(int(n) for n in grid["examples"])
    if grid["seeds"] != base["seeds"]:
        out["seeds"] = more_seeds(seeds or list(range(base["seeds"])), grid["seeds"])
    return json.dumps(out)


def more_seeds(seeds: list[int], count: int) -> list[int]:
    """The study's seeds, then the next integers up to `count` seeds in all."""
    out = list(seeds)
    nxt = max(out, default=-1) + 1
    while len(out) < count:
        out.append(nxt)
        nxt += 1
    return out


def _truth_pairs(pts: pl.DataFrame, y: np.ndarray) -> tuple[dict, dict]:
    """The free fit of `y` on the study's points and every claim's (truth, rival truth, value, rival value); c1
    where the grid cannot identify it: the nominal c1 against 0, to be planted on the larger grids."""
    design = design_of(pts)
    if not np.array_equal(y, pts["loss"].to_numpy()):
        pts = pts.with_columns(pl.Series("loss", y))
    observed = freefit.profile(design, y, freefit.grid_for(design))
    exps = power._exps(observed)
    x = claims.c1_columns(design, exps)
    if x is not None:
        observed.update(claims.c1_test(design, x, y))
    pairs = power.truths(pts, observed)
    if "c1" not in pairs:
        c2 = _c2(pts, observed)
        pairs["c1"] = (power.Truth(*exps, (0, 0, 0), design.n0, linear=(float(np.mean(y)), NOMINAL["c1"], 0.0, c2)),
                       power.Truth(*exps, (0, 0, 0), design.n0, linear=(float(np.mean(y)), 0.0, 0.0, c2)),
                       NOMINAL["c1"], 0.0)
    return observed, pairs


def _seed_variances(pts: pl.DataFrame, observed: dict, design: freefit.Design, draws: int, rng) -> np.ndarray:
    """`draws` values of the seed variance of one cell, from its sampling distribution (σ² = pooled·dof/χ²_dof):
    pooled over the points' seed variances (dof = Σ(seeds − 1)); with one seed, the free fit's residual variance
    (dof = points − parameters)."""
    var = pts["var"].to_numpy().astype(float) if "var" in pts.columns else np.full(len(pts), np.nan)
    seeds = pts["seeds"].to_numpy().astype(float) if "seeds" in pts.columns else np.ones(len(var))
    ok = np.isfinite(var) & (seeds >= 2)
    if ok.any():
        dof = float(np.sum(seeds[ok] - 1))
        pooled = float(np.sum((seeds[ok] - 1) * var[ok]) / dof)
    else:
        dof = float(max(len(design.r) - freefit.n_params(design), 1))
        pooled = float(observed["s2"][0]) / float(np.mean(design.w))
    return pooled * dof / rng.chisquare(dof, draws)


def _pooled(got: dict) -> dict:
    """Per claim, its chances averaged over the nuisance draws (keys `claim@i`); the power is the smaller."""
    out: dict = {}
    for key, v in got.items():
        out.setdefault(key.split("@")[0], []).append(v)
    pooled = {}
    for name, vs in out.items():
        pc, pr = float(np.mean([v["power_if_claim"] for v in vs])), float(np.mean([v["power_if_rival"] for v in vs]))
        pooled[name] = {**vs[0], "power_if_claim": pc, "power_if_rival": pr, "power": min(pc, pr),
                        "replicates": sum(v["replicates"] for v in vs)}
    return pooled


def _testable(name: str, d: freefit.Design) -> bool:
    widths = len(np.unique(d.b[d.b < REFERENCE_BITS]))
    if name == "beta":
        return d.multi_n and widths >= 2
    if name in ("rho", "ratio"):
        return len(np.unique(d.r)) >= 2 and widths >= 2
    if name == "kappa":
        return widths >= 2
    return True


def _c2(pts: pl.DataFrame, observed: dict) -> float:
    d = design_of(pts)
    return float(freefit.coefficients(d, pts["loss"].to_numpy(), *power._exps(observed))[2])


def markdown(table: pl.DataFrame, study: str, level: float, nominal: bool, timed: bool) -> str:
    from qlbench.analysis.tables import markdown as md

    view = table.select("claim", pl.col("power_now").round(2), "addition", "cells",
                        pl.col("cell_hours").round(2), pl.col("power_after").round(2))
    notes = [f"Power: the chance of deciding the claim against its rival correctly (level {level}). power_now is "
             "the verdicts' own (the bounds page's: the fit's values planted with the measured seed noise); "
             "power_after, the promise, also draws the fitted nuisance values and the seed variance from their "
             "uncertainty (parametric-bootstrap copies of the fit), so it is the chance after refitting on the new "
             "cells, not only in a simulation from the old fit."]
    if nominal:
        notes.append("No cells yet: the plan plants a nominal law (the bound, L* = 2, c1 = 0.5, a 4-bit gap of 0.02 "
                     "nats at rank 8, seed sd 0.003 nats); rerun it once cells exist.")
    if not timed:
        notes.append("cell_hours: unknown until cells with a measured wall time exist.")
    return md(view, f"{study}: the cells that would decide each bounds claim") + "\n" + " ".join(notes) + "\n"


# The contract `qlbench adapt` reads: one row per verdict, these columns (plan.parquet holds them).
VERDICT_COLUMNS = {"kind": pl.String, "verdict": pl.String, "decided": pl.Boolean, "testable_now": pl.Boolean,
                   "power_now": pl.Float64, "addition": pl.String, "overlay": pl.String, "cells": pl.Int64,
                   "cell_hours": pl.Float64, "power_after": pl.Float64}
KINDS = ("bounds", "sensitivity", "recommendation", "paired_gap", "backend")


def verdict_plan(st, root, level: float = claims.POWER_LEVEL, replicates: int = 100) -> pl.DataFrame:
    """verdict_plan(st: qlbench.study.config.Study, root: Path, level=0.8, replicates=100) -> pl.DataFrame

    Every verdict of study `st` (its cells under root/st.name/cells.parquet; a nominal bounds plan before any),
    one row each, the columns of VERDICT_COLUMNS:
    - kind: bounds | sensitivity | recommendation | paired_gap | backend
    - verdict: the claim or gap in words; decided: its power now ≥ level (bounds) or its interval already
      decides it (seed-paired kinds); testable_now: the grid has what its test needs
    - power_now, and power_after with `addition` (a label) made: the cheapest tried addition reaching `level`
      (else the best tried, the label says so; "none needed" when decided)
    - overlay: JSON of the study keys a config overlay sets to add those cells, as studies/*.yaml write them —
      `bits`, `ranks`, `n_train`, `seeds` (whole lists, the study's own values first; `{}` when nothing is added).
      Seeds are study-wide (the grid has no per-cell seeds): more seeds rerun every cell of the study with the new
      seeds, and `cells`/`cell_hours` count them all.
    - cells, cell_hours: what the addition adds, hours from the study's measured wall time per cell (NaN without).
    The seed-paired kinds' power accounts for the measured seeds' own uncertainty (qlbench.analysis.seed_power);
    the bounds plan's, for the fitted nuisance values' (`plan`, nuisance draws)."""
    from pathlib import Path

    from qlbench.analysis import seed_power, seed_verdicts

    folder = Path(root) / st.name
    cells_path = folder / "cells.parquet"
    cells = pl.read_parquet(cells_path) if cells_path.exists() else None
    rows: list[dict] = []
    bounds_table = _bounds_table(st, cells, level, replicates)
    if bounds_table is not None:
        for r in bounds_table.iter_rows(named=True):
            rows.append({"kind": "bounds", "verdict": r["claim"], "decided": r["addition"] == "none needed",
                         "testable_now": r["testable_now"], "power_now": r["power_now"], "addition": r["addition"],
                         "overlay": _study_overlay(r["overlay"], st, cells), "cells": r["cells"],
                         "cell_hours": r["cell_hours"], "power_after": r["power_after"]})
    if cells is not None and cells.height:
        per_seed_cells, per_seed_hours = _seed_cost(cells)
        for g in seed_verdicts.collect(cells, folder):
            x = g["x"]
            testable = len(x) >= 2
            done = seed_power.decided(x)
            p_now = seed_power.power_fresh(x, replicates=max(replicates, 400)) if testable else float("nan")
            row = {"kind": g["kind"], "verdict": g["verdict"], "decided": done, "testable_now": testable,
                   "power_now": 1.0 if done else p_now}
            if done:
                rows.append({**row, "addition": "none needed", "overlay": "{}", "cells": 0, "cell_hours": 0.0,
                             "power_after": 1.0})
                continue
            n = len(x)
            if not testable:  # one seed: the next seed gives it an interval
                m, p = 1, float("nan")
            else:
                m, p = seed_power.seeds_needed(x, level, replicates=max(replicates, 400))
            label = f"seeds {n + m} (+{m}) for {g['named']}" + ("" if p >= level else " (best tried; below the level)")
            rows.append({**row, "addition": label, "overlay": json.dumps({"seeds": more_seeds(list(st.seeds), n + m)}),
                         "cells": m * per_seed_cells, "cell_hours": m * per_seed_hours, "power_after": p})
    return pl.DataFrame(rows, schema=VERDICT_COLUMNS)


def _bounds_table(st, cells, level, replicates) -> pl.DataFrame | None:
    """The bounds plan of the study's cells (its first model), a nominal one before any, None without a bounds
    grid (16-bit cells and quantized cells of mask `all`)."""
    from qlbench.analysis import bounds

    pts = None
    if cells is not None and cells.height:
        one = cells.filter(pl.col("model") == sorted(cells["model"].unique().to_list())[0])
        pts = bounds.points(one)
        if pts.height < 4 or pts.filter(pl.col("bits") < 16).is_empty() or pts.filter(pl.col("bits") >= 16).is_empty():
            return None
        return plan(pts, one, level, replicates)
    masks = {m for ms in st.masks.values() for m in ms}
    if 16 not in st.bits or not [b for b in st.bits if b < 16] or "all" not in masks:
        return None
    examples = sorted({n or 1000 for n in st.n_train})
    return plan(nominal_points(st.bits, st.ranks, examples, len(st.seeds)), None, level, replicates)


def _study_overlay(text: str, st, cells) -> str:
    """The bounds plan's overlay in the study's own values: its seeds, and `n_train` as the study writes it (an N
    the study leaves at its default stays null, so its cells keep their identities)."""
    o = json.loads(text)
    if "seeds" in o:
        o["seeds"] = more_seeds(list(st.seeds), len(o["seeds"]))
    if "n_train" in o:
        measured = set(cells["train_examples"].drop_nulls().unique().to_list()) if cells is not None and \
            "train_examples" in cells.columns else set()
        own = [n for n in st.n_train]
        o["n_train"] = own + [n for n in o["n_train"] if n not in measured and n not in own]
    return json.dumps(o)


def _seed_cost(cells: pl.DataFrame) -> tuple[int, float]:
    """Cells one more study-wide seed adds, and their hours (the mean wall time of each cell over its seeds)."""
    keys = [k for k in ("model", "bits", "rank", "mask", "n_train") if k in cells.columns]
    one = cells.group_by(keys).agg(pl.col("wall_s").mean() if "wall_s" in cells.columns else pl.lit(None))
    hours = float(one["wall_s"].sum()) / 3600 if "wall_s" in one.columns and one["wall_s"].is_not_null().any() \
        else float("nan")
    return one.height, hours


def verdict_markdown(table: pl.DataFrame, study: str, level: float) -> str:
    """One table per kind."""
    from qlbench.analysis.tables import markdown as md

    titles = {"bounds": "the bounds claims", "sensitivity": "the sensitivity ranks and the top-k set",
              "recommendation": "the recommendation's predicted degradation",
              "paired_gap": "the paired gaps (QaLoF's, robustness's)", "backend": "the backend comparisons"}
    parts = []
    for kind in KINDS:
        t = table.filter(pl.col("kind") == kind)
        if t.is_empty():
            continue
        view = t.select("verdict", "decided", pl.col("power_now").round(2), "addition", "cells",
                        pl.col("cell_hours").round(3), pl.col("power_after").round(2))
        parts.append(md(view, f"{study}: what would decide {titles[kind]} (level {level})"))
    return "\n".join(parts)
