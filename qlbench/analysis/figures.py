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


def plt_agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
            extra += (f", one-pass estimate ρ {g['estimate_spearman'][0]:.2f}"
                      + (f" (p {g['estimate_p'][0]:.2g})" if "estimate_p" in g.columns and g['estimate_p'][0] is not None else ""))
        ax.set_title(f"{model} r={rank}: one {lvl} at {bits} bits{extra}", fontsize=9)
        ax.set_ylabel("Δ eval loss")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def qlora_figure(cells: pl.DataFrame, pairs: pl.DataFrame, layers: pl.DataFrame, rstar: pl.DataFrame, path: Path,
                 title: str) -> None:
    """The QLoRA study's four panels: peak memory of LoRA (16-bit base) against QLoRA (quantized base) per rank;
    similarity against rank with the threshold and r*; the per-layer ΔW cosine matrix (module × rank) at the
    lowest width; and the target variants compared. A panel the grid cannot fill says so."""
    import numpy as np

    plt = plt_agg()
    fig, axes = plt.subplots(2, 2, figsize=(14, 10), dpi=100)
    ax = axes.ravel()
    mem = "peak_mem_mb" if "peak_mem_mb" in cells.columns and cells["peak_mem_mb"].is_not_null().any() else None
    if mem:
        m = cells.group_by("rank", "bits").agg(pl.col(mem).mean(), pl.col("weight_mem_mb").mean()
                                               if "weight_mem_mb" in cells.columns else pl.lit(None).alias("w"))
        ranks = sorted(m["rank"].unique().to_list())
        widths = sorted(m["bits"].unique().to_list(), reverse=True)
        x = np.arange(len(ranks))
        for i, b in enumerate(widths):
            g = {r["rank"]: r[mem] for r in m.filter(pl.col("bits") == b).iter_rows(named=True)}
            ax[0].bar(x + (i - (len(widths) - 1) / 2) * 0.8 / len(widths), [g.get(r, 0) for r in ranks],
                      0.8 / len(widths), label="LoRA (16-bit base)" if b == 16 else f"QLoRA ({b}-bit base)")
        ax[0].set_xticks(x, [str(r) for r in ranks])
        ax[0].set(xlabel="rank", ylabel="peak memory (MB)", title="memory: LoRA vs QLoRA per rank")
        ax[0].legend(fontsize=8)
    else:
        ax[0].axis("off")
        ax[0].text(0.5, 0.5, "no peak memory recorded", ha="center", va="center")
    if rstar.height:
        widths = sorted(rstar["bits"].unique().to_list())
        styles = {m: ls for m, ls in zip(sorted(rstar["metric"].unique().to_list()), ("-", "--", ":", "-."))}
        for r in rstar.iter_rows(named=True):
            color = f"C{widths.index(r['bits']) % 10}"
            ax[1].plot(r["ranks"], r["similarity"], marker="o", ls=styles[r["metric"]], color=color,
                       label=f"{r['bits']} bits, {r['metric']}: r* = {r['r_star'] if r['r_star'] is not None else '–'}")
        ax[1].axhline(rstar["threshold"][0], color="k", ls="--", lw=0.8)
        all_ranks = sorted({x for rs in rstar["ranks"].to_list() for x in rs})
        ax[1].set(xscale="log", xlabel="rank", ylabel="similarity to the 16-bit cell",
                  title=f"rank threshold: r* = smallest rank with similarity ≥ {rstar['threshold'][0]:g}")
        ax[1].set_xticks(all_ranks, [str(x) for x in all_ranks])
        ax[1].minorticks_off()
        ax[1].legend(fontsize=6, ncol=2)
    else:
        ax[1].axis("off")
        ax[1].text(0.5, 0.5, "no quantized/16-bit pairs: no r*", ha="center", va="center")
    if layers.height and "dw_cos" in layers.columns:
        shown = 4 if 4 in layers["bits"].to_list() else layers["bits"].min()  # QLoRA's width where scanned
        low = layers.filter(pl.col("bits") == shown)
        mat = low.group_by("module", "rank").agg(pl.col("dw_cos").mean()).pivot(on="rank", index="module",
                                                                                   values="dw_cos")
        rank_cols = sorted((c for c in mat.columns if c != "module"), key=int)
        mat = mat.sort("module")
        image = ax[2].imshow(mat.select(rank_cols).to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax[2].set_xticks(range(len(rank_cols)), rank_cols)
        ax[2].set_yticks(range(mat.height), [m.replace("base_model.model.", "") for m in mat["module"]], fontsize=6)
        ax[2].set(xlabel="rank", title=f"per-layer cos(ΔW, ΔW_16) at {low['bits'][0]} bits (mean over seeds)")
        for (i, j), v in np.ndenumerate(mat.select(rank_cols).to_numpy()):
            ax[2].text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        fig.colorbar(image, ax=ax[2])
    else:
        ax[2].axis("off")
        ax[2].text(0.5, 0.5, "no per-layer ΔW similarity", ha="center", va="center")
    if pairs.height and "targets" in pairs.columns and pairs["targets"].drop_nulls().n_unique() > 1:
        t = pairs.group_by("targets", "rank").agg(pl.col("dw_cos_mean").mean(), pl.col("eval_loss_delta").mean())
        for target, g in t.sort("rank").group_by(["targets"], maintain_order=True):
            ax[3].plot(g["rank"], g["eval_loss_delta"], "o-", label=f"{target[0]}")
        ax[3].set(xscale="log", xlabel="rank", ylabel="eval loss, quantized − 16-bit",
                  title="target variants: cost of the quantized base")
        ax[3].legend(fontsize=8)
    else:
        ax[3].axis("off")
        ax[3].text(0.5, 0.5, "one LoRA target set in this study:\nno target-variant comparison", ha="center",
                   va="center")
    for a in ax[:2]:
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
