"""The bounds study's figures (matplotlib, PNG): the nine panels A–I, the gap view, the noise check."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.analysis.figures import plt_agg


def _predict(form: dict, r, b, n, g=1.0):
    """The fitted loss L(r, b, N) of one form (a row of fits.parquet)."""
    from qlbench.analysis.bounds import predict

    return predict(form, r, b, n, g)


def bounds_figure(cells: pl.DataFrame, pts: pl.DataFrame, fits: pl.DataFrame, bstar: pl.DataFrame,
                  grad: pl.DataFrame, verdicts: pl.DataFrame, path: Path, title: str) -> None:
    """The bounds paper's nine panels: A bits vs eval loss, B rank sensitivity, C gradient-variance scaling,
    D fitted vs measured, E perplexity distributions, F training efficiency, G the b* rule, H the error-bound
    decomposition, I findings (the verdict table). A panel the grid cannot fill says so."""
    import numpy as np

    from qlbench.analysis.bounds import fit_cells
    from qlbench.analysis.stats import spearman

    plt = plt_agg()
    best = fits.filter(pl.col("supported")).row(0, named=True)
    used = fit_cells(cells)
    fig, axes = plt.subplots(3, 3, figsize=(16, 13), dpi=100)
    ax = axes.ravel()
    bits_ticks = sorted(pts["bits"].unique().to_list())
    g = pts["grad_var_rel"].fill_null(1.0).to_numpy() if "grad_var_rel" in pts.columns else 1.0
    fitted, sqrt_part, bit_part = _predict(best, pts["rank"], pts["bits"], pts["train_examples"], g)
    pts = pts.with_columns(pl.Series("fitted", fitted), pl.Series("sqrt_term", sqrt_part),
                           pl.Series("bit_term", bit_part), (pl.col("var").fill_null(0) / pl.col("seeds")).sqrt()
                           .alias("se"))
    for i, ((r, n), p) in enumerate(pts.sort("bits").group_by(["rank", "train_examples"], maintain_order=True)):
        ax[0].errorbar(p["bits"], p["loss"], yerr=p["se"], marker="o", ls="", capsize=2, color=f"C{i % 10}",
                       label=f"r={r} N={n}")
        ax[0].plot(p["bits"], p["fitted"], color=f"C{i % 10}", alpha=0.6)
    ax[0].set(xlabel="bits (16 = not quantized)", ylabel="eval loss", xscale="log",
              title=f"A  bits vs eval loss; lines: `{best['form']}` fit")
    ax[0].set_xticks(bits_ticks, [str(b) for b in bits_ticks])
    ax[0].minorticks_off()
    for i, ((b, n), p) in enumerate(pts.sort("rank").group_by(["bits", "train_examples"], maintain_order=True)):
        ax[1].errorbar(p["rank"], p["loss"], yerr=p["se"], marker="o", capsize=2, color=f"C{i % 10}",
                       label=f"{b} bits N={n}")
    ax[1].set(xscale="log", xlabel="LoRA rank", ylabel="eval loss", title="B  rank sensitivity")
    rank_ticks = sorted(pts["rank"].unique().to_list())
    ax[1].set_xticks(rank_ticks, [str(r) for r in rank_ticks])
    ax[1].minorticks_off()
    if "grad_var_mean" in used.columns and used["grad_var_mean"].is_finite().fill_null(False).any():
        gv = (used.filter(pl.col("grad_var_mean").is_finite()).group_by("rank", "bits")
              .agg(pl.col("grad_var_mean").mean()).sort("bits"))
        for i, ((r,), p) in enumerate(gv.group_by(["rank"], maintain_order=True)):
            ax[2].plot(p["bits"], p["grad_var_mean"], marker="o", color=f"C{i % 10}", label=f"r={r}")
        slopes = "; ".join(f"{s['term']} {s['measured_slope']:+.2f} [{s['ci_lo']:+.2f}, {s['ci_hi']:+.2f}] "
                           f"(pred. {s['predicted_slope']:+.0f})" for s in grad.iter_rows(named=True)) if grad.height else ""
        ax[2].set(yscale="log", xlabel="bits", ylabel="σ_g²", title="C  gradient variance\n" + slopes)
    else:
        ax[2].axis("off")
        ax[2].text(0.5, 0.5, "C  gradient variance\nnot measured in this study\n(grad_var_points: 0)", ha="center",
                   va="center")
    rho = spearman(pts["fitted"].to_numpy(), pts["loss"].to_numpy())
    pear = float(np.corrcoef(pts["fitted"].to_numpy(), pts["loss"].to_numpy())[0, 1])
    ax[3].errorbar(pts["fitted"], pts["loss"], yerr=pts["se"], ls="", marker="o", capsize=2)
    lim = [min(pts["fitted"].min(), pts["loss"].min()), max(pts["fitted"].max(), pts["loss"].max())]
    ax[3].plot(lim, lim, "k--", alpha=0.5)
    ax[3].set(xlabel=f"predicted ({best['form']})", ylabel="measured eval loss",
              title=f"D  predicted vs measured: Pearson {pear:.3f}, Spearman {rho:.3f}")
    widths = sorted(used["bits"].unique().to_list())
    ax[4].boxplot([used.filter(pl.col("bits") == b)["eval_loss"].exp().to_list() for b in widths],
                  tick_labels=[str(b) for b in widths])
    ax[4].set(xlabel="bits", ylabel="eval perplexity (cells)", yscale="log", title="E  perplexity distributions")
    eff = [c for c in ("step_time_s", "peak_mem_mb") if c in used.columns and used[c].is_not_null().any()]
    if eff:
        e = used.group_by("bits").agg(*(pl.col(c).mean() for c in eff)).sort("bits")
        ax[5].plot(e["bits"].cast(str), e[eff[0]], "o-", label=eff[0])
        ax[5].set(xlabel="bits", ylabel=eff[0], title="F  training efficiency")
        if len(eff) > 1:
            twin = ax[5].twinx()
            twin.plot(e["bits"].cast(str), e[eff[1]], "s--", color="C1", label=eff[1])
            twin.set_ylabel(eff[1])
    else:
        ax[5].axis("off")
        ax[5].text(0.5, 0.5, "F  training efficiency:\nno timing or memory recorded", ha="center", va="center")
    for i, ((n,), p) in enumerate(bstar.group_by(["train_examples"], maintain_order=True)):
        ax[6].plot(p["rank"], p["b_star_exact"].replace(float("-inf"), None), "o-", color=f"C{i % 10}",
                   label=f"b* within ε={p['tolerance'][0]:g}, N={n}")
        if p["b_star_vs_sqrt"].is_not_nan().any():
            ax[6].plot(p["rank"], p["b_star_vs_sqrt"], "s--", color=f"C{i % 10}", alpha=0.6,
                       label=f"b*: bit term ≤ √(r/N) term, N={n}")
    ax[6].set(xscale="log", xlabel="rank", ylabel="bits", title=f"G  b*(r, N) from `{best['form']}`")
    ax[6].set_xticks(bstar["rank"].unique().sort().to_list(), [str(r) for r in bstar["rank"].unique().sort()])
    ax[6].minorticks_off()
    n0 = pts["train_examples"].min()
    quant = pts.filter((pl.col("bits") < 16) & (pl.col("train_examples") == n0)).sort("rank", "bits")
    labels = [f"r{r}/{b}b" for r, b in zip(quant["rank"], quant["bits"])]
    x = np.arange(quant.height)
    ax[7].bar(x - 0.2, quant["sqrt_term"].clip(1e-6), 0.4, label="c1·√(r/N) (a·log₂ r for rank_trend)")
    ax[7].bar(x + 0.2, quant["bit_term"].clip(1e-6), 0.4, label="quantization term")
    ax[7].set_xticks(x, labels, rotation=70, fontsize=7)
    ax[7].set(yscale="log", ylabel="nats above L*",
              title=f"H  bound decomposition at N={n0} (L* = {best['L_star']:.3f})")
    ax[8].axis("off")
    def line(v):
        number = "" if v["measured"] != v["measured"] else f"{v['measured']:.3g}"
        if v["ci_lo"] == v["ci_lo"]:
            number += f" [{v['ci_lo']:.3g}, {v['ci_hi']:.3g}]"
        pred = "" if v["predicted"] != v["predicted"] else f" vs {v['predicted']:.3g}"
        pw = v.get("power")
        power = "" if pw is None or pw != pw else f"; power {pw:.2f} against {v['rival']:.3g}"
        return f"{v['verdict'].upper()}\n  {v['claim']}\n  measured {number or '–'}{pred}{power}"

    text = "\n".join(line(v) for v in verdicts.iter_rows(named=True))
    ax[8].text(0, 1, f"I  findings (supported form: {best['form']}, R² {best['r2']:.3f})\n\n" + text, va="top",
               fontsize=7)
    for a in ax[:8]:
        a.grid(alpha=0.3)
    for a in (ax[0], ax[1], ax[2], ax[6], ax[7]):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def gap_figure(gaps: pl.DataFrame, best: dict, path: Path, title: str) -> None:
    """The gap view: measured gap to the 16-bit cell (mean ± sd over seeds) against bits, log scale, with the
    supported form's bit term (its √(r/N) term cancels on a gap)."""
    import numpy as np

    plt = plt_agg()
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for i, ((r, n), g) in enumerate(gaps.sort("bits").group_by(["rank", "train_examples"], maintain_order=True)):
        ax.errorbar(g["bits"], g["gap"].clip(1e-6), yerr=g["gap_sd"].fill_null(0), ls="", marker="o", capsize=2,
                    color=f"C{i % 10}", label=f"r={r} N={n}")
        b = np.linspace(g["bits"].min(), g["bits"].max(), 50)
        _, _, bit = _predict(best, np.full_like(b, r), b, np.full_like(b, n))
        ax.plot(b, np.clip(bit, 1e-6, None), color=f"C{i % 10}", alpha=0.6)
    ax.set(yscale="log", xlabel="bits", ylabel="eval-loss gap to 16 bits", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def noise_figure(noise: pl.DataFrame, path: Path, title: str) -> None:
    """Measured quantization-error variance over Δ²/12 (the quantizer's own step) per width: 1 where the uniform
    model holds; and over the paper's Δ = 2^(1−b)·R."""
    plt = plt_agg()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    agg = noise.group_by("quantizer", "bits").agg(pl.col("ratio").median(), pl.col("ratio").min().alias("lo"),
                                                  pl.col("ratio").max().alias("hi"),
                                                  pl.col("ratio_to_paper").median()).sort("bits")
    for i, ((q,), g) in enumerate(agg.group_by(["quantizer"], maintain_order=True)):
        ax.errorbar(g["bits"], g["ratio"], yerr=[g["ratio"] - g["lo"], g["hi"] - g["ratio"]], marker="o",
                    capsize=3, color=f"C{i}", label=q)
        bx.plot(g["bits"], g["ratio_to_paper"], marker="o", color=f"C{i}", label=q)
    for a, what in ((ax, "Δ²/12, Δ the quantizer's own step"), (bx, "Δ²/12, Δ = 2^(1−b)·max|w| (the paper's)")):
        a.axhspan(0.8, 1.25, color="g", alpha=0.1)
        a.axhline(1, color="k", lw=0.8)
        a.set(xlabel="bits", ylabel="measured / predicted error variance", title=f"over {what}", yscale="log")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
