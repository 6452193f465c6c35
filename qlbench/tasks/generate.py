"""Greedy generation on a fixed probe set, EM/F1 against reference answers, and the pooled hidden state of each
output — what the similarity aggregate compares between a quantized cell and its 16-bit reference, model-free.

The probe set is the first `N_PROBES` held-out examples of the dataset: the held-out split is fixed per dataset
(`qlbench.data.example.SPLIT_SEED`), so every cell of every study on that dataset answers the same prompts.
"""

from __future__ import annotations

from qlbench.tasks.squad import best_over_answers, exact_match, f1

N_PROBES = 32
MAX_NEW_TOKENS = 32


def answer_span(output: str) -> str:
    """The part of a generation that is the answer: its first non-empty line."""
    for line in output.splitlines():
        if line.strip():
            return line.strip()
    return ""


def probe_examples(eval_examples: list, n: int = N_PROBES) -> list:
    return list(eval_examples[:n])


def prompt_text(example) -> str:
    """What the model sees before its answer: the same layout as training text (`Example.text`)."""
    return f"{example.prompt}\n"


def generate(model, tokenizer, examples: list, device, autocast_dtype=None, max_new_tokens: int = MAX_NEW_TOKENS,
             batch_size: int = 8) -> list[dict]:
    """Greedy outputs of `examples`, one dict each: the prompt, output ids and text (EOS and padding cut off),
    EM/F1 against `answers` where the example has some, and `hidden_mean` — the model's final hidden state
    averaged over the prompt and its output tokens."""
    import torch

    was_training, side, trunc = model.training, tokenizer.padding_side, tokenizer.truncation_side
    model.eval()
    tokenizer.padding_side = "left"  # greedy continuation needs every prompt to end at the same position
    tokenizer.truncation_side = "left"  # a long prompt keeps its end, next to the answer
    context = _context_length(model)
    max_new_tokens = min(max_new_tokens, context // 2)
    eos = tokenizer.eos_token_id
    rows = []
    try:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            enc = tokenizer([prompt_text(e) for e in chunk], return_tensors="pt", padding=True, truncation=True,
                            max_length=context - max_new_tokens, add_special_tokens=False).to(device)
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                seqs = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=eos,
                                      eos_token_id=eos)
                new = seqs[:, enc["input_ids"].shape[1]:]
                outputs = [_until_eos(ids.tolist(), eos) for ids in new]
                hidden = _pooled_hidden(model, enc["input_ids"], enc["attention_mask"], outputs, eos)
            for j, (ex, out_ids) in enumerate(zip(chunk, outputs)):
                text = tokenizer.decode(out_ids, skip_special_tokens=True)
                answers = tuple(getattr(ex, "answers", ()) or ())
                pred = answer_span(text)
                rows.append({
                    "probe": i + j,
                    "prompt": ex.prompt,
                    "reference": ex.response,
                    "answers": list(answers),
                    "output": text,
                    "output_ids": out_ids,
                    "em": best_over_answers(exact_match, pred, answers),
                    "f1": best_over_answers(f1, pred, answers),
                    "hidden_mean": hidden[j],
                })
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, trunc
        model.train(was_training)
    return rows


def _context_length(model) -> int:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 2048


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def _pooled_hidden(model, prompt_ids, prompt_mask, outputs: list[list[int]], pad: int) -> list[list[float]]:
    """One forward over prompt + output (left-padded prompt, right-padded output), mean of the last hidden
    layer over the real tokens."""
    import torch

    width = max(1, max(len(o) for o in outputs))
    out_ids = torch.full((len(outputs), width), pad, dtype=prompt_ids.dtype, device=prompt_ids.device)
    out_mask = torch.zeros_like(out_ids)
    for k, o in enumerate(outputs):
        out_ids[k, : len(o)] = torch.tensor(o, dtype=prompt_ids.dtype)
        out_mask[k, : len(o)] = 1
    ids = torch.cat([prompt_ids, out_ids], dim=1)
    mask = torch.cat([prompt_mask, out_mask], dim=1)
    position_ids = (mask.cumsum(dim=1) - 1).clamp_min(0)  # left padding must not shift positions
    hidden = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                   output_hidden_states=True).hidden_states[-1].float()
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
    return pooled.cpu().tolist()


def row_columns(rows: list[dict]) -> dict:
    """The row's generation columns: EM/F1 (mean over probes with answers; NaN for data without answers)."""
    scored = [r for r in rows if r["em"] is not None]
    nan = float("nan")
    return {
        "gen_probes": len(rows),
        "gen_mean_tokens": sum(len(r["output_ids"]) for r in rows) / len(rows) if rows else nan,
        "em": 100 * sum(r["em"] for r in scored) / len(scored) if scored else nan,
        "f1": 100 * sum(r["f1"] for r in scored) / len(scored) if scored else nan,
    }


def frame(coords: dict, rows: list[dict]):
    """generations.parquet: one row per probe, with the cell's coordinates."""
    import polars as pl

    from qlbench.results import COORDS

    schema = {**COORDS, "probe": pl.Int64, "prompt": pl.String, "reference": pl.String,
              "answers": pl.List(pl.String), "output": pl.String, "output_ids": pl.List(pl.Int64),
              "em": pl.Float64, "f1": pl.Float64, "hidden_mean": pl.List(pl.Float32)}
    return pl.DataFrame([{**coords, **r} for r in rows], schema=schema)
