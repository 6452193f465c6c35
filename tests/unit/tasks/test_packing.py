"""Packing that does not leak: TRL's best-fit-decreasing bins; a packed batch (several rows, padding) gives each
example the logits it has alone, on GPT-2 and Llama, eager and sdpa attention; its loss is the token-weighted mean
of the one-by-one losses; no example's first token carries a label; and without the position restart it leaks."""

from __future__ import annotations

import random

import pytest
import torch

from qlbench.tasks import packing

VOCAB, PAD = 97, 0


def test_bins_known_answers():
    # TRL's own docstring example (lengths 5, 2, 3, 1 with the 5 truncated to 4): [[0], [2, 3], [1]]
    assert packing.bins([4, 2, 3, 1], 4) == [[0], [2, 3], [1]]
    # by hand, max 10: 7 opens row 0 (3 left), 6 row 1 (4 left), 3 fits row 0 exactly, 3 then row 1 (1 left),
    # 2 fits nowhere: row 2; the 1 at index 3 goes to row 1 (1 left, the tightest), the 1 at index 6 to row 2
    # (8 left: row 1 is full)
    assert packing.bins([3, 6, 7, 1, 3, 2, 1], 10) == [[2, 0], [1, 4, 3], [5, 6]]
    # ties: the lower index first, into the oldest of equally tight rows
    assert packing.bins([2, 2, 2, 2], 3) == [[0], [1], [2], [3]]
    assert packing.bins([1, 1, 1], 5) == [[0, 1, 2]]


def test_bins_are_trls_bfd():
    datasets = pytest.importorskip("datasets")
    from trl.data_utils import pack_dataset

    rng = random.Random(0)
    for trial in range(20):
        max_length = rng.choice([8, 16, 33, 64])
        lengths = [rng.randint(1, max_length) for _ in range(rng.randint(1, 60))]
        ds = datasets.Dataset.from_dict({"input_ids": [list(range(1000 * i, 1000 * i + n))
                                                       for i, n in enumerate(lengths)]})
        packed = pack_dataset(ds, max_length, strategy="bfd")
        trl_bins = [[ids[j] // 1000 for j in range(len(ids)) if j == 0 or ids[j] // 1000 != ids[j - 1] // 1000]
                    for ids in packed["input_ids"]]
        assert packing.bins(lengths, max_length) == trl_bins, (trial, max_length, lengths)


def test_packed_rows_are_trls_packed_batches():
    """TRL's `pack_dataset(..., "bfd")` and its padding-free collator, row by row: the same tokens, positions and
    labels (TRL then flattens a batch into one row; ours pad each row to max_length)."""
    datasets = pytest.importorskip("datasets")
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = _examples(30, 32, seed=7)
    ds = datasets.Dataset.from_dict({"input_ids": [e[0] for e in examples], "labels": [e[1] for e in examples]})
    packed = pack_dataset(ds, 32, strategy="bfd")
    collate = DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True)
    ours = packing.rows(examples, 32, PAD, packing=True)
    assert ours.shape[0] == len(packed)
    for r, row in enumerate(packed):
        theirs = collate([row])
        n = theirs["input_ids"].shape[1]
        for key in ("input_ids", "labels", "position_ids"):
            assert ours[key][r, :n].tolist() == theirs[key][0].tolist(), (r, key)
        assert (ours["labels"][r, n:] == -100).all() and (ours["input_ids"][r, n:] == PAD).all()


def test_bins_refuse_an_example_longer_than_a_row():
    with pytest.raises(AssertionError, match="example 1: 9 tokens"):
        packing.bins([3, 9], 8)


def _examples(n: int, max_length: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Examples of random lengths; labels -100 on a random prompt part (completion-only), else the token."""
    g = random.Random(seed)
    out = []
    for _ in range(n):
        k = g.randint(2, max_length // 2)
        ids = [g.randrange(1, VOCAB) for _ in range(k)]
        prompt = g.randint(0, k - 1)
        out.append((ids, [-100] * prompt + ids[prompt:]))
    return out


def _model(arch: str, attn: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)
    cfg._attn_implementation = attn
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


def _alone(model, examples) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0].cpu()
                for ids, _ in examples]


def _spans(batch):
    """(row, start, length) of each example in a packed batch, from its position runs (padding excluded)."""
    out = []
    for r in range(batch.shape[0]):
        pos, lab = batch["position_ids"][r].tolist(), batch["input_ids"][r].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        out += [(r, a, b - a) for a, b in zip(starts, starts[1:]) if any(t != PAD for t in lab[a:b])]
    return out


def _packed_vs_alone(model, examples, batch, run=None) -> float:
    """The largest |Δ logit| between each example's logits in the packed batch (as `run`, if given, is fed to the
    model) and alone."""
    with torch.no_grad():
        logits = model(**packing.inputs((run or batch).to(model.device))).logits.cpu()
    alone = {tuple(ids): lg for (ids, _), lg in zip(examples, _alone(model, examples))}
    worst, seen = 0.0, 0
    for r, a, k in _spans(batch):
        ids = tuple(batch["input_ids"][r, a : a + k].tolist())
        worst = max(worst, (logits[r, a : a + k] - alone[ids]).abs().max().item())
        seen += 1
    assert seen == len(examples)
    return worst


CASES = [("gpt2", "eager"), ("gpt2", "sdpa"), ("llama", "eager"), ("llama", "sdpa")]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("arch,attn", CASES)
def test_packed_logits_are_each_examples_logits_alone(arch, attn, device):
    model, max_length = _model(arch, attn).to(device), 32
    examples = _examples(12, max_length)
    batch = packing.rows(examples, max_length, PAD, packing=True)
    assert batch.shape[0] > 1 and (batch["input_ids"] == PAD).any()  # several rows, and padding in them
    assert _packed_vs_alone(model, examples, batch) < {"cpu": 1e-5, "cuda": 1e-4}[device]


@pytest.mark.parametrize("arch,attn", CASES)
@pytest.mark.parametrize("change", ["positions run on", "attention mask passed"])
def test_without_the_restart_or_with_a_mask_examples_attend_to_each_other(arch, attn, change):
    """The instrument: positions running on through a row, or the restart with a (2D, all-ones) attention mask
    passed beside it, give other logits than each example alone (transformers reads the restart only without one)."""
    model, max_length = _model(arch, attn), 32
    examples = _examples(12, max_length)
    batch = packing.rows(examples, max_length, PAD, packing=True)
    if change == "positions run on":
        broken = {"position_ids": torch.arange(max_length).expand(batch.shape[0], -1).clone()}
    else:
        broken = {"attention_mask": torch.ones_like(batch["input_ids"])}
    assert _packed_vs_alone(model, examples, batch, packing.Batch(dict(batch) | broken)) > 1e-2


@pytest.mark.parametrize("arch,attn", CASES)
def test_padded_logits_are_each_examples_logits_alone(arch, attn):
    model, max_length = _model(arch, attn), 32
    examples = _examples(5, max_length)
    batch = packing.rows(examples, max_length, PAD, packing=False)
    assert batch.shape[0] == 5 and set(batch) == {"input_ids", "labels", "attention_mask"}
    with torch.no_grad():
        logits = model(**packing.inputs(batch)).logits
    for r, ((ids, _), lg) in enumerate(zip(examples, _alone(model, examples))):
        assert (logits[r, : len(ids)] - lg).abs().max().item() < 1e-5


def _alone_losses(model, examples) -> list[tuple[float, int]]:
    """(sum of CE over the example's label tokens, their count), each example alone."""
    out = []
    for (ids, lab), lg in zip(examples, _alone(model, examples)):
        target = torch.tensor(lab[1:])
        out.append((torch.nn.functional.cross_entropy(lg[:-1], target, ignore_index=-100, reduction="sum").item(),
                    int((target != -100).sum())))
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_the_loss_is_the_token_weighted_mean_of_the_examples_losses(arch, packed):
    model, max_length = _model(arch, "sdpa"), 32
    examples = _examples(12, max_length, seed=3)
    batch = packing.rows(examples, max_length, PAD, packing=packed)
    alone = _alone_losses(model, examples)
    expected = sum(s for s, _ in alone) / sum(n for _, n in alone)
    assert packing.label_tokens(batch) == sum(n for _, n in alone)
    with torch.no_grad():
        assert packing.loss(model, batch).item() == pytest.approx(expected, rel=1e-5)
        loss, (logits,) = packing.loss_and_logits(model, batch)
    assert loss.item() == pytest.approx(expected, rel=1e-5) and logits.shape == (*batch.shape, VOCAB)
    got = packing.eval_loss(model, batch, batch_size=2, device=torch.device("cpu"))
    assert got == pytest.approx(expected, rel=1e-5)


def test_rows_layout():
    examples = [([5, 6, 7], [-100, 6, 7]), ([8, 9], [8, 9]), ([4], [4]), ([3, 3, 3, 3], [3, 3, 3, 3])]
    b = packing.rows(examples, 5, PAD, packing=True)
    # bins: 4 -> row 0 (1 left), 3 -> row 1 (2 left), 2 -> row 1, 1 -> row 0
    assert b["input_ids"].tolist() == [[3, 3, 3, 3, 4], [5, 6, 7, 8, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    # every example's first token unlabelled (packed, the previous example's last token would predict it)
    assert b["labels"].tolist() == [[-100, 3, 3, 3, -100], [-100, 6, 7, -100, 9]]
    p = packing.rows(examples[:2], 5, PAD, packing=False)
    assert p["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]]
    assert p["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert p["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, 9, -100, -100, -100]]
    # the padding of a packed row: its own position run, no labels
    q = packing.rows(examples[:2], 8, PAD, packing=True)
    assert q["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert q["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100]]


def test_no_label_at_any_examples_first_token():
    examples = _examples(40, 64, seed=5)
    b = packing.rows(examples, 64, PAD, packing=True)
    assert (b["labels"][b["position_ids"] == 0] == -100).all()
    assert (b["labels"][b["input_ids"] == PAD] == -100).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_peft_wrapped_model_passes_the_positions_on(arch):
    """A cell trains a LoRA (peft) model: its forward must hand the position ids to the base."""
    from peft import LoraConfig, get_peft_model

    base = _model(arch, "sdpa")
    targets = ["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"]
    model = get_peft_model(base, LoraConfig(r=4, target_modules=targets, fan_in_fan_out=arch == "gpt2")).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapter change the logits
            torch.nn.init.normal_(p, std=0.05)
    examples = _examples(12, 32)
    batch = packing.rows(examples, 32, PAD, packing=True)
    assert _packed_vs_alone(model, examples, batch) < 1e-5
    broken = packing.Batch(dict(batch) | {"position_ids": torch.arange(32).expand(batch.shape[0], -1).clone()})
    assert _packed_vs_alone(model, examples, batch, broken) > 1e-2
