"""The robustness table (QaLoF's, after Double-Win Quant): clean and adversarial accuracy of the fine-tuned
classifier at full precision, after 8- and 4-bit post-training quantization and under random precision inference,
side by side on the texts GBDA made white-box against that very model (direct) and on those it made against the
full-precision model (transferred) — mean and 95% t-interval over seeds, and the attack's success rate. A text counts as attacked only within the study's similarity constraint (rescaled BERTScore of the
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
    """Per (model, rank, precision, attacked — the precision the texts were made against): mean, sd and 95% CI
    half-width over seeds of every metric."""
    for m in METRICS:  # rows written before the similarity constraint lack the unconstrained columns
        if m not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=pl.Float64).alias(m))
    if "attacked" not in rows.columns:  # rows written before the direct attacks: texts made against FP32
        rows = rows.with_columns(pl.lit("fp32").alias("attacked"))
    out = mean_ci(rows, ["model", "rank", "precision", "widths", "attacked"], METRICS)
    order = {p: i for i, p in enumerate(ORDER)}
    return out.with_columns(pl.col("precision").replace_strict(order, default=len(ORDER)).alias("_o"),
                            (pl.col("attacked") != "fp32").alias("_d")).sort(
        ["model", "rank", "_o", "_d"]).drop("_o", "_d")


def side_by_side(summary: pl.DataFrame) -> list[dict]:
    """One entry per (model, rank, precision): its `transfer` row (texts made against FP32) and its `direct` row
    (texts made against itself; for FP32 the same row), either None where not run."""
    out: dict[tuple, dict] = {}
    for r in summary.iter_rows(named=True):
        entry = out.setdefault((r["model"], r["rank"], r["precision"]), {"transfer": None, "direct": None})
        if r["attacked"] == "fp32":
            entry["transfer"] = r
        if r["attacked"] == r["precision"]:
            entry["direct"] = r
    return [{"model": k[0], "rank": k[1], "precision": k[2], **v} for k, v in out.items()]


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
    if "attacked" not in adversarial.columns:
        adversarial = adversarial.with_columns(pl.lit("fp32").alias("attacked"))
    order = {p: i for i, p in enumerate(ORDER)}
    return adversarial.group_by(["model", "rank", "attacked", "seed"]).agg(
        pl.len().alias("texts"),
        (pl.col("clean_pred") == pl.col("label")).mean().alias("clean_accuracy"),
        (pl.col("adv_pred") == pl.col("label")).mean().alias("adv_accuracy_unconstrained"),
        pl.col("token_change").mean().alias("token_change"),
        pl.col("clean_lm_nll").mean().alias("clean_lm_nll"),
        pl.col("adv_lm_nll").mean().alias("adv_lm_nll"),
        *present,
    ).with_columns(missing, pl.col("attacked").replace_strict(order, default=len(ORDER)).alias("_o")).sort(
        ["model", "rank", "_o", "seed"]).drop("_o")


def _pct(value) -> str:
    return "–" if value is None or value != value else f"{100 * value:.0f}%"


def _num(value, digits: int = 2) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _pm(mean: float, ci: float) -> str:
    if mean != mean:
        return "–"
    return f"{100 * mean:.1f}%" + (f" ± {100 * ci:.1f}" if ci == ci and not math.isinf(ci) else "")


def _cell(row: dict | None, metric: str) -> str:
    return "–" if row is None else _pm(row[metric], row[f"{metric}_ci95"])


def markdown(summary: pl.DataFrame, per_seed: pl.DataFrame) -> str:
    lines = ["# Adversarial robustness under quantization (GBDA, white-box at each precision and transferred from FP32)",
             "", "Mean ± 95% t-interval over seeds. Per seed GBDA runs white-box against the model at each attacked "
             "precision (direct: the texts evaluated on the model they were made against; random precision: a "
             "width drawn per attack step) and the texts made against FP32 are replayed at every precision "
             "(from FP32). Attack success is the share of the texts a model gets right that the attack makes it "
             "get wrong with a hard text within the similarity constraint (rescaled BERTScore against the clean "
             "text at least the study's `similarity_threshold`); a text outside it counts as its clean "
             "prediction. Unconstrained: every hard text counts. The clean and held-out accuracy are those of the "
             "from-FP32 row.", ""]
    entries = side_by_side(summary)
    for (model, rank) in dict.fromkeys((e["model"], e["rank"]) for e in entries):
        lines += [f"## {model}, LoRA r {rank}", "",
                  "| precision | seeds | clean accuracy | adversarial, direct | adversarial, from FP32 | "
                  "success, direct | success, from FP32 | adversarial unconstrained, direct | "
                  "adversarial unconstrained, from FP32 | held-out accuracy | QaLoF adversarial |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for e in entries:
            if (e["model"], e["rank"]) != (model, rank):
                continue
            base = e["transfer"] or e["direct"]
            name = LABEL.get(e["precision"], e["precision"])
            if e["precision"] == "random" and base["widths"]:
                name += f" ({{{base['widths']}}} bits per pass)"
            qalof = f"{100 * QALOF[e['precision']]:.0f}%" if e["precision"] in QALOF else "–"
            seeds = "/".join(dict.fromkeys(str(r["seeds"]) for r in (e["direct"], e["transfer"]) if r is not None))
            lines.append(f"| {name} | {seeds} | {_cell(base, 'clean_accuracy')} | "
                         f"{_cell(e['direct'], 'adv_accuracy')} | {_cell(e['transfer'], 'adv_accuracy')} | "
                         f"{_cell(e['direct'], 'attack_success')} | {_cell(e['transfer'], 'attack_success')} | "
                         f"{_cell(e['direct'], 'adv_accuracy_unconstrained')} | "
                         f"{_cell(e['transfer'], 'adv_accuracy_unconstrained')} | "
                         f"{_cell(base, 'eval_accuracy')} | {qalof} |")
        lines.append("")
    if per_seed.height:
        lines += ["## Each attack, per seed (against the model it was run on)", "",
                  "| model | attacked | seed | texts | clean → adversarial accuracy (unconstrained) | success within "
                  "similarity | hard texts within | BERTScore F1 (rescaled; baseline) | tokens changed | ends kept "
                  "| LM loss clean → adversarial | median LM perplexity clean → adversarial |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in per_seed.iter_rows(named=True):
            threshold = "" if r["similarity_threshold"] is None else f" (≥ {r['similarity_threshold']:g})"
            lines.append(f"| {r['model']} | {r['attacked']} | {r['seed']} | {r['texts']} | "
                         f"{100 * r['clean_accuracy']:.1f}% → "
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
