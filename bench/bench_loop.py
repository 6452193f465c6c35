"""Benchmark (not a test): one LoRA configuration through three training loops, side by side.

  qlbench  qlbench.cell.loop.train, the loop every cell runs
  plain    the loop a user writes with transformers + peft (+ bitsandbytes): forward, backward, clip, step
  trainer  transformers' Trainer

Same model (random init from a config, nothing downloaded), same LoRA, batches, AdamW, clip and bf16 autocast in
all three; a fresh copy of the model for each run. Prints ms/step (median after warm-up), tokens/s and peak memory
(the CUDA allocator's peak on a GPU; on a CPU each run is its own process and the number is its peak RSS, which
includes the libraries).

    python bench/bench_loop.py              # GPU: GPT-2-medium and Llama-1B shapes, bf16 and NF4
    python bench/bench_loop.py --small      # tiny shapes, a few steps: runs on a CPU in about a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # name: (arch, config kwargs, LoRA targets)
    "gpt2-medium": ("gpt2", dict(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257),
                    ["c_attn"]),
    "llama-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=2048,
                               tie_word_embeddings=True),
                 ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}
SMALL = {
    "gpt2-medium": dict(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=512),
    "llama-1b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=128, tie_word_embeddings=True),
}
LOOPS = ("qlbench", "plain", "trainer")


def build_config(shape: str, small: bool):
    from transformers import GPT2Config, LlamaConfig

    arch, kwargs, _ = SHAPES[shape]
    kwargs = SMALL[shape] if small else kwargs
    if arch == "gpt2":
        return GPT2Config(**kwargs, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return LlamaConfig(**kwargs)


def save_base(shape: str, small: bool, folder: Path, dtype) -> Path:
    """A random-init model saved once, so every run loads (and quantizes) the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    path = folder / shape
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(build_config(shape, small), dtype=dtype)
        model.save_pretrained(path)
        del model
    return path


def load_model(path: Path, shape: str, precision: str, rank: int, device):
    """The base (bf16, or NF4 with double quant and bf16 compute) with a LoRA of `rank` on the shape's targets."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    arch, _, targets = SHAPES[shape]
    if precision == "nf4":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.bfloat16,
                                                     device_map={"": device})
        for m in model.modules():  # ENVIRONMENT.md trap 1 (AVX512-BF16 CPUs); harmless elsewhere
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device)
    model.requires_grad_(False)
    torch.manual_seed(0)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets, bias="none",
                     fan_in_fan_out=(arch == "gpt2" and precision != "nf4"), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def batches(vocab: int, batch: int, seq: int, n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


def run_qlbench(model, data, args, device) -> list[float]:
    import torch
    from qlbench.cell.loop import LoopSettings, train

    s = LoopSettings(steps=len(data), lr=args.lr, warmup=0.0, final_lr=1.0, grad_clip=1.0,
                     autocast_dtype=torch.bfloat16)
    result = train(model, lambda step: data[step], s, device=device, log=lambda msg: None)
    return [r["step_time_s"] for r in result.curve]


def run_plain(model, data, args, device) -> list[float]:
    """What a user writes: the usual four lines, the loss read once per step for logging."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    model.train()
    times, losses = [], []
    for x in data:
        t0 = time.perf_counter()
        x = x.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def run_trainer(model, data, args, device) -> list[float]:
    """transformers' Trainer; a step's time is the gap between consecutive on_step_end callbacks."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    rows = [{"input_ids": x[i], "labels": x[i]} for x in data for i in range(x.shape[0])]

    class Stamps(TrainerCallback):
        def __init__(self):
            self.t = [time.perf_counter()]

        def on_step_end(self, *a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.t.append(time.perf_counter())

    stamps = Stamps()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=data[0].shape[0], max_steps=len(data),
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
            optim="adamw_torch", bf16=True, logging_strategy="no", save_strategy="no", report_to=[],
            disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0,
            use_cpu=device.type == "cpu",
        )
        Trainer(model=model, args=targs, train_dataset=rows, callbacks=[stamps]).train()
    return [b - a for a, b in zip(stamps.t, stamps.t[1:])]


RUNNERS = {"qlbench": run_qlbench, "plain": run_plain, "trainer": run_trainer}


def one(shape: str, precision: str, loop: str, base: Path, args) -> dict:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = load_model(base, shape, precision, args.rank, device)
    cfg = model.config
    data = batches(cfg.vocab_size, args.batch, args.seq, args.warmup + args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = RUNNERS[loop](model, data, args, device)[args.warmup:]
    ms = 1000 * statistics.median(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"shape": shape, "precision": precision, "loop": loop, "ms_per_step": ms,
            "tokens_per_s": args.batch * args.seq / (ms / 1000), "peak_mem_mb": peak,
            "trainable_params": trainable, "steps_timed": len(times),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny shapes and a few steps (CPU smoke run)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU present")
    p.add_argument("--shapes", default="gpt2-medium,llama-1b")
    p.add_argument("--precisions", default="bf16,nf4")
    p.add_argument("--loops", default=",".join(LOOPS))
    p.add_argument("--rounds", type=int, default=None, help="run every loop this many times, interleaved (2; 1 --small)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; 2 with --small)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 512; 64 with --small)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 4 with --small)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5; 1 with --small)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # shape,precision,loop,base: a child process
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.small else 2)
    args.batch = args.batch or (2 if args.small else 4)
    args.seq = args.seq or (64 if args.small else 512)
    args.steps = args.steps or (4 if args.small else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.small else 5)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.one:
        shape, precision, loop, base = args.one.split(",")
        print("ROW " + json.dumps(one(shape, precision, loop, Path(base), args)), flush=True)
        return

    import torch

    on_gpu = torch.cuda.is_available() and not args.cpu
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            base = save_base(shape, args.small, Path(tmp), torch.bfloat16 if on_gpu else torch.float32)
            for precision in args.precisions.split(","):
                for loop in [lp for _ in range(args.rounds) for lp in args.loops.split(",")]:
                    if on_gpu:  # one process: the allocator's peak is reset per run
                        row = one(shape, precision, loop, base, args)
                    else:  # a process per run, so each peak RSS is its own
                        row = _child(shape, precision, loop, base, argv)
                    print(f"  {shape:12s} {precision:5s} {loop:8s} {row['ms_per_step']:8.1f} ms/step "
                          f"{row['tokens_per_s']:9.0f} tok/s {row['peak_mem_mb']:8.0f} MiB", flush=True)
                    rows.append(row)
    table = summarize(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "table": table}, indent=1))


def _child(shape, precision, loop, base, argv) -> dict:
    cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
           "--one", f"{shape},{precision},{loop},{base}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    raise RuntimeError(f"{shape} {precision} {loop} failed:\n{proc.stderr[-3000:]}")


def summarize(rows: list[dict]) -> str:
    """A Markdown table: per shape × precision × loop, the median over rounds of each run's median ms/step, the
    range over rounds, and speed relative to the plain loop (above 1: faster)."""
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["shape"], r["precision"], r["loop"]), []).append(r)
    ms = {key: statistics.median(r["ms_per_step"] for r in rs) for key, rs in runs.items()}
    lines = ["| model shape | base | loop | ms/step (median of rounds) | range over rounds | tokens/s | "
             "peak memory (MiB) | speed vs plain |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (shape, precision, loop), rs in runs.items():
        m = ms[(shape, precision, loop)]
        plain = ms.get((shape, precision, "plain"))
        rel = f"{plain / m:.2f}x" if plain else ""
        lo, hi = min(r["ms_per_step"] for r in rs), max(r["ms_per_step"] for r in rs)
        peak = max(r["peak_mem_mb"] for r in rs)
        lines.append(f"| {shape} | {'NF4 + DQ' if precision == 'nf4' else 'bf16'} | {loop} | {m:.1f} | "
                     f"{lo:.1f}-{hi:.1f} | {args_tokens(rs[0], m):,.0f} | {peak:,.0f} | {rel} |")
    return "\n".join(lines)


def args_tokens(row: dict, ms: float) -> float:
    """tokens/s at `ms` per step, from a run's own tokens per step."""
    return row["tokens_per_s"] * row["ms_per_step"] / ms


if __name__ == "__main__":
    main()
