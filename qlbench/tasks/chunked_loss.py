"""A causal LM's training loss without its [tokens, vocab] logits: the LM head and the cross-entropy in chunks.

The usual loss (`causal_lm.loss`: transformers' `labels=`) makes the logits of every token of the batch, a float32
copy of them and, in backward, their gradient: three tensors of tokens x vocab, which at GPT-2's 50,257 words and
4 x 512 tokens are 412 MB each in float32, more than the rest of a LoRA step holds. Here the model's body gives the
hidden states; the head and the cross-entropy run on `CHUNK_LOGITS` logits' worth of tokens at a time under activation
checkpointing (torch.utils.checkpoint), so one chunk's logits live at a time, in forward and in backward (each
chunk's logits are made again for its gradient: one more matmul of the head per chunk).

liger-kernel's fused linear cross-entropy and cut-cross-entropy do this in a GPU kernel (Triton); neither runs on a
CPU, which is where this one is for (and it runs on a GPU too). The sum over chunks is the same loss, rounded in
another order: a different cell (`loss_kernel` is part of its identity), its |Δ loss| against the standard loss
measured in docs/performance.md.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from qlbench.errors import QlbenchError

CHUNK_LOGITS = 2**24  # a chunk's logits: 64 MiB in float32 (333 tokens at GPT-2's 50,257 words, 130 at Llama 3's)
# where a model's head does more than a linear map, its logits are not head(hidden): refuse, don't approximate
_LOGIT_CHANGES = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the body that makes the last hidden states, the LM head) of a transformers causal LM, peft-wrapped or not."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    changed = [k for k in _LOGIT_CHANGES if getattr(lm.config, k, None) not in (None, 1, 1.0)]
    if body is None or head is None or changed:
        why = f"its config sets {', '.join(changed)}" if changed else "no body and LM head to call apart"
        raise QlbenchError(f"loss_kernel chunked: {type(lm).__name__} cannot use it ({why}); use loss_kernel standard")
    return body, head


def _chunk(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # float32 before the softmax, as transformers' loss upcasts the logits
    return torch.nn.functional.cross_entropy(head(hidden).float(), labels, reduction="sum")


def loss(model, x: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch of blocks x ([batch, seq]), as `causal_lm.loss`, chunk by chunk
    (`chunk_tokens` tokens each; unset: as many as make `CHUNK_LOGITS` logits)."""
    body, head = parts(model)
    chunk_tokens = chunk_tokens or max(1, CHUNK_LOGITS // head.out_features)  # nn.Linear, peft, bitsandbytes alike
    hidden = body(input_ids=x, use_cache=False).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = x[:, 1:].reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, labels.numel(), chunk_tokens):
        total = total + checkpoint(_chunk, head, hidden[i : i + chunk_tokens], labels[i : i + chunk_tokens],
                                   use_reentrant=False)
    return total / labels.numel()
