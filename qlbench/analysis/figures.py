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
