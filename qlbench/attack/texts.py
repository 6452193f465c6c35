"""Run GBDA over a set of labelled texts and pick one hard adversarial text per input, as the paper's code does:
texts grouped by token length, Θ optimised per group, then up to `samples` hard texts drawn, decoded and
re-tokenised (an attack on text, not on token ids), the first one the classifier gets wrong kept, else the last."""

from __future__ import annotations

import time

import torch

from qlbench.attack.gbda import GBDA, GBDASettings, token_change_rate
from qlbench.tasks import classification


def token_ids(tokenizer, texts: list[str], seq_len: int) -> list[list[int]]:
    return [x[:seq_len] for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def lm_nll(lm, tokenizer, texts: list[str], seq_len: int, device) -> list[float]:
    """The causal LM's mean next-token loss of each text (NaN for a text of one token)."""
    out = []
    for ids in token_ids(tokenizer, texts, seq_len):
        if len(ids) < 2:
            out.append(float("nan"))
            continue
        x = torch.tensor([ids], device=device)
        out.append(lm(input_ids=x, labels=x).loss.item())
    return out


def attack_texts(classifier, lm, tokenizer, texts: list[str], labels: list[int], seq_len: int,
                 settings: GBDASettings, seed: int, idf, device, log=print) -> list[dict]:
    """One row per text: clean and adversarial text, label, both predictions, whether the attack flipped it, which
    draw was kept, the token change rate and the final terms of the loss."""
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    banned = sorted({eos, tokenizer.pad_token_id} - {None})
    gbda = GBDA(classifier, lm, vocab, banned, idf, settings)
    ids = token_ids(tokenizer, texts, seq_len)
    clean_pred = _classify(classifier, tokenizer, texts, seq_len, device)
    by_length: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_length.setdefault(len(x), []).append(i)
    rows: dict[int, dict] = {}
    for length in sorted(by_length):
        members = by_length[length]
        for start in range(0, len(members), settings.group):
            group = members[start : start + settings.group]
            t0 = time.perf_counter()
            group_ids = torch.tensor([ids[i] for i in group])
            group_labels = torch.tensor([labels[i] for i in group])
            theta, terms = gbda.optimise(group_ids, group_labels, seed * 1_000_003 + group[0])
            draws = gbda.draw(theta, settings.samples).cpu()  # [G, n, T]
            for k, i in enumerate(group):
                rows[i] = _pick(classifier, tokenizer, texts[i], ids[i], labels[i], clean_pred[i], draws[k],
                                seq_len, device)
                rows[i].update({f"final_{name}": float(v[k]) for name, v in terms.items()})
            log(f"attacked {len(group)} texts of {length} tokens in {time.perf_counter() - t0:.1f}s: "
                f"{sum(rows[i]['adv_pred'] != labels[i] for i in group)} misclassified")
    return [{"index": i, **rows[i]} for i in range(len(texts))]


def _pick(classifier, tokenizer, text, ids, label, clean_pred, draws, seq_len, device) -> dict:
    candidates = [tokenizer.decode(d.tolist()) for d in draws]
    preds = _classify(classifier, tokenizer, candidates, seq_len, device)
    chosen = next((j for j, p in enumerate(preds) if p != label), len(candidates) - 1)
    adv = candidates[chosen]
    adv_ids = token_ids(tokenizer, [adv], seq_len)[0]
    return {"text": text, "label": label, "clean_pred": clean_pred, "adv_text": adv, "adv_pred": preds[chosen],
            "draw": chosen, "draws": len(candidates), "token_change": token_change_rate(ids, adv_ids),
            "n_tokens": len(ids)}


def _classify(classifier, tokenizer, texts: list[str], seq_len: int, device) -> list[int]:
    batch = classification.encode(tokenizer, texts, [0] * len(texts), seq_len)
    return classification.predict(classifier, batch, 64, device).argmax(-1).tolist()
