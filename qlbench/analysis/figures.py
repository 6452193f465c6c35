"""Figures (matplotlib, PNG). Imported only by the commands that draw."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def _lines(table: pl.DataFrame):
    """(label, rows) per model, n_train, rank and mask: its quantized rows plus the 16-bit reference, with `gap`."""
    keys = [k for k in ("model", "n_train", "rank") if k in table.columns]
    for key, group in table.filter(pl.col("bits") < 16).group_by([*keys, "mask"], maintain_order=True):
        coords = dict(zip([*keys, "mask"], key))
        ref = table.filter(pl.col("bits") == 16, *(pl.col(k).eq_missing(coords[k]) for k in keys))
        line = pl.concat([group, ref], how="diagonal_relaxed").sort("bits")
        if not ref.is_empty():
            line = line.with_columns((pl.col("eval_loss_mean") - ref["eval_loss_mean"][0]).alias("gap"))
        label = f"{coords['model']} r={coords['rank']}"
        label += f" n={coords['n_train']}" if coords.get("n_train") is not None else ""
        label += "" if coords["mask"] == "all" else f" {coords['mask']}"
        yield label, line


def eval_loss_vs_bits(table: pl.DataFrame, path: Path, title: str) -> None:
    """Left: eval loss after LoRA against bit width (error bars: sd over seeds). Right: the gap to 16 bits, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    ticks = sorted(set(table["bits"].to_list()))
    for label, line in _lines(table):
        bits = line["bits"].to_list()
        ax.errorbar(bits, line["eval_loss_mean"].to_list(), yerr=line["eval_loss_sd"].fill_null(0).to_list(),
                    marker="o", capsize=3, label=label)
        if "gap" in line.columns:
            q = line.filter(pl.col("bits") < 16)
            gap_ax.plot(q["bits"].to_list(), q["gap"].abs().clip(1e-5).to_list(), marker="o", label=label)
    ax.set_ylabel("eval loss after LoRA")
    gap_ax.set_ylabel("|eval loss − 16-bit eval loss|")
    gap_ax.set_yscale("log")
    for a, a_ticks in ((ax, ticks), (gap_ax, [t for t in ticks if t < 16])):
        a.set_xlabel("bits of the quantized layers (16 = not quantized)")
        a.set_xscale("log", base=2)
        a.set_xticks(a_ticks, [str(t) for t in a_ticks])
        a.minorticks_off()
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def bounds_figure(gaps: pl.DataFrame, fits: pl.DataFrame, noise: pl.DataFrame, path: Path, title: str) -> None:
    """Left: measured gap to 16 bits against bits, per rank, with the fitted bound. Right: the noise-model check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    full = fits.filter(pl.col("model") == "full").row(0, named=True)
    fig, (ax, sim_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for (model, rank), g in gaps.sort("bits").group_by(["model", "rank"], maintain_order=True):
        line = ax.errorbar(g["bits"].to_list(), g["gap"].abs().clip(1e-6).to_list(),
                           yerr=g["gap_sd"].fill_null(0).to_list(), marker="o", ls="", capsize=3,
                           label=f"{model} r={rank} measured")
        b = np.linspace(g["bits"].min(), g["bits"].max(), 50)
        n = g["train_examples"][0]
        fitted = full["c0"] + full["c1"] * np.sqrt(rank / n) + full["c2"] * rank * 2.0 ** (-2 * b)
        ax.plot(b, fitted, color=line[0].get_color(), alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("bits")
    ax.set_ylabel("eval-loss gap to 16 bits")
    ax.set_title(f"fit c0 + c1·√(r/N) + c2·r·2^(−2b): R² = {full['r2']:.3f}", fontsize=9)
    for (rank,), g in noise.sort("bits").group_by(["rank"], maintain_order=True):
        points = sim_ax.plot(g["bits"].to_list(), g["measured"].to_list(), marker="o", ls="", label=f"r={rank}")
        sim_ax.plot(g["bits"].to_list(), g["predicted"].to_list(), color=points[0].get_color(), alpha=0.6)
    sim_ax.set_yscale("log")
    sim_ax.set_xlabel("bits of A and B")
    sim_ax.set_ylabel("E‖ΔW_q − ΔW‖² per entry")
    sim_ax.set_title("noise model: Monte-Carlo (dots) vs Δ²/12 prediction (lines)", fontsize=9)
    for a in (ax, sim_ax):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sensitivity_figure(ranked: pl.DataFrame, path: Path, title: str) -> None:
    """Degradation per block / module (mean and 95% CI over seeds), most sensitive first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(ranked.group_by(["model", "rank", "bits", "level"], maintain_order=True))
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2.2 + 0.18 * max(g.height for _, g in groups)),
                             dpi=120, squeeze=False)
    for ax, ((model, rank, bits, lvl), g) in zip(axes[:, 0], groups):
        g = g.sort("rank_measured")
        ax.bar(range(g.height), g["degradation"].to_list(), yerr=g["ci95"].fill_null(0).to_list(), capsize=2)
        ax.set_xticks(range(g.height), g["mask"].to_list(), rotation=60, ha="right", fontsize=7)
        stability = g["rank_stability"][0]
        extra = f", rank stability {stability:.2f}" if stability is not None else ""
        ax.set_title(f"{model} r={rank}: one {lvl} at {bits} bits{extra}", fontsize=9)
        ax.set_ylabel("Δ eval loss")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
