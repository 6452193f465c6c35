"""Run GBDA over a set of labelled texts and pick one hard adversarial text per input, as the paper's code does:
texts grouped by token length, Θ optimised per group, then up to `samples` hard texts drawn, decoded and
re-tokenised (an attack on text, not on token ids), the first one the classifier gets wrong kept, else the last —
here the first one it gets wrong within the similarity constraint, else the first it gets wrong, else the last.

The similarity of a hard text to its clean text is BERTScore F1 (Zhang et al. 2020, greedy cosine matching, no
idf) over the contextual token embeddings of the attack's own reference LM (the victim's frozen base causal LM, the
paper's reference model for a GPT-2 victim), at GBDA's `embed_layer` (the last hidden layer by default), rescaled
with a baseline as bert_score's `rescale_with_baseline` does: b is the mean F1 of pairs of different clean texts
of the attacked set (each with its next `BASELINE_PAIRS`), so 0 reads as unrelated and 1 as the clean text. A hard
text is `similar` when its rescaled score is at least the study's `similarity_threshold`."""

from __future__ import annotations

import math
import time

import torch

from qlbench.attack.gbda import GBDA, GBDASettings, bert_score_f1, rescaled, token_change_rate
from qlbench.study.settings import Robustness
from qlbench.tasks import classification

BASELINE_PAIRS = 8  # each clean text against its next 8 (cyclically): the rescaling's unrelated pairs


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


class Similarity:
    """BERTScore of texts under a causal LM's hidden layer `layer` (see the module's docstring)."""

    def __init__(self, lm, tokenizer, layer: int, seq_len: int, device):
        self.lm, self.tokenizer, self.layer, self.seq_len, self.device = lm, tokenizer, layer, seq_len, device

    @torch.no_grad()
    def hidden(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text's contextual token embeddings [T, D] (a text of no tokens: [0, D])."""
        out = []
        for ids in token_ids(self.tokenizer, texts, self.seq_len):
            x = torch.tensor([ids or [self.tokenizer.eos_token_id]], device=self.device)
            h = self.lm(input_ids=x, output_hidden_states=True).hidden_states[self.layer][0].float().cpu()
            out.append(h if ids else h[:0])
        return out

    @staticmethod
    def f1(ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float, float]:
        if len(ref) == 0 or len(cand) == 0:
            return math.nan, math.nan, math.nan
        return bert_score_f1(ref, cand)

    def baseline(self, clean: list[torch.Tensor], texts: list[str]) -> float:
        """Mean F1 of pairs of different clean texts (NaN with fewer than two distinct texts)."""
        n = len(clean)
        scores = [self.f1(clean[i], clean[(i + k) % n])[2] for i in range(n)
                  for k in range(1, min(BASELINE_PAIRS, n - 1) + 1) if texts[i] != texts[(i + k) % n]]
        scores = [s for s in scores if s == s]
        return sum(scores) / len(scores) if scores else math.nan


def attack_texts(classifier, lm, tokenizer, texts: list[str], labels: list[int], seq_len: int,
                 settings: GBDASettings, seed: int, idf, device, log=print,
                 threshold: float = Robustness.similarity_threshold,
                 drawn: list[int] | None = None) -> list[dict]:
    """One row per text: clean and adversarial text, label, both predictions, which draw was kept, the token change
    rate, whether the re-tokenised hard text kept the held ends, its BERTScore (precision, recall, F1, the baseline
    and the rescaled score; `similar`: rescaled ≥ `threshold`), whether it is a successful attack (a clean text
    the classifier got right, misclassified, similar) and the final terms of the loss. `drawn`: the list a
    random-precision classifier appends each forward pass's width to; the widths of a text's optimisation steps
    (one classifier pass each) go to `attack_widths` (empty for a fixed width)."""
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    banned = sorted({eos, tokenizer.pad_token_id} - {None})
    gbda = GBDA(classifier, lm, vocab, banned, idf, settings)
    ids = token_ids(tokenizer, texts, seq_len)
    clean_pred = _classify(classifier, tokenizer, texts, seq_len, device)
    similarity = Similarity(lm, tokenizer, settings.embed_layer, seq_len, device)
    clean_hidden = similarity.hidden(texts)
    baseline = similarity.baseline(clean_hidden, texts)
    judge = Judge(similarity, baseline, threshold)
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
            before = len(drawn) if drawn is not None else 0
            theta, terms = gbda.optimise(group_ids, group_labels, seed * 1_000_003 + group[0])
            widths = ",".join(map(str, drawn[before:])) if drawn is not None else ""
            draws = gbda.draw(theta, settings.samples, group_ids).cpu()  # [G, n, T]
            for k, i in enumerate(group):
                rows[i] = _pick(classifier, tokenizer, texts[i], ids[i], labels[i], clean_pred[i], draws[k],
                                seq_len, device, judge, clean_hidden[i], settings.hold_ends)
                rows[i].update({f"final_{name}": float(v[k]) for name, v in terms.items()}, attack_widths=widths)
            log(f"attacked {len(group)} texts of {length} tokens in {time.perf_counter() - t0:.1f}s: "
                f"{sum(rows[i]['adv_pred'] != labels[i] for i in group)} misclassified")
    return [{"index": i, **rows[i]} for i in range(len(texts))]


class Judge:
    """Scores hard texts against their clean text: BERTScore, rescaled with the baseline, against the threshold."""

    def __init__(self, similarity: Similarity, baseline: float, threshold: float):
        self.similarity, self.baseline, self.threshold = similarity, baseline, threshold

    def scores(self, clean_hidden: torch.Tensor, candidates: list[str]) -> list[dict]:
        out = []
        for h in self.similarity.hidden(candidates):
            p, r, f1 = self.similarity.f1(clean_hidden, h)
            score = rescaled(f1, self.baseline)
            out.append({"adv_bertscore_precision": p, "adv_bertscore_recall": r, "adv_bertscore_f1": f1,
                        "bertscore_baseline": self.baseline, "adv_bertscore": score,
                        "similar": bool(score >= self.threshold)})
        return out


def _pick(classifier, tokenizer, text, ids, label, clean_pred, draws, seq_len, device, judge: Judge,
          clean_hidden: torch.Tensor, hold_ends: bool) -> dict:
    candidates = [tokenizer.decode(d.tolist()) for d in draws]
    preds = _classify(classifier, tokenizer, candidates, seq_len, device)
    scores = judge.scores(clean_hidden, candidates)
    wrong = [j for j, p in enumerate(preds) if p != label]
    chosen = next((j for j in wrong if scores[j]["similar"]), wrong[0] if wrong else len(candidates) - 1)
    adv = candidates[chosen]
    adv_ids = token_ids(tokenizer, [adv], seq_len)[0]
    ends_kept = bool(adv_ids) and adv_ids[0] == ids[0] and adv_ids[-1] == ids[-1]
    return {"text": text, "label": label, "clean_pred": clean_pred, "adv_text": adv, "adv_pred": preds[chosen],
            "draw": chosen, "draws": len(candidates), "token_change": token_change_rate(ids, adv_ids),
            "n_tokens": len(ids), "held_ends": hold_ends, "ends_kept": ends_kept, **scores[chosen],
            "success": bool(clean_pred == label and preds[chosen] != label and scores[chosen]["similar"])}


def _classify(classifier, tokenizer, texts: list[str], seq_len: int, device) -> list[int]:
    batch = classification.encode(tokenizer, texts, [0] * len(texts), seq_len)
    return classification.predict(classifier, batch, 64, device).argmax(-1).tolist()
