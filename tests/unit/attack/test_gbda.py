"""GBDA against known answers: the fluency term is the causal LM's loss (by the library, and by hand on a relaxed
sequence), the margin and BERTScore by hand, the attack flips a small classifier's decisions on the texts it
was run on, and random precision inference changes the width between forward passes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qlbench.attack.gbda import GBDA, GBDASettings, bert_score, idf_weights, log_perplexity, margin_loss
from qlbench.study.settings import tree


def float32_spacings(value: float, n: int = 8) -> float:
    """`n` float32 spacings at `value`'s magnitude, the tolerance for a float32 computed two ways: a margin carries
    κ = 1000, where float32 steps by 6.1e-5, and two passes differ by a spacing or two (1e-4 is 1.6 spacings)."""
    return n * float(np.spacing(np.float32(abs(value))))


def tiny_lm(vocab=40, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def test_fluency_term_is_the_causal_lm_loss_on_one_hot_tokens():
    lm = tiny_lm()
    ids = torch.tensor([[3, 17, 5, 28, 9, 11]])
    coeffs = torch.nn.functional.one_hot(ids, 40).float()
    with torch.no_grad():
        relaxed = log_perplexity(lm(inputs_embeds=coeffs @ lm.get_input_embeddings().weight).logits, coeffs)
        reference = lm(input_ids=ids, labels=ids).loss
    assert relaxed.item() == pytest.approx(reference.item(), rel=1e-5)


def test_fluency_term_of_a_relaxed_sequence_by_hand():
    """The term the attack minimises, from its own Gumbel draw, recomputed position by position with explicit sums."""
    lm = tiny_lm()
    clf = tiny_classifier_like(lm)
    settings = GBDASettings(batch=2, lam_sim=0.0)
    gbda = GBDA(clf, lm, 40, banned=[], idf=None, settings=settings)
    theta = torch.randn(1, 5, 40)
    torch.manual_seed(3)
    with torch.no_grad():
        r = gbda.relax(theta, torch.tensor([1]), clean_hidden=None, weights=None)
        emb = lm.get_input_embeddings().weight
        by_hand = []
        for pi in r.coeffs:  # each relaxed sequence: [T, V]
            embeds = torch.stack([sum(pi[t, v] * emb[v] for v in range(40)) for t in range(5)])
            logp = torch.log_softmax(lm(inputs_embeds=embeds[None]).logits[0], -1)
            nll = [-sum(pi[t + 1, v] * logp[t, v] for v in range(40)) for t in range(4)]
            by_hand.append(sum(nll) / 4)
    assert r.fluency.item() == pytest.approx(float(sum(by_hand) / 2), rel=1e-4)
    assert not torch.allclose(r.coeffs[0], torch.nn.functional.one_hot(r.coeffs[0].argmax(-1), 40).float())


def tiny_classifier_like(lm, labels=3):
    from transformers import GPT2ForSequenceClassification

    clf = GPT2ForSequenceClassification(lm.config.__class__.from_dict({**lm.config.to_dict(), "num_labels": labels,
                                                                        "pad_token_id": 0}))
    clf.load_state_dict(lm.state_dict(), strict=False)
    return clf.eval()


def test_margin_is_carlini_wagner_by_hand():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0], [1.0, 1.0, 0.9]])
    got = margin_loss(logits, torch.tensor([0, 0, 2]), kappa=5.0)
    assert got.tolist() == pytest.approx([2.0 - 1.0 + 5.0, max(0.0, 0.0 - 3.0 + 5.0), 0.9 - 1.0 + 5.0])
    assert margin_loss(logits, torch.tensor([1, 0, 2]), kappa=0.0)[0].item() == 0.0  # already wrong: no loss


def test_bert_score_is_one_for_the_clean_text_and_idf_weighted_recall_by_hand():
    h = torch.randn(1, 4, 8)
    assert bert_score(h, h).item() == pytest.approx(1.0, abs=1e-6)
    cand = torch.randn(1, 3, 8)
    w = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    cos = torch.nn.functional.cosine_similarity(h[0, :, None], cand[0, None], dim=-1)
    assert bert_score(h, cand, w).item() == pytest.approx((cos.max(1).values * w[0]).sum().item(), rel=1e-5)
    idf = idf_weights([[1, 2], [2, 3], [2]], vocab=5)
    assert idf[2].item() == pytest.approx(math.log(4 / 4)) and idf[1].item() == pytest.approx(math.log(4 / 2))


@pytest.fixture(scope="module")
def small_classifier(micro_resources):
    """The micro base with a LoRA + head classifier trained on chatterbot's topics (LoRA on every block linear)."""
    from peft import LoraConfig, get_peft_model

    from qlbench.attack.victim import classifier_from_lm
    from qlbench.cell.loop import LoopSettings, train
    from qlbench.data import labelled, models
    from qlbench.tasks import classification as task

    torch.set_num_threads(2)
    spec = {"source": "pretrain", "arch": "gpt2"}
    lm, tok = models.load(spec, "micro-gpt2", str(micro_resources), dtype=torch.float32)
    ds = {"source": "chatterbot", "format": "classification", "topics": ["ai", "emotion", "trivia"],
          "per_class": 100, "eval_fraction": 0.2}
    train_ex, eval_ex = labelled.load(ds, "topics")
    data = task.prepare(tok, train_ex, eval_ex, tree(seq_len=16))
    torch.manual_seed(0)  # the new head's init too: the classifier must not depend on which tests ran before
    clf = classifier_from_lm(lm, {**task.head_kwargs(ds), "pad_token_id": tok.pad_token_id})
    model = get_peft_model(clf, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"],
                                           fan_in_fan_out=True, task_type="SEQ_CLS"))
    train(model, task.batch_sampler(data.train, 16, 0), LoopSettings(steps=200, lr=5e-3), device=torch.device("cpu"),
          loss=task.loss, log=lambda s: None)
    merged = model.merge_and_unload().eval().requires_grad_(False)
    return merged, lm.eval().requires_grad_(False), tok, data, train_ex


def test_attack_lowers_accuracy_on_the_texts_it_was_run_on(small_classifier):
    """Measured (2026-11-23): the 12 held-out texts the classifier gets right went from 100% to at most 25% accuracy
    with the paper's 100 steps; 8 texts keep the test short. With the ends held (2026-12-02, one run): 7 of 8
    flipped, 5 of them within BERTScore 0.5 (rescaled); raw F1 was 0.984-0.998 and the unrelated-pairs baseline
    0.990, so only the rescaled score tells hard texts apart on this LM. The paper's 100 hard draws per text: with
    30 (as this test once drew, to save time) 3 of 8 survived on this machine on 2026-12-06, on the code of stops 29
    and 30 alike; with 100, 1 of 8 (a misclassified draw is there to find, 30 draws miss it)."""
    from qlbench.attack import texts

    clf, lm, tok, data, train_ex = small_classifier
    from qlbench.tasks import classification as task

    pred = task.predict(clf, data.eval, 64, torch.device("cpu")).argmax(-1)
    right = [i for i in range(len(pred)) if pred[i] == data.eval["labels"][i]][:8]
    assert len(right) == 8
    chosen = [data.eval_examples[i].prompt for i in right]
    labels = [int(data.eval["labels"][i]) for i in right]
    idf = idf_weights(texts.token_ids(tok, [e.prompt for e in train_ex], 16), len(tok))
    rows = texts.attack_texts(clf, lm, tok, chosen, labels, 16, GBDASettings(), 0, idf,
                              torch.device("cpu"), log=lambda s: None)
    clean = sum(r["clean_pred"] == r["label"] for r in rows) / len(rows)
    adversarial = sum(r["adv_pred"] == r["label"] for r in rows) / len(rows)
    assert clean == 1.0
    assert adversarial <= 0.25, rows
    # the adversarial texts are texts: re-tokenised and classified afresh they are still misclassified
    again = texts._classify(clf, tok, [r["adv_text"] for r in rows], 16, torch.device("cpu"))
    assert [a for a in again] == [r["adv_pred"] for r in rows]
    assert all(r["adv_text"] != r["text"] for r in rows if r["adv_pred"] != r["label"])
    # every draw keeps the held ends; decoding and re-tokenising can still merge a drawn token into an end (BPE),
    # which `ends_kept` records (measured: 8 of 8 kept in one run, fewer in another)
    assert all(r["held_ends"] for r in rows)
    assert all(r["success"] == (r["adv_pred"] != r["label"] and r["similar"]) for r in rows)


def test_random_precision_changes_the_width_between_forward_passes():
    from qlbench.cell.precision import Precision
    from qlbench.quant.formats import quantize_module

    lm = tiny_lm()
    clf = tiny_classifier_like(lm)
    names = [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc")]
    settings = tree(format="int", symmetric=True, group_size=None, double_quant=False)
    fixed = {}
    for width in (2, 8):  # the outputs a fixed-width model gives, quantized by hand
        import copy

        ref = copy.deepcopy(clf)
        with torch.no_grad():
            for n in names:
                m = ref.get_submodule(n)
                m.weight.copy_(quantize_module(m, m.weight, width, settings.quant))
        fixed[width] = ref
    _, history = Precision(clf, names, {}, settings, 0, names).random_inference([2, 8], seed=0)
    x = torch.tensor([[5, 9, 2, 31, 7]])
    with torch.no_grad():
        outs = [clf(input_ids=x).logits for _ in range(12)]
        expected = {w: fixed[w](input_ids=x).logits for w in (2, 8)}
    assert len(history) == 12 and set(history) == {2, 8}
    assert any(a != b for a, b in zip(history, history[1:]))  # the width changes between passes
    for width, out in zip(history, outs):
        assert torch.allclose(out, expected[width], atol=1e-6)
    assert not torch.allclose(expected[2], expected[8], atol=1e-3)


def test_the_robustness_study_draws_its_random_widths_on_a_copy_of_the_classifier():
    """`robustness.model_at(..., "random")`, as the study's evaluate calls it: a width per forward pass from the
    study's `random_widths`, each pass equal to the classifier quantized by hand at the width it drew, and the
    fine-tuned classifier itself left at full precision for the other precisions."""
    import copy
    from types import SimpleNamespace

    from qlbench.attack import robustness
    from qlbench.quant.formats import quantize_module

    clf = tiny_classifier_like(tiny_lm())
    names = [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc")]
    settings = tree(format="int", symmetric=True, group_size=None, double_quant=True,
                    robustness={"random_widths": [2, 8]})
    x = torch.tensor([[5, 9, 2, 31, 7]])
    expected = {}
    for width in (2, 8):
        ref = copy.deepcopy(clf)
        with torch.no_grad():
            for n in names:
                m = ref.get_submodule(n)
                m.weight.copy_(quantize_module(m, m.weight, width, settings.replace(double_quant=False).quant))
            expected[width] = ref(input_ids=x).logits
    with torch.no_grad():
        before = clf(input_ids=x).logits
    model, drawn = robustness.model_at(SimpleNamespace(classifier=clf, module_names=names), "random", settings, 0)
    with torch.no_grad():
        outs = [model(input_ids=x).logits for _ in range(12)]
        after = clf(input_ids=x).logits
    assert model is not clf and torch.equal(before, after)
    assert len(drawn) == 12 and set(drawn) == {2, 8}
    for width, out in zip(drawn, outs):
        assert torch.allclose(out, expected[width], atol=1e-6)


def test_the_held_ends_never_change_in_any_hard_text():
    """Θ starts uniform (init_coeff 0): without the hold, 39 of 40 tokens would replace each end in a draw; with it
    the first and last positions keep their clean token in the relaxation and in every one of 200 hard draws, while
    the positions between do change."""
    lm = tiny_lm()
    clf = tiny_classifier_like(lm)
    settings = GBDASettings(steps=5, batch=3, init_coeff=0.0, samples=200)
    gbda = GBDA(clf, lm, 40, banned=[0], idf=None, settings=settings)
    ids = torch.tensor([[3, 17, 5, 28, 9], [11, 2, 30, 7, 21]])
    theta, _ = gbda.optimise(ids, torch.tensor([1, 2]), generator_seed=0)
    draws = gbda.draw(theta, settings.samples, ids)  # [G, n, T]
    assert torch.equal(draws[:, :, 0], ids[:, None, 0].expand(-1, 200))
    assert torch.equal(draws[:, :, -1], ids[:, None, -1].expand(-1, 200))
    assert (draws[:, :, 1:-1] != ids[:, None, 1:-1]).float().mean() > 0.5  # the free positions are attacked
    with torch.no_grad():
        clean_hidden = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        r = gbda.relax(theta, torch.tensor([1, 2]), clean_hidden, None, ids)
    one_hot = torch.nn.functional.one_hot(ids, 40).float().repeat_interleave(3, 0)
    assert torch.equal(r.coeffs[:, [0, -1]], one_hot[:, [0, -1]])


def test_bertscore_of_a_hard_text_by_hand():
    """P, R and F1 of greedy cosine matching, written out for 2-d embeddings; then rescaled with a baseline."""
    from qlbench.attack.gbda import bert_score_f1, rescaled

    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cand = torch.tensor([[1.0, 1.0], [2.0, 0.0], [-1.0, 0.0]])
    s = 1 / math.sqrt(2)  # cos of [1, 0] or [0, 1] with [1, 1]
    # cosines: ref 0 with cand (s, 1, -1); ref 1 with cand (s, 0, 0)
    recall = (1 + s) / 2  # each clean token's best match
    precision = (s + 1 + 0) / 3  # each hard token's best match
    f1 = 2 * precision * recall / (precision + recall)
    assert bert_score_f1(ref, cand) == pytest.approx((precision, recall, f1), rel=1e-6)
    assert rescaled(f1, 0.6) == pytest.approx((f1 - 0.6) / 0.4)
    assert rescaled(f1, float("nan")) == f1


class WordTokenizer:
    """One token per word, its id given; enough of a tokenizer for texts.Similarity."""
    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(w) for w in t.split()] for t in texts]}


def test_the_similarity_of_hard_texts_is_bertscore_of_the_lms_last_layer_by_hand():
    """texts.Judge on a tiny LM: F1 from its last hidden layer's token states, computed here with explicit loops;
    the baseline the mean F1 of the different clean texts' pairs; `similar` the rescaled score against the
    threshold."""
    from qlbench.attack.texts import Judge, Similarity

    lm = tiny_lm()
    clean = ["3 17 5", "9 9 30 2", "12 4"]
    with torch.no_grad():
        states = {t: lm(input_ids=torch.tensor([[int(w) for w in t.split()]]),
                        output_hidden_states=True).hidden_states[-1][0] for t in clean + ["3 18 5 6"]}

    def cos(a, b):
        return float(sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))

    def f1(r, c):
        rows = [[cos(x.tolist(), y.tolist()) for y in states[c]] for x in states[r]]
        recall = sum(max(row) for row in rows) / len(rows)
        precision = sum(max(rows[i][j] for i in range(len(rows))) for j in range(len(rows[0]))) / len(rows[0])
        return 2 * precision * recall / (precision + recall)

    sim = Similarity(lm, WordTokenizer(), -1, 16, torch.device("cpu"))
    hidden = sim.hidden(clean)
    baseline = sim.baseline(hidden, clean)
    pairs = [(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)]  # each text with its next two, cyclically
    assert baseline == pytest.approx(sum(f1(clean[i], clean[j]) for i, j in pairs) / 6, rel=1e-5)
    expected = f1(clean[0], "3 18 5 6")
    for threshold in (-1.0, 2.0):
        score = Judge(sim, baseline, threshold).scores(hidden[0], ["3 18 5 6"])[0]
        assert score["adv_bertscore_f1"] == pytest.approx(expected, rel=1e-5)
        assert score["adv_bertscore"] == pytest.approx((expected - baseline) / (1 - baseline), rel=1e-5)
        assert score["similar"] == (threshold < 0)


def test_the_similarity_term_leaves_out_the_held_ends_as_the_papers_code():
    refs, cands = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    cos = torch.nn.functional.cosine_similarity(refs[0, :, None], cands[0, None], dim=-1)
    inner = cos[1:-1, 1:-1].max(1).values
    assert bert_score(refs, cands, trim=True).item() == pytest.approx(inner.sum().item() / 5, rel=1e-5)
    w = torch.tensor([[0.1, 0.2, 0.3, 0.25, 0.15]])
    assert bert_score(refs, cands, w, trim=True).item() == pytest.approx((inner * w[0, 1:-1]).sum().item(), rel=1e-5)


def test_a_text_outside_the_similarity_constraint_is_no_attack():
    from qlbench.attack.robustness import outcomes

    labels, clean = [0, 1, 2, 0], [0, 1, 2, 1]  # the last one the model gets wrong already
    attacked = [1, 0, 2, 0]  # texts 0 and 1 flipped, text 2 held, text 3 turned right
    got = outcomes(labels, clean, attacked, similar=[True, False, True, True])
    assert got["clean_accuracy"] == 0.75
    assert got["attack_success"] == pytest.approx(1 / 3)  # only text 0: text 1's hard text is too far
    assert got["adv_accuracy"] == 0.75  # text 1 keeps its clean (right) prediction, text 3 its adversarial one
    assert got["attack_success_unconstrained"] == pytest.approx(2 / 3)
    assert got["adv_accuracy_unconstrained"] == 0.5


def test_the_robustness_table_summarises_similarity_and_perplexity_of_the_hard_texts(tmp_path):
    import polars as pl

    from qlbench.analysis import robustness as table

    coords = {"model": "m", "rank": 8, "seed": 0}
    adv = pl.DataFrame([{**coords, "label": 0, "clean_pred": 0, "adv_pred": p, "token_change": 0.5,
                         "clean_lm_nll": 2.0, "adv_lm_nll": 3.0, "clean_lm_ppl": math.exp(2.0),
                         "adv_lm_ppl": math.exp(n), "success": s, "similar": s, "adv_bertscore_f1": f,
                         "adv_bertscore": f - 0.5, "bertscore_baseline": 0.5, "similarity_threshold": 0.5,
                         "ends_kept": True} for p, s, f, n in [(1, True, 0.9, 3.0), (1, False, 0.6, 5.0)]])
    folder = tmp_path / "robustness" / "m"
    folder.mkdir(parents=True)
    adv.write_parquet(folder / "adversarial.parquet")
    pl.DataFrame([{**coords, "precision": "fp32", "widths": "", "clean_accuracy": 1.0, "adv_accuracy": 0.5,
                   "attack_success": 0.5, "eval_accuracy": 0.9, "adv_accuracy_unconstrained": 0.0,
                   "attack_success_unconstrained": 1.0}]).write_parquet(folder / "fp32.parquet")
    table.write(tmp_path / "robustness", tmp_path / "out")
    text = (tmp_path / "out/robustness.md").read_text()
    per_seed = table.attacks(adv).row(0, named=True)
    assert per_seed["success"] == 0.5 and per_seed["similar"] == 0.5
    assert per_seed["adv_bertscore_f1"] == pytest.approx(0.75)
    assert per_seed["adv_lm_ppl"] == pytest.approx((math.exp(3.0) + math.exp(5.0)) / 2)  # the median of two
    assert "| 50% | 50% (≥ 0.5) | 0.750 (0.25; 0.500) |" in text
    assert "50.0% |" in text and "100.0% |" in text  # constrained and unconstrained success side by side


class HandSwitched(torch.nn.Module):
    """The classifier quantized by hand at each width, the width of each forward pass given in advance."""

    def __init__(self, by_width: dict, widths: list[int]):
        super().__init__()
        self.by_width, self.widths, self.calls = by_width, list(widths), 0

    def get_input_embeddings(self):
        return next(iter(self.by_width.values())).get_input_embeddings()

    def forward(self, **kwargs):
        width = self.widths[self.calls]
        self.calls += 1
        return self.by_width[width](**kwargs)


def _by_hand(clf, names, widths, quant):
    import copy

    from qlbench.quant.formats import quantize_module

    out = {}
    for width in widths:
        ref = copy.deepcopy(clf)
        with torch.no_grad():
            for n in names:
                m = ref.get_submodule(n)
                m.weight.copy_(quantize_module(m, m.weight, width, quant))
        out[width] = ref.eval()
    return out


NAMES = [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_the_random_precision_attack_takes_each_steps_gradient_at_the_width_drawn_for_it():
    """GBDA against `model_at(..., "random")`: the widths of its 6 steps are the seed's stream (random.Random(5)),
    and Θ after them is, to float precision, Θ from the same Gumbel noise with step k's gradient taken on the
    classifier quantized by hand at width k — not FP32's, nor one fixed width's."""
    import random
    from types import SimpleNamespace

    from qlbench.attack import robustness

    lm = tiny_lm()
    clf = tiny_classifier_like(lm)
    settings = tree(format="int", symmetric=True, group_size=None, double_quant=False,
                    robustness={"random_widths": [2, 8]})
    model, drawn = robustness.model_at(SimpleNamespace(classifier=clf, module_names=NAMES), "random", settings, 5)
    stream = random.Random(5)
    expected = [stream.choice([2, 8]) for _ in range(6)]
    assert set(expected) == {2, 8}  # the seed switches widths within the 6 steps
    gs = GBDASettings(steps=6, batch=2, lam_sim=0.0)
    ids, labels = torch.tensor([[3, 17, 5, 28, 9]]), torch.tensor([1])

    def theta(classifier):
        return GBDA(classifier, lm, 40, banned=[0], idf=None, settings=gs).optimise(ids, labels, 11)[0]

    got = theta(model)
    assert drawn == expected
    fixed = _by_hand(clf, NAMES, (2, 8), settings.quant)
    assert torch.allclose(got, theta(HandSwitched(fixed, expected)), atol=1e-5)
    for other in (clf, fixed[2], fixed[8]):
        assert not torch.allclose(got, theta(other), atol=1e-3)


def _victim(vocab_text: str):
    """A tiny victim with a real (tiny) BPE tokenizer: what `robustness.attack_rows` reads."""
    from types import SimpleNamespace

    from qlbench.data import models
    from qlbench.data.example import Example

    tok = models.train_tokenizer(vocab_text, 300)
    lm = tiny_lm(vocab=len(tok))
    clf = tiny_classifier_like(lm)
    clf.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        clf.score.weight.mul_(300)  # logits of a few units, so that 4-bit rounding moves the margin visibly
    texts = ["the quick brown fox jumps over", "a lazy dog sleeps all day long"]
    data = SimpleNamespace(eval_examples=[Example(t, "x") for t in texts], eval={"labels": torch.tensor([1, 2])},
                           labels=["a", "b", "c"])
    return SimpleNamespace(classifier=clf, lm=lm.requires_grad_(False), tokenizer=tok, data=data,
                           train_texts=texts, module_names=NAMES)


TEXT = " ".join(["the quick brown fox jumps over a lazy dog that sleeps all day long in the sun"] * 20)


def test_a_white_box_attack_on_the_quantized_model_runs_on_the_quantized_model():
    """`attack_rows(v, "fake4", ...)`: with Θ so peaked that every relaxation is the clean text, the margin the attack
    minimised (κ large: never clamped) is the hand-quantized 4-bit classifier's on the clean tokens (FP32's
    differs), and its clean
    predictions are that model's; the rows say which model they were made against."""
    from qlbench.attack import robustness, texts

    v = _victim(TEXT)
    settings = tree(format="int", symmetric=True, group_size=None, double_quant=False, seq_len=16,
                    robustness={"examples": 2, "attack": {"steps": 1, "lr": 1e-9, "init_coeff": 60.0, "samples": 2,
                                                          "lam_sim": 0.0, "kappa": 1000.0}})
    rows = robustness.attack_rows(v, "fake4", settings, 0, torch.device("cpu"), log=lambda s: None)
    fixed = _by_hand(v.classifier, NAMES, (4,), settings.quant)[4]
    for r in rows:
        ids = torch.tensor([texts.token_ids(v.tokenizer, [r["text"]], 16)[0]])
        with torch.no_grad():
            quantized, fp32 = (margin_loss(m(input_ids=ids).logits, torch.tensor([r["label"]]), 1000.0).item()
                               for m in (fixed, v.classifier))
        assert r["final_margin"] == pytest.approx(quantized, abs=float32_spacings(quantized))
        assert abs(quantized - fp32) > 10 * float32_spacings(quantized)  # the check above tells the models apart
        assert r["attacked"] == "fake4" and r["attack_widths"] == ""
    assert [r["clean_pred"] for r in rows] == texts._classify(fixed, v.tokenizer, [r["text"] for r in rows], 16,
                                                              torch.device("cpu"))


def test_the_random_precision_attack_records_each_texts_step_widths_from_its_own_stream():
    """Against random precision, one classifier pass a step: pass 0 classifies the clean texts, then each group's
    steps, then its texts' hard draws (one pass each here); `attack_widths` holds exactly its steps' widths of
    the stream `random.Random(attack_draw_seed(seed))`."""
    import random

    from qlbench.attack import robustness

    v = _victim(TEXT)
    settings = tree(format="int", symmetric=True, group_size=None, double_quant=False, seq_len=16,
                    robustness={"examples": 2, "random_widths": [4, 6, 8],
                                "attack": {"steps": 4, "samples": 2, "lam_sim": 0.0}})
    rows = robustness.attack_rows(v, "random", settings, 3, torch.device("cpu"), log=lambda s: None)
    stream = random.Random(robustness.attack_draw_seed(3))
    widths = [stream.choice([4, 6, 8]) for _ in range(20)]
    lengths = [r["n_tokens"] for r in rows]
    assert lengths[0] != lengths[1]  # two groups, shorter first
    first, second = sorted(range(2), key=lambda i: lengths[i])
    assert rows[first]["attack_widths"] == ",".join(map(str, widths[1:5]))
    assert rows[second]["attack_widths"] == ",".join(map(str, widths[6:10]))  # after the first text's draw pass
    assert all(r["attacked"] == "random" for r in rows)


def test_the_robustness_table_puts_direct_and_transferred_accuracy_side_by_side(tmp_path):
    """Planted rows, two seeds: at 4 bits the texts made against it leave 25% ± CI, FP32's texts 50% and 70%; FP32's
    own row is both its direct and its transferred one; random has no direct attack here (–)."""
    import polars as pl

    from qlbench.analysis import robustness as table

    rows = []
    for seed, fake4_direct, fake4_transfer in [(0, 0.25, 0.5), (1, 0.25, 0.7)]:
        base = {"model": "m", "rank": 8, "seed": seed, "clean_accuracy": 0.9, "attack_success": 0.1,
                "eval_accuracy": 0.8, "adv_accuracy_unconstrained": 0.0, "attack_success_unconstrained": 1.0}
        rows += [{**base, "precision": "fp32", "attacked": "fp32", "widths": "", "adv_accuracy": 0.1},
                 {**base, "precision": "fake4", "attacked": "fp32", "widths": "", "adv_accuracy": fake4_transfer},
                 {**base, "precision": "fake4", "attacked": "fake4", "widths": "", "adv_accuracy": fake4_direct},
                 {**base, "precision": "random", "attacked": "fp32", "widths": "4,8", "adv_accuracy": 0.3}]
    folder = tmp_path / "robustness"
    folder.mkdir()
    pl.DataFrame(rows).write_parquet(folder / "rows.parquet")
    table.write(folder, tmp_path / "out")
    lines = (tmp_path / "out/robustness.md").read_text().splitlines()
    fp32 = next(line for line in lines if line.startswith("| FP32"))
    fake4 = next(line for line in lines if line.startswith("| 4-bit PTQ (int"))
    rand = next(line for line in lines if line.startswith("| random"))
    ci = 12.706 * (0.1 * math.sqrt(2)) / math.sqrt(2) * 100  # t(0.975, 1) · sd / √n: 0.5 and 0.7 have sd 0.1·√2
    assert fake4.split(" | ")[3:5] == ["25.0% ± 0.0", f"60.0% ± {ci:.1f}"]
    assert fp32.split(" | ")[3:5] == ["10.0% ± 0.0", "10.0% ± 0.0"]
    assert rand.split(" | ")[3:5] == ["–", "30.0% ± 0.0"] and "{4,8} bits per pass" in rand


def test_the_evaluation_counts_clean_and_hard_texts_by_hand_at_the_precision_asked():
    """`robustness.measure` (what each robust_eval job writes) on hand-made texts at fake2 (2 bits, where this tiny
    classifier's predictions part from FP32's; at 4 bits they do not on these texts): every prediction is the
    hand-quantized classifier's, clean and adversarial accuracy and the attack's success follow from them by hand
    (a hard text outside the similarity constraint leaves the clean prediction standing), the held-out accuracy
    too, and the row names the model the texts were made against, not the model evaluated."""
    import itertools

    import polars as pl

    from qlbench.attack import robustness, texts
    from qlbench.tasks import classification

    cpu = torch.device("cpu")
    v = _victim(TEXT)
    settings = tree(format="int", symmetric=True, group_size=None, double_quant=False, seq_len=16)
    fixed = _by_hand(v.classifier, NAMES, (2,), settings.quant)[2]
    pool = [" ".join(words) for words in itertools.permutations("the quick brown fox jumps over".split(), 3)]
    pred = dict(zip(pool, texts._classify(fixed, v.tokenizer, pool, 16, cpu)))
    fp32 = dict(zip(pool, texts._classify(v.classifier, v.tokenizer, pool, 16, cpu)))
    a = next(t for t in pool if pred[t] != fp32[t])  # FP32 would count texts 0 and 1 otherwise
    b = next(t for t in pool if pred[t] != pred[a])
    c0, c1 = pred[a], pred[b]
    clean = [a, a, b, b]
    hard = [b, a, a, a]  # text 0 flips, 1 holds, 2 flips but is not similar enough, 3 flips
    labels = [c0, c0, c1, ({0, 1, 2} - {c0, c1}).pop()]  # the model gets 0-2 right and 3 wrong, clean and hard
    similar = [True, True, False, True]
    v.data.eval = classification.encode(v.tokenizer, clean, labels, 16)
    adv = pl.DataFrame({"index": [0, 1, 2, 3], "text": clean, "adv_text": hard, "label": labels, "similar": similar,
                        "attacked": ["fp32"] * 4})
    row = robustness.measure(v, adv, "fake2", settings, 0, cpu)
    assert [pred[t] == y for t, y in zip(clean, labels)] == [True, True, True, False]
    assert row["clean_accuracy"] == 0.75 and row["eval_accuracy"] == 0.75
    # adversarial: text 0 wrong (flipped), 1 right (held), 2 right (its hard text is no attack), 3 wrong (was wrong)
    assert row["adv_accuracy"] == 0.5 and row["attack_success"] == pytest.approx(1 / 3)
    assert row["adv_accuracy_unconstrained"] == 0.25 and row["attack_success_unconstrained"] == pytest.approx(2 / 3)
    assert row["attacked"] == "fp32" and row["precision"] == "fake2" and (row["backend"], row["bits"]) == ("fake", 2)
    assert row["examples"] == 4 and row["similar"] == 0.75


@pytest.mark.parametrize("bits", [4, 8])
def test_a_white_box_attack_through_bitsandbytes_modules_attacks_the_bitsandbytes_model(bits):
    """`attack_rows(v, "bnb4" / "bnb8")`: the attack's gradient goes through bitsandbytes' own Linear4bit /
    Linear8bitLt (their backward to the input embeddings), and with Θ peaked on the clean text the margin it
    minimised is the bitsandbytes model's on the clean tokens (FP32's differs); its clean predictions are the
    bitsandbytes model's."""
    pytest.importorskip("bitsandbytes")
    from qlbench.attack import robustness, texts, victim

    v = _victim(TEXT)
    settings = tree(format="nf", symmetric=True, group_size=None, double_quant=False, seq_len=16,
                    robustness={"examples": 2, "attack": {"steps": 2, "lr": 1e-9, "init_coeff": 60.0, "samples": 2,
                                                          "lam_sim": 0.0, "kappa": 1000.0}})
    rows = robustness.attack_rows(v, f"bnb{bits}", settings, 0, torch.device("cpu"), log=lambda s: None)
    real = victim.quantized(v, "bnb", bits, settings)
    kinds = {type(m).__name__ for m in real.modules()}
    assert ("Linear4bit" if bits == 4 else "Linear8bitLt") in kinds
    for r in rows:
        ids = torch.tensor([texts.token_ids(v.tokenizer, [r["text"]], 16)[0]])
        target = torch.tensor([r["label"]])
        with torch.no_grad():
            margins = {name: margin_loss(m(input_ids=ids).logits, target, 1000.0).item()
                       for name, m in (("bnb", real), ("fp32", v.classifier))}
        assert r["final_margin"] == pytest.approx(margins["bnb"], abs=float32_spacings(margins["bnb"]))
        assert abs(margins["bnb"] - margins["fp32"]) > 10 * float32_spacings(margins["bnb"])  # tells the models apart
        assert r["attacked"] == f"bnb{bits}"
    assert [r["clean_pred"] for r in rows] == texts._classify(real, v.tokenizer, [r["text"] for r in rows], 16,
                                                              torch.device("cpu"))
