"""The causal-LM training loss builds no key/value cache (a model in training mode builds generation's cache unless
told not to; nothing reads it in training) and is, bit for bit, the loss and gradients of transformers' own call."""

from __future__ import annotations

import pytest
import torch
from transformers import cache_utils

from qlbench.tasks import causal_lm, chunked_loss

from test_chunked_loss import VOCAB, TOKENS, _loss_and_grads, _lora


@pytest.fixture
def caches(monkeypatch):
    """How many key/value caches transformers builds while the test runs."""
    built = []
    init = cache_utils.DynamicCache.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(cache_utils.DynamicCache, "__init__", counting)
    return built


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_training_loss_is_transformers_loss_without_building_a_cache(arch, caches):
    model = _lora(arch).train()
    x = torch.randint(0, VOCAB, TOKENS, generator=torch.Generator().manual_seed(1))
    usual, g_usual = _loss_and_grads(model, lambda m, b: m(input_ids=b, labels=b).loss, x, True)
    assert len(caches) == 1  # what a plain loop's call builds in training mode (the instrument works)
    ours, g_ours = _loss_and_grads(model, causal_lm.loss, x, True)
    chunked_loss.loss(model, x)
    causal_lm.eval_loss(model, x, 2, torch.device("cpu"))
    assert len(caches) == 1, "the training loss, the chunked loss or the eval loss built a cache"
    assert ours == usual and g_ours.keys() == g_usual.keys()
    for name, g in g_usual.items():
        assert torch.equal(g_ours[name], g), name
