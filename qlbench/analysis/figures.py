"""Figures (matplotlib, PNG). Imported only by the commands that draw."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def eval_loss_vs_bits(table: pl.DataFrame, path: Path, title: str) -> None:
    """Eval loss after LoRA against bit width: one line per model, rank and mask; error bars are sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    reference = table.filter(pl.col("bits") == 16)
    for (model, rank, mask), group in table.filter(pl.col("bits") < 16).group_by(
        ["model", "rank", "mask"], maintain_order=True
    ):
        ref = reference.filter((pl.col("model") == model) & (pl.col("rank") == rank))
        g = pl.concat([group, ref], how="diagonal_relaxed").sort("bits")
        label = f"{model} r={rank}" + ("" if mask == "all" else f" {mask}")
        ax.errorbar(g["bits"].to_list(), g["eval_loss_mean"].to_list(),
                    yerr=g["eval_loss_sd"].fill_null(0).to_list(), marker="o", capsize=3, label=label)
    ax.set_xlabel("bits of the quantized layers (16 = not quantized)")
    ax.set_ylabel("eval loss after LoRA")
    ax.set_xscale("log", base=2)
    ticks = sorted(set(table["bits"].to_list()))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
