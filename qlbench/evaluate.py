"""Evaluation metrics on held-out data."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def eval_loss(model, data: torch.Tensor, batch_size: int, device: torch.device, autocast_dtype=None) -> float:
    """Mean next-token cross-entropy over every predicted token of `data` ([n, seq_len] blocks)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, data.shape[0], batch_size):
        x = data[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=x).logits
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += losses.item()
        count += x[:, 1:].numel()
    model.train(was_training)
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")
