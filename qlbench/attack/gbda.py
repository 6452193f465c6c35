"""GBDA, the Gradient-based Distributional Attack (Guo, Sablayrolles, Jégou, Kiela 2021), white-box.

For a text of T tokens it learns a matrix Θ (T × V) of token logits, initialised to `init_coeff` at the clean
token of each position and 0 elsewhere. Each step draws `batch` Gumbel-softmax relaxations π ~ GS(Θ), feeds
π·E (E: the input embeddings) to the classifier and minimises

    margin(π) − λ_sim · BERTScore(clean, π) + λ_perp · NLL_LM(π)

with Adam: margin is Carlini-Wagner's, max(0, z_y − max_{k≠y} z_k + κ); NLL_LM is the causal LM's cross-entropy of
the relaxed sequence, −1/(T−1) Σ_t Σ_v π_{t+1,v} log p_LM(v | π_≤t) (the paper's `log_perplexity`); BERTScore is
the recall of the paper's code, Σ_i w_i max_j cos(h_i, h'_j), over the causal LM's hidden states of layer
`embed_layer` (for a GPT-2 victim the paper's own reference model is GPT-2, so the LM is the similarity encoder
there too, and no BERT is needed offline), w_i the clean tokens' idf weights from the training texts. Then hard
texts are drawn from Θ: up to `samples` of them, the first the classifier gets wrong is kept (else the last).

Defaults are those of facebookresearch/text-adversarial-attack (whitebox_attack.py), set down once in the settings
tree (`qlbench.study.settings.Attack`, a study's `robustness: {attack: ...}`). Texts of equal token length are attacked together as a group (one Θ each, the losses summed): Adam is per
parameter, so each text's optimisation is its own. The EOS/pad token is never sampled (the classifier would read
it as padding).

The first and last positions are held fixed (`hold_ends`, on by default), as the paper's code does for every model
(GPT-2 included: its `forbidden[0] = forbidden[-1] = True`), and the similarity term drops them from the cosine
matrix as its `bert_score` does. The paper's code only zeroes their gradient, so a hard draw from softmax(Θ) still
changes such a position with probability (V−1)/(e^15+V−1) (1.5% per draw for GPT-2's 50,257 tokens); here they
are held exactly: the relaxed π is the clean token's one-hot there, and every hard draw keeps the clean token. For
a GPT-2 classifier this matters: it reads the last token's hidden state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qlbench.study.settings import Attack as GBDASettings  # its defaults, the paper's, live in the settings tree


def log_perplexity(logits: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """The causal LM's cross-entropy of each relaxed sequence [B]: logits [B, T, V'] of the LM fed π·E, coeffs π
    [B, T, V]; position t predicts the distribution π_{t+1}. With one-hot π it is the LM's own loss on those tokens."""
    shift_logits = logits[:, :-1, : coeffs.shape[-1]]
    return -(coeffs[:, 1:] * F.log_softmax(shift_logits.float(), dim=-1)).sum(-1).mean(-1)


def bert_score(refs: torch.Tensor, cands: torch.Tensor, weights: torch.Tensor | None = None,
               trim: bool = False) -> torch.Tensor:
    """BERTScore recall: refs [B, T, D] (clean), cands [B, T', D]; weights [B, T] sum to 1 per row (idf), or uniform.
    `trim`: leave out the first and last token of both (the paper's code, whose ends are held fixed); the weights
    stay those of the whole text, as there."""
    refs_n = refs / refs.norm(dim=-1, keepdim=True)
    cands_n = cands / cands.norm(dim=-1, keepdim=True)
    cosines = refs_n @ cands_n.transpose(1, 2)  # [B, T, T']
    if trim and min(cosines.shape[1:]) > 2:
        cosines = cosines[:, 1:-1, 1:-1]
        weights = None if weights is None else weights[:, 1:-1]
    best = cosines.max(-1).values
    if weights is None:
        return best.mean(-1) if not trim else best.sum(-1) / refs.shape[1]
    return (best * weights).sum(-1)


def bert_score_f1(ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float, float]:
    """BERTScore of one hard text against its clean text (Zhang et al. 2020, no idf): ref [T, D] and cand [T', D]
    the contextual token embeddings; recall R = mean_i max_j cos(r_i, c_j), precision P = mean_j max_i cos(r_i,
    c_j), F1 = 2PR / (P + R). Returns (P, R, F1)."""
    cosines = (ref / ref.norm(dim=-1, keepdim=True)) @ (cand / cand.norm(dim=-1, keepdim=True)).T
    recall = cosines.max(1).values.mean().item()
    precision = cosines.max(0).values.mean().item()
    return precision, recall, 2 * precision * recall / (precision + recall)


def rescaled(f1: float, baseline: float) -> float:
    """BERTScore rescaled with a baseline (bert_score's `rescale_with_baseline`): (F1 − b) / (1 − b), so 0 is as
    similar as an unrelated text and 1 the clean text itself; the raw F1 when there is no baseline (NaN)."""
    return f1 if baseline != baseline else (f1 - baseline) / (1 - baseline)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """Carlini-Wagner: max(0, z_y − max_{k≠y} z_k + κ), per row."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).max(1).values
    return (true - other + kappa).clamp(min=0)


def idf_weights(token_lists: list[list[int]], vocab: int) -> torch.Tensor:
    """BERTScore's idf over the training texts: log((M + 1) / (df + 1)) per token id."""
    df = torch.zeros(vocab)
    for ids in token_lists:
        df[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
    return torch.log((len(token_lists) + 1) / (df + 1))


@dataclass
class Relaxation:
    """What one step computes: the relaxed inputs and the three terms (per text of the group)."""

    coeffs: torch.Tensor  # π [G·B, T, V]
    margin: torch.Tensor  # [G]
    similarity: torch.Tensor  # [G]
    fluency: torch.Tensor  # [G]


class GBDA:
    """A white-box attack on `classifier` (any `*ForSequenceClassification`, LoRA-wrapped or not) with `lm` (the
    causal LM of the same vocabulary) as fluency and similarity model."""

    def __init__(self, classifier, lm, vocab: int, banned: list[int], idf: torch.Tensor | None,
                 settings: GBDASettings = GBDASettings()):
        self.classifier, self.lm, self.s = classifier, lm, settings
        self.embeddings = classifier.get_input_embeddings().weight[:vocab].detach()
        self.lm_embeddings = lm.get_input_embeddings().weight[:vocab].detach()
        self.ban = torch.zeros(vocab)
        self.ban[banned] = -1e4  # never sampled: relaxed weight e^-1e4
        self.idf = idf

    def held(self, ids: torch.Tensor) -> torch.Tensor:
        """[G, T]: True at the positions whose clean token is kept (the first and last, under `hold_ends`)."""
        mask = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        if self.s.hold_ends:
            mask[:, 0] = mask[:, -1] = True
        return mask

    def relax(self, log_coeffs: torch.Tensor, labels: torch.Tensor, clean_hidden: torch.Tensor,
              weights: torch.Tensor | None, ids: torch.Tensor | None = None) -> Relaxation:
        """One draw of `batch` relaxations per text of the group and the terms of the loss; `ids` [G, T] the clean
        tokens, kept as one-hot rows at the held positions (None: none held)."""
        g, t, v = log_coeffs.shape
        b = self.s.batch
        theta = (log_coeffs + self.ban.to(log_coeffs.device)).repeat_interleave(b, 0)  # [G·B, T, V]
        coeffs = F.gumbel_softmax(theta, hard=False)
        if ids is not None:
            held = self.held(ids).repeat_interleave(b, 0)[..., None]
            coeffs = torch.where(held, F.one_hot(ids, v).to(coeffs.dtype).repeat_interleave(b, 0), coeffs)
        pred = self.classifier(inputs_embeds=coeffs @ self.embeddings).logits.float()
        margin = margin_loss(pred, labels.repeat_interleave(b), self.s.kappa).view(g, b).mean(1)
        out = self.lm(inputs_embeds=coeffs @ self.lm_embeddings, output_hidden_states=True)
        sim = torch.zeros(g, device=log_coeffs.device)
        if self.s.lam_sim > 0:
            hidden = out.hidden_states[self.s.embed_layer].float()
            w = None if weights is None else weights.repeat_interleave(b, 0)
            trim = ids is not None and self.s.hold_ends
            sim = bert_score(clean_hidden.repeat_interleave(b, 0), hidden, w, trim).view(g, b).mean(1)
        return Relaxation(coeffs, margin, sim, log_perplexity(out.logits, coeffs).view(g, b).mean(1))

    def optimise(self, ids: torch.Tensor, labels: torch.Tensor, generator_seed: int, log=None) -> tuple:
        """Θ for a group of equal-length texts ids [G, T] with their labels [G]; and the final terms."""
        device = self.embeddings.device
        ids, labels = ids.to(device), labels.to(device)
        g, t = ids.shape
        v = self.embeddings.shape[0]
        with torch.no_grad():
            clean_hidden = self.lm(input_ids=ids, output_hidden_states=True).hidden_states[self.s.embed_layer].float()
            weights = None
            if self.idf is not None:
                weights = self.idf.to(device)[ids]
                weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        log_coeffs = torch.zeros(g, t, v, device=device)
        log_coeffs.scatter_(2, ids[..., None], self.s.init_coeff)
        log_coeffs.requires_grad_(True)
        optimizer = torch.optim.Adam([log_coeffs], lr=self.s.lr)
        torch.manual_seed(generator_seed)  # the Gumbel noise
        for step in range(self.s.steps):
            optimizer.zero_grad()
            r = self.relax(log_coeffs, labels, clean_hidden, weights, ids)
            total = r.margin - self.s.lam_sim * r.similarity + self.s.lam_perp * r.fluency
            total.sum().backward()
            optimizer.step()
            if log and (step % 25 == 0 or step == self.s.steps - 1):
                log(f"  step {step:3d}: margin {r.margin.mean():.3f}  sim {r.similarity.mean():.3f}  "
                    f"nll {r.fluency.mean():.3f}")
        terms = {"margin": r.margin.detach().cpu(), "similarity": r.similarity.detach().cpu(),
                 "fluency": r.fluency.detach().cpu()}
        return log_coeffs.detach(), terms

    @torch.no_grad()
    def draw(self, log_coeffs: torch.Tensor, n: int, ids: torch.Tensor | None = None) -> torch.Tensor:
        """n hard token sequences per text from Θ [G, T, V] (a Gumbel-max draw is a draw from softmax(Θ)): [G, n, T];
        with the clean `ids` [G, T], the held positions keep their clean token in every draw."""
        theta = log_coeffs + self.ban.to(log_coeffs.device)
        gumbel = -torch.empty(theta.shape[0], n, *theta.shape[1:], device=theta.device).exponential_().log()
        drawn = (theta[:, None] + gumbel).argmax(-1)
        if ids is None:
            return drawn
        ids = ids.to(drawn.device)
        return torch.where(self.held(ids)[:, None], ids[:, None], drawn)


def token_change_rate(clean: list[int], adv: list[int]) -> float:
    """Word error rate over token ids (Levenshtein distance / clean length): the paper's token error rate."""
    prev = list(range(len(adv) + 1))
    for i, a in enumerate(clean, 1):
        cur = [i] + [0] * len(adv)
        for j, b in enumerate(adv, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b))
        prev = cur
    return prev[-1] / max(1, len(clean))


def mean_or_nan(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan
