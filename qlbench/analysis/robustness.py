"""The robustness table (QaLoF's, after Double-Win Quant): clean and adversarial accuracy of the fine-tuned
classifier at full precision, after 8- and 4-bit post-training quantization and under random precision inference,
on the texts GBDA made against the full-precision model — mean and 95% t-interval over seeds, and the attack's
success rate. A text counts as attacked only within the study's similarity constraint (rescaled BERTScore of the
hard text against the clean one at least `similarity_threshold`, `qlbench.attack.robustness`); the unconstrained
numbers stay beside. Per seed, the attack's hard texts against the clean ones: BERTScore, LM perplexity, the share
within the constraint and the share whose held first and last tokens survived re-tokenisation. Reads parquet
only."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from qlbench.analysis.seeds import mean_ci

ORDER = ("fp32", "fake8", "bnb8", "fake4", "bnb4", "random")
LABEL = {"fp32": "FP32 (attacked)", "fake8": "8-bit PTQ (int, fake)", "bnb8": "8-bit PTQ (LLM.int8, bnb)",
         "fake4": "4-bit PTQ (int, fake)", "bnb4": "4-bit PTQ (NF4, bnb)", "random": "random precision"}
QALOF = {"fp32": 0.03, "fake8": 0.04, "bnb8": 0.04, "fake4": 0.06, "bnb4": 0.06}  # its adversarial accuracy
METRICS = ("clean_accuracy", "adv_accuracy", "attack_success", "eval_accuracy", "adv_accuracy_unconstrained",
           "attack_success_unconstrained")


def gather(root: Path) -> pl.DataFrame:
    """Every precision row under a study's robustness folder (one file per (cell, precision))."""
    files = sorted(p for p in root.rglob("*.parquet") if p.name != "adversarial.parquet")
    if not files:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def table(rows: pl.DataFrame) -> pl.DataFrame:
    """Per (model, rank, precision): mean, sd and 95% CI half-width over seeds of every metric."""
    for m in METRICS:  # rows written before the similarity constraint lack the unconstrained columns
        if m not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=pl.Float64).alias(m))
    out = mean_ci(rows, ["model", "rank", "precision", "widths"], METRICS)
    order = {p: i for i, p in enumerate(ORDER)}
    return out.with_columns(pl.col("precision").replace_strict(order, default=len(ORDER)).alias("_o")).sort(
        ["model", "rank", "_o"]).drop("_o")


def attacks(adversarial: pl.DataFrame) -> pl.DataFrame:
    """Per seed: what the attack did against the model it was run on."""
    optional = {"success": pl.col("success").mean(), "similar": pl.col("similar").mean(),
                "adv_bertscore_f1": pl.col("adv_bertscore_f1").mean(), "adv_bertscore": pl.col("adv_bertscore").mean(),
                "bertscore_baseline": pl.col("bertscore_baseline").mean(),
                "similarity_threshold": pl.col("similarity_threshold").first(),
                "clean_lm_ppl": pl.col("clean_lm_ppl").median(), "adv_lm_ppl": pl.col("adv_lm_ppl").median(),
                "ends_kept": pl.col("ends_kept").mean()}
    present = [e.alias(k) for k, e in optional.items() if k in adversarial.columns]
    missing = [pl.lit(None, dtype=pl.Float64).alias(k) for k in optional if k not in adversarial.columns]
    return adversarial.group_by(["model", "rank", "seed"]).agg(
        pl.len().alias("texts"),
        (pl.col("clean_pred") == pl.col("label")).mean().alias("clean_accuracy"),
        (pl.col("adv_pred") == pl.col("label")).mean().alias("adv_accuracy_unconstrained"),
        pl.col("token_change").mean().alias("token_change"),
        pl.col("clean_lm_nll").mean().alias("clean_lm_nll"),
        pl.col("adv_lm_nll").mean().alias("adv_lm_nll"),
        *present,
    ).with_columns(missing).sort(["model", "rank", "seed"])


def _pct(value) -> str:
    return "–" if value is None or value != value else f"{100 * value:.0f}%"


def _num(value, digits: int = 2) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _pm(mean: float, ci: float) -> str:
    if mean != mean:
        return "–"
    return f"{100 * mean:.1f}%" + (f" ± {100 * ci:.1f}" if ci == ci and not math.isinf(ci) else "")


def markdown(summary: pl.DataFrame, per_seed: pl.DataFrame) -> str:
    lines = ["# Adversarial robustness under quantization (GBDA against the full-precision model)", "",
             "Mean ± 95% t-interval over seeds. Adversarial texts are made once per seed against the FP32 model "
             "and replayed at every precision; attack success is the share of the texts a model gets right that "
             "the attack makes it get wrong with a hard text within the similarity constraint (rescaled "
             "BERTScore against the clean text at least the study's `similarity_threshold`); a text outside it "
             "counts as its clean prediction. Unconstrained: every hard text counts.", ""]
    for (model, rank), part in summary.group_by(["model", "rank"], maintain_order=True):
        lines += [f"## {model}, LoRA r {rank}", "",
                  "| precision | seeds | clean accuracy | adversarial accuracy | attack success | adversarial, "
                  "unconstrained | success, unconstrained | held-out accuracy | QaLoF adversarial |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in part.iter_rows(named=True):
            name = LABEL.get(r["precision"], r["precision"])
            if r["precision"] == "random" and r["widths"]:
                name += f" ({{{r['widths']}}} bits per pass)"
            qalof = f"{100 * QALOF[r['precision']]:.0f}%" if r["precision"] in QALOF else "–"
            lines.append(f"| {name} | {r['seeds']} | {_pm(r['clean_accuracy'], r['clean_accuracy_ci95'])} | "
                         f"{_pm(r['adv_accuracy'], r['adv_accuracy_ci95'])} | "
                         f"{_pm(r['attack_success'], r['attack_success_ci95'])} | "
                         f"{_pm(r['adv_accuracy_unconstrained'], r['adv_accuracy_unconstrained_ci95'])} | "
                         f"{_pm(r['attack_success_unconstrained'], r['attack_success_unconstrained_ci95'])} | "
                         f"{_pm(r['eval_accuracy'], r['eval_accuracy_ci95'])} | {qalof} |")
        lines.append("")
    if per_seed.height:
        lines += ["## The attack, per seed (against FP32)", "",
                  "| model | seed | texts | clean → adversarial accuracy (unconstrained) | success within similarity "
                  "| hard texts within | BERTScore F1 (rescaled; baseline) | tokens changed | ends kept "
                  "| LM loss clean → adversarial | median LM perplexity clean → adversarial |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in per_seed.iter_rows(named=True):
            threshold = "" if r["similarity_threshold"] is None else f" (≥ {r['similarity_threshold']:g})"
            lines.append(f"| {r['model']} | {r['seed']} | {r['texts']} | {100 * r['clean_accuracy']:.1f}% → "
                         f"{100 * r['adv_accuracy_unconstrained']:.1f}% | {_pct(r['success'])} | "
                         f"{_pct(r['similar'])}{threshold} | {_num(r['adv_bertscore_f1'], 3)} "
                         f"({_num(r['adv_bertscore'])}; {_num(r['bertscore_baseline'], 3)}) | "
                         f"{100 * r['token_change']:.0f}% | {_pct(r['ends_kept'])} | "
                         f"{r['clean_lm_nll']:.2f} → {r['adv_lm_nll']:.2f} | "
                         f"{_num(r['clean_lm_ppl'], 1)} → {_num(r['adv_lm_ppl'], 1)} |")
        lines.append("")
    return "\n".join(lines)


def write(root: Path, out: Path) -> pl.DataFrame:
    """robustness.parquet (the table) and robustness.md from a study's robustness folder."""
    from qlbench.results import write_parquet

    rows = gather(root)
    adv_files = sorted(root.rglob("adversarial.parquet"))
    adversarial = pl.concat([pl.read_parquet(f) for f in adv_files], how="diagonal_relaxed") if adv_files else None
    summary = table(rows)
    per_seed = attacks(adversarial) if adversarial is not None else pl.DataFrame()
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(summary, out / "robustness.parquet")
    (out / "robustness.md").write_text(markdown(summary, per_seed))
    return summary
