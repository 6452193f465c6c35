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


def bounds_figure(cells: pl.DataFrame, gaps: pl.DataFrame, fits: pl.DataFrame, bstar: pl.DataFrame,
                  noise: pl.DataFrame, path: Path, title: str) -> None:
    """The bounds study's nine panels: loss and gap against bits, the gap against each term of the bound, the fit
    and its rivals, gradient variance, b*(r), and the noise-model simulation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    full = fits.filter(pl.col("model") == "full").row(0, named=True)
    predict = lambda r, b, n: full["c0"] + full["c1"] * np.sqrt(r / n) + full["c2"] * r * 2.0 ** (-2 * b)
    fig, axes = plt.subplots(3, 3, figsize=(14, 12), dpi=110)
    ax = axes.ravel()
    series = list(gaps.sort("bits").group_by(["model", "rank", "train_examples"], maintain_order=True))
    colors = {key: f"C{i % 10}" for i, (key, _) in enumerate(series)}
    label = lambda key: f"{key[0]} r={key[1]} N={key[2]}"

    loss = cells.group_by("model", "rank", "train_examples", "bits").agg(
        pl.col("eval_loss").mean().alias("m"), pl.col("eval_loss").std().alias("sd")).sort("bits")
    for key, g in loss.group_by(["model", "rank", "train_examples"], maintain_order=True):
        ax[0].errorbar(g["bits"], g["m"], yerr=g["sd"].fill_null(0), marker="o", capsize=2,
                       color=colors.get(key, "k"), label=label(key))
    ax[0].set(xlabel="bits", ylabel="eval loss", title="eval loss after LoRA")
    for key, g in series:
        b = np.linspace(g["bits"].min(), g["bits"].max(), 40)
        ax[1].errorbar(g["bits"], g["gap"].abs().clip(1e-6), yerr=g["gap_sd"].fill_null(0), ls="", marker="o",
                       capsize=2, color=colors[key])
        ax[1].plot(b, np.clip(predict(key[1], b, key[2]), 1e-6, None), color=colors[key], alpha=0.6)
        term = key[1] * 2.0 ** (-2 * g["bits"].to_numpy())
        ax[2].plot(term, g["gap"], marker="o", ls="", color=colors[key])
        ax[3].plot(np.sqrt(key[1] / key[2]) * np.ones(g.height), g["gap"], marker="o", ls="", color=colors[key])
    ax[1].set(yscale="log", xlabel="bits", ylabel="|gap to 16 bits|", title=f"gap and fitted bound (R² {full['r2']:.3f})")
    ax[2].set(xscale="log", xlabel="r·2^(−2b)", ylabel="gap", title="the bit term: linear if the bound holds")
    ax[3].set(xlabel="√(r/N)", ylabel="gap", title="the statistical term")
    fitted = [predict(r, b, n) for r, b, n in zip(gaps["rank"], gaps["bits"], gaps["train_examples"])]
    ax[4].plot(fitted, gaps["gap"], "o")
    lim = [min(min(fitted), gaps["gap"].min()), max(max(fitted), gaps["gap"].max())]
    ax[4].plot(lim, lim, "k--", alpha=0.5)
    ax[4].set(xlabel="fitted gap", ylabel="measured gap", title=f"fit: LOO RMSE {full['loo_rmse']:.4f}")
    x = np.arange(fits.height)
    ax[5].bar(x - 0.2, fits["r2"].fill_nan(0), 0.4, label="R²")
    ax[5].bar(x + 0.2, fits["loo_rmse"].fill_nan(0), 0.4, label="LOO RMSE")
    ax[5].set_xticks(x, fits["model"].to_list(), fontsize=8)
    ax[5].set(title="the bound against simpler models")
    if "grad_var_mean" in cells.columns and cells["grad_var_mean"].fill_null(float("nan")).is_finite().any():
        gv = cells.group_by("model", "rank", "train_examples", "bits").agg(pl.col("grad_var_mean").mean()).sort("bits")
        for key, g in gv.group_by(["model", "rank", "train_examples"], maintain_order=True):
            ax[6].plot(g["bits"], g["grad_var_mean"], marker="o", color=colors.get(key, "k"))
        ax[6].set(yscale="log", xlabel="bits", ylabel="σ_g² (LoRA gradients)", title="gradient variance")
    else:
        ax[6].text(0.5, 0.5, "no gradient variance measured\n(set grad_var_points)", ha="center", va="center")
    ax[7].plot(bstar["rank"], bstar["b_star_exact"], "o-", label="½·log₂(c₂·r/ε)")
    ax[7].step(bstar["rank"], bstar["b_star"], where="mid", label="b* (whole bits)")
    ax[7].set(xscale="log", xlabel="rank", ylabel="bits",
              title=f"b*(r): gap term within ε = {bstar['tolerance'][0]:g}")
    ax[7].set_xticks(bstar["rank"].to_list(), [str(r) for r in bstar["rank"]])
    ax[7].minorticks_off()
    for (rank,), g in noise.sort("bits").group_by(["rank"], maintain_order=True):
        points = ax[8].plot(g["bits"], g["measured"], marker="o", ls="", label=f"r={rank}")
        ax[8].plot(g["bits"], g["predicted"], color=points[0].get_color(), alpha=0.6)
    ax[8].set(yscale="log", xlabel="bits of A and B", ylabel="E‖ΔW_q − ΔW‖² per entry",
              title="noise model: Monte-Carlo (dots) vs Δ²/12 (lines)")
    for a in ax:
        a.grid(alpha=0.3)
    for a in (ax[0], ax[5], ax[7], ax[8]):
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
        if "estimate_spearman" in g.columns and g["estimate_spearman"][0] is not None:
            extra += f", one-pass estimate ρ {g['estimate_spearman'][0]:.2f}"
        ax.set_title(f"{model} r={rank}: one {lvl} at {bits} bits{extra}", fontsize=9)
        ax.set_ylabel("Δ eval loss")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
