"""Examples into rows: packed back to back without one attending to another, or one per row, padded.

An example is (input_ids, labels): labels unshifted, -100 where no loss, as TRL's processed dataset holds them.

Packed rows (`packing=True`) are TRL's `packing=True` (strategy `bfd`, which turns on `padding_free`): each bin of
`bins` back to back in a row of `max_length`, `position_ids` restarting at 0 at each example, no attention mask, the
label of each example's first token -100 (the previous example's last token does not predict it), and the row's
padding a position run of its own with labels -100 (TRL's collator then flattens a batch into one unpadded row;
here rows keep one shape, [n, max_length], for the sampler and compiled steps: each example's logits are the same,
and the loss too, as tests show). Attention stays inside each example because transformers
(5.x, `masking_utils.find_packed_sequence_indices`) turns restarting `position_ids` into a block-diagonal causal mask
whenever no attention mask is passed and no cache is used, row by row, for eager and sdpa attention, for GPT-2
(learned positions) as for Llama (rotary), eager or compiled, peft-wrapped or not; its flash-attention path reads
the same restarts as varlen boundaries (what TRL's `padding_free` relies on). So one form serves CPU and GPU, with no
mask code of ours to keep in step with transformers'. An explicit 4D block-diagonal mask would work on eager/sdpa too
but costs [batch, 1, seq, seq] per step, is one more thing to pass through peft and compile, and shuts flash-attention
out. Passing any attention mask beside the positions turns the block-diagonal mask off (examples then attend to each
other): `inputs` passes none. tests/unit/tasks/test_packing.py holds the packed logits to each example's logits alone
(max |Δ| ~1e-7 on CPU; several rows, padding) and watches them differ when the restart or the mask is changed.

Padded rows (`packing=False`): one example per row, right-padded to `max_length`, with an attention mask.

Every label a row holds after its first token is a token the loss covers: `(labels != -100).sum()` counts them.
"""

from __future__ import annotations

import bisect
from collections import deque

import torch

from qlbench.tasks import Batch

IGNORE = -100  # transformers' and TRL's "no loss here"


def bins(lengths: list[int], max_length: int) -> list[list[int]]:
    """Example indices per packed row, best-fit decreasing as TRL's `bfd` strategy: longest first (ties in index
    order), each into the open row whose free space fits it most tightly (the oldest of equals), else a new row.
    Deterministic; rows in the order they were opened, indices in the order they went in."""
    for i, n in enumerate(lengths):
        assert 0 < n <= max_length, f"example {i}: {n} tokens, not in 1..{max_length} (truncate or refuse before)"
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    spaces: list[int] = []  # the distinct free spaces of open rows, sorted
    by_space: dict[int, deque] = {}  # free space -> the rows with it, oldest first
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(spaces, n)
        if j < len(spaces):
            space = spaces[j]
            row = by_space[space].popleft()
            if not by_space[space]:
                del by_space[space], spaces[j]
        else:
            space, row = max_length, len(out)
            out.append([])
        out[row].append(i)
        left = space - n
        if left > 0:
            if left not in by_space:
                by_space[left] = deque()
                bisect.insort(spaces, left)
            by_space[left].append(row)
    return out


def rows(examples: list[tuple[list[int], list[int]]], max_length: int, pad_id: int, packing: bool) -> Batch:
    """Examples -> a Batch of [n_rows, max_length] tensors: `input_ids`, `labels` and `position_ids` (packed) or
    `attention_mask` (padded). Each example's first label is -100 either way (its own next-token loss never reads
    it; packed, it would be predicted from the previous example)."""
    for i, (ids, labels) in enumerate(examples):
        assert len(ids) == len(labels), f"example {i}: {len(ids)} tokens, {len(labels)} labels"
    groups = bins([len(ids) for ids, _ in examples], max_length) if packing else [[i] for i in range(len(examples))]
    n = len(groups)
    input_ids = torch.full((n, max_length), pad_id, dtype=torch.long)
    labels = torch.full((n, max_length), IGNORE, dtype=torch.long)
    positions = torch.zeros((n, max_length), dtype=torch.long)
    mask = torch.zeros((n, max_length), dtype=torch.long)
    for r, group in enumerate(groups):
        at = 0
        for i in group:
            ids, lab = examples[i]
            k = len(ids)
            assert k <= max_length, f"example {i}: {k} tokens, more than {max_length} (truncate or refuse before)"
            input_ids[r, at : at + k] = torch.tensor(ids, dtype=torch.long)
            labels[r, at + 1 : at + k] = torch.tensor(lab[1:], dtype=torch.long)
            positions[r, at : at + k] = torch.arange(k)
            mask[r, at : at + k] = 1
            at += k
        # the padding: a position run of its own, so no example's tokens attend to it or it to them
        positions[r, at:] = torch.arange(max_length - at)
    if packing:
        return Batch(input_ids=input_ids, labels=labels, position_ids=positions)
    return Batch(input_ids=input_ids, labels=labels, attention_mask=mask)


def inputs(batch: Batch) -> dict:
    """The model's keyword arguments of a batch (all but the labels), with the cache off: transformers derives the
    packed rows' block-diagonal mask only without one."""
    return {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}


def loss(model, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's label tokens (transformers shifts the labels)."""
    return model(**inputs(batch), labels=batch["labels"]).loss


def loss_and_logits(model, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss and the logits it came from ([batch, seq, vocab]), for distillation from a teacher."""
    out = model(**inputs(batch), labels=batch["labels"])
    return out.loss, [out.logits]


def label_tokens(batch: Batch) -> int:
    """How many tokens the loss covers."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


@torch.no_grad()
def eval_loss(model, data: Batch, batch_size: int, device: torch.device, autocast_dtype=None) -> float:
    """Sum of next-token cross-entropy over every label token of `data` / their count: the tokens training covers."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, data.shape[0], batch_size):
        b = data[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(**inputs(b)).logits
        target = b["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
            reduction="sum").item()
        count += int((target != IGNORE).sum())
    model.train(was_training)
    return total / count if count else float("nan")
