"""The robustness study's two steps, each one job: attack a finished full-precision classification cell's model at
one precision, white-box (against-<attacked>/adversarial.parquet), then evaluate the model at one precision on the
clean texts and the texts of one attack (one row: against-<attacked>/<precision>.parquet). The texts made against
FP32 are replayed at every precision (transfer); those made against a quantized model are evaluated on that model
(direct). The attack's gradient is always the attacked model's own: PTQ rounds the merged weights in place (fake) or
swaps in bitsandbytes modules, and the input embeddings' gradient flows through them; the random-precision model
draws a width per forward pass, and GBDA makes one classifier pass per step, so each step's gradient is taken at a
width drawn for that step (as Double-Win Quant attacks its random precision inference; the widths of each text's
steps are kept in `attack_widths`).

Precisions: `fp32` (the attacked model), `fake8`/`fake4` (every block linear rounded after training, the study's
`format`: int min-max per channel by default), `bnb8`/`bnb4` (bitsandbytes LLM.int8 / NF4 modules) and `random`
(random precision inference: a width from `random_widths` drawn per forward pass, one text per pass, fake backend).
The study's `robustness:` mapping sets `examples` (held-out texts attacked), `precisions`, `attacked` (the precisions
attacked white-box), `random_widths`, `similarity_threshold` and `attack` (GBDA's settings); what it leaves out is at
the defaults of its one home, the settings tree (`qlbench.study.settings.Robustness` and `Attack`).

A text counts as attacked only within the similarity constraint: its hard adversarial text's rescaled BERTScore
against the clean text (`qlbench.attack.texts`) at least `similarity_threshold` (by default closer to the clean
text than halfway from an unrelated text of the set; the paper's code sets no hard threshold — its similarity is
the soft λ_sim term — so the number is ours). A text outside it counts, at every precision, as the model's clean
prediction; the unconstrained accuracy and success stay beside (`*_unconstrained`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from qlbench.study.config import Study
from qlbench.study.grid import Cell
from qlbench.study.settings import Robustness, Settings


def attack_draw_seed(seed: int) -> int:
    """The random-precision attack's own stream of widths (evaluation draws from `seed`)."""
    return seed * 1_000_003 + 17


def options(settings: Settings) -> Robustness:
    """The study's `robustness:` settings (all at their defaults where it has none)."""
    return settings.data.robustness or Robustness()


def _device_and_threads(settings: Settings, threads: int):
    from qlbench.cell.measure import pick_device

    torch.set_num_threads(threads)
    return pick_device(settings.runtime.device)


def attack(study: Study, cell: Cell, settings: Settings, cell_dir: Path, out: Path, attacked: str = "fp32",
           threads: int = 1, log=print) -> dict:
    """GBDA on the first `examples` held-out texts against the cell's fine-tuned classifier at precision `attacked`
    -> adversarial.parquet."""
    import polars as pl

    from qlbench import results
    from qlbench.attack import victim

    t0 = time.perf_counter()
    device = _device_and_threads(settings, threads)
    v = victim.build(study, cell, settings, cell_dir, device)
    rows = attack_rows(v, attacked, settings, cell.seed, device, log)
    frame = pl.DataFrame([{"study": study.name, **cell.coords(), **r} for r in rows])
    results.write_parquet(frame, out)
    threshold = options(settings).similarity_threshold
    summary = {"examples": len(rows), "clean_accuracy": _mean(r["clean_pred"] == r["label"] for r in rows),
               "adv_accuracy": _mean(r["clean_pred"] == r["label"] and not r["success"] for r in rows),
               "success": _mean(r["success"] for r in rows), "similar": _mean(r["similar"] for r in rows),
               "token_change": _mean(r["token_change"] for r in rows), "wall_s": time.perf_counter() - t0}
    log(f"attack on {attacked} done: clean accuracy {summary['clean_accuracy']:.3f} -> adversarial "
        f"{summary['adv_accuracy']:.3f} within BERTScore >= {threshold} ({summary['similar']:.0%} of hard texts "
        f"within it, {summary['token_change']:.0%} of tokens changed) in {summary['wall_s']:.0f}s")
    return summary


def attack_rows(v, attacked: str, settings: Settings, seed: int, device, log=print) -> list[dict]:
    """The attack's rows against victim `v`'s classifier at precision `attacked` (`model_at`; random precision: a
    width per forward pass from its own stream, `attack_draw_seed`)."""
    from qlbench.attack import gbda, texts

    opts = options(settings)
    n = min(opts.examples, len(v.data.eval_examples))
    chosen = [e.prompt for e in v.data.eval_examples[:n]]
    labels = v.data.eval["labels"][:n].tolist()
    gbda_settings = opts.attack
    seq_len = settings.train.seq_len
    idf = gbda.idf_weights(texts.token_ids(v.tokenizer, v.train_texts, seq_len), len(v.tokenizer))
    model, drawn = model_at(v, attacked, settings, attack_draw_seed(seed) if attacked == "random" else seed)
    log(f"GBDA on {n} texts against {attacked}: {gbda_settings}")
    threshold = opts.similarity_threshold
    rows = texts.attack_texts(model, v.lm, v.tokenizer, chosen, labels, seq_len, gbda_settings, seed, idf, device,
                              log, threshold=threshold, drawn=drawn)
    clean_nll = texts.lm_nll(v.lm, v.tokenizer, chosen, seq_len, device)
    adv_nll = texts.lm_nll(v.lm, v.tokenizer, [r["adv_text"] for r in rows], seq_len, device)
    for r, c, a in zip(rows, clean_nll, adv_nll):
        r.update(attacked=attacked, label_name=v.data.labels[r["label"]], clean_lm_nll=c, adv_lm_nll=a,
                 clean_lm_ppl=_exp(c), adv_lm_ppl=_exp(a), similarity_threshold=float(threshold))
    return rows


def model_at(v, precision: str, settings: Settings, seed: int):
    """The fine-tuned classifier at one precision (fp32: the classifier itself; else a copy), and for random
    precision the list of widths its forward passes drew, from `seed` (None for a fixed width)."""
    from qlbench.attack import victim

    if precision == "fp32":
        return v.classifier, None
    if precision == "random":
        import copy

        from qlbench.cell.precision import Precision

        model = copy.deepcopy(v.classifier)
        widths = Precision(model, v.module_names, {}, settings.replace(double_quant=False), seed, v.module_names)
        _, drawn = widths.random_inference(list(options(settings).random_widths), seed)
        return model, drawn
    backend, bits = precision[:-1], int(precision[-1])
    return victim.quantized(v, backend, bits, settings), None


def evaluate(study: Study, cell: Cell, settings: Settings, cell_dir: Path, adversarial: Path, precision: str, out: Path,
             threads: int = 1, log=print) -> dict:
    """Clean and adversarial accuracy of the cell's classifier at `precision` on one attack's texts -> one row (its
    `attacked`: the precision the texts were made against)."""
    import polars as pl

    from qlbench import results
    from qlbench.attack import victim

    t0 = time.perf_counter()
    device = _device_and_threads(settings, threads)
    v = victim.build(study, cell, settings, cell_dir, device)
    adv = pl.read_parquet(adversarial).sort("index")
    row = {"study": study.name, **cell.coords(), **measure(v, adv, precision, settings, cell.seed, device),
           "wall_s": time.perf_counter() - t0}
    results.write_parquet(pl.DataFrame([row]), out)
    log(f"{precision} on texts made against {row['attacked']}: clean {row['clean_accuracy']:.3f}, "
        f"adversarial {row['adv_accuracy']:.3f}, attack success {row['attack_success']:.3f}, held-out {row['eval_accuracy']:.3f}")
    return row


def measure(v, adv, precision: str, settings: Settings, seed: int, device) -> dict:
    """The classifier of victim `v` at `precision` on one attack's texts (`adv`, a frame of adversarial.parquet's
    rows): what it makes of the clean and the hard texts (`outcomes`) and of the held-out set, and which model
    the texts were made against."""
    from qlbench.tasks import classification

    model, drawn = model_at(v, precision, settings, seed)
    switching = drawn is not None
    batch_size = 1 if switching else 64  # random precision: one text per forward pass, one width each
    labels = adv["label"].to_list()

    def predict(texts: list[str]) -> list[int]:
        batch = classification.encode(v.tokenizer, texts, [0] * len(texts), settings.train.seq_len)
        return classification.predict(model, batch, batch_size, device).argmax(-1).tolist()

    clean = predict(adv["text"].to_list())
    hard = predict(adv["adv_text"].to_list())
    similar = adv["similar"].to_list() if "similar" in adv.columns else [True] * len(labels)  # older texts: all
    held_out = classification.predict(model, v.data.eval, batch_size, device).argmax(-1)
    return {
        "precision": precision,
        "attacked": adv["attacked"][0] if "attacked" in adv.columns else "fp32",  # older texts: made against FP32
        "backend": "none" if precision == "fp32" else ("fake" if switching else precision[:-1]),
        "bits": 32 if precision == "fp32" else (0 if switching else int(precision[-1])),
        "widths": ",".join(map(str, options(settings).random_widths)) if switching else "",
        "examples": len(labels),
        **outcomes(labels, clean, hard, similar),
        "eval_accuracy": (held_out == v.data.eval["labels"]).float().mean().item(),
        "eval_examples": len(v.data.eval_examples),
        "forward_passes": len(drawn) if switching else 0,
        "distinct_widths": len(set(drawn)) if switching else 1,
    }


def outcomes(labels: list[int], clean: list[int], attacked: list[int], similar: list[bool]) -> dict:
    """Accuracy on the clean and the adversarial texts, and the attack's success (of the texts the model gets
    right, the share it gets wrong), within the similarity constraint — a hard text outside it is no attack, the
    clean prediction stands — and unconstrained."""
    right = [c == y for c, y in zip(clean, labels)]
    return {
        "clean_accuracy": _mean(right),
        "adv_accuracy": _mean((a == y) if s else r for a, y, r, s in zip(attacked, labels, right, similar)),
        "attack_success": _mean(a != y and s for a, y, r, s in zip(attacked, labels, right, similar) if r),
        "adv_accuracy_unconstrained": _mean(a == y for a, y in zip(attacked, labels)),
        "attack_success_unconstrained": _mean(a != y for a, y, r in zip(attacked, labels, right) if r),
        "similar": _mean(similar),
    }


def _exp(nll: float) -> float:
    return math.exp(nll) if nll == nll else float("nan")


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")
