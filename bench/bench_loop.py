"""Benchmark (not a test): one LoRA configuration through three training loops, side by side.

  qlbench          qlbench.cell.loop.train, the loop every cell runs
  qlbench-compile  the same with the setting `compile: default` (torch.compile of the step's forward and loss)
  qlbench-chunked  the same with the setting `loss_kernel: chunked` (the LM head and loss a chunk at a time)
  plain            the loop a user writes with transformers + peft (+ bitsandbytes): forward, backward, clip, step
  trainer          transformers' Trainer

Same model (random init from a config, nothing downloaded), same LoRA, batches, AdamW, clip and bf16 autocast in
all of them; a fresh copy of the model for each run. Every loop is timed the same way, by the bench, after each
step: wall ms/step and, on a CPU, the process's CPU ms/step (with `--threads 1` the CPU time is what the step cost
whatever else the machine runs; wall time is not). Prints medians after warm-up, tokens/s and peak memory (the
CUDA allocator's peak on a GPU; on a CPU each run is its own process and the number is its peak RSS, which
includes the libraries). A compiled run's first step carries the compilation: its time is printed apart.

    python bench/bench_loop.py              # GPU: GPT-2-medium and Llama-1B shapes, bf16 and NF4
    python bench/bench_loop.py --small      # tiny shapes, a few steps: runs on a CPU in about a minute
    python bench/bench_loop.py --small --shapes demo --precisions fp32 --loops qlbench,qlbench-compile,plain
                                            # a demo cell's own shape (4 x 128, batch 16 x 128, float32)
    python bench/bench_loop.py --small --shapes lm-head --loops qlbench,qlbench-chunked,plain
                                            # GPT-2's vocabulary over 4 x 512 tokens: the chunked loss's memory
    python bench/bench_loop.py --small --ops --threads 1 --loops qlbench,qlbench-compile --shapes gpt2-medium
                                            # where each loop's step goes, op by op (torch.profiler)
    python bench/bench_loop.py --small --shapes demo --precisions fp32 --loops qlbench --data blocks,packed
                                            # the demo's own data: its block stream against packed examples

`--data` picks the batches: `random` (random tokens, the default), or the demo's chatterbot pairs (prompt, newline,
reply, EOS; tokenized with a BPE trained as the demo's base trains its own) as `blocks` (one EOS-separated stream cut
into seq-long rows: `causal_lm`), `packed` (whole examples packed into rows, positions restarting at each, no
attention mask: `qlbench.tasks.packing`) or `padded` (one example per row). Rows are drawn at random per step as a
cell draws them. tokens/s counts the rows' non-padding tokens (prompt and reply, each example's EOS included).
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
    # name: (arch, config kwargs, LoRA targets[, (batch, seq) of its own])
    "gpt2-medium": ("gpt2", dict(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257),
                    ["c_attn"]),
    "llama-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=2048,
                               tie_word_embeddings=True),
                 ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    # the `demo` study's cells: its pretrained base's shape and tokenizer, LoRA r 16 on c_attn, 16 x 128 tokens
    "demo": ("gpt2", dict(n_layer=4, n_embd=128, n_head=4, n_positions=128, vocab_size=1024), ["c_attn"], (16, 128)),
    # a step whose logits dominate its memory: GPT-2's vocabulary over a small body, 4 x 512 tokens
    "lm-head": ("gpt2", dict(n_layer=2, n_embd=256, n_head=4, n_positions=512, vocab_size=50257), ["c_attn"],
                (4, 512)),
}
SMALL = {
    "gpt2-medium": dict(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=512),
    "llama-1b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=128, tie_word_embeddings=True),
    "demo": SHAPES["demo"][1],  # already small
    "lm-head": SHAPES["lm-head"][1],  # its point is the full vocabulary
}
LOOPS = ("qlbench", "plain", "trainer")  # the default; qlbench-compile on request (its compile takes a while)


def build_config(shape: str, small: bool):
    from transformers import GPT2Config, LlamaConfig

    arch, kwargs = SHAPES[shape][:2]
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
    """The base (bf16; fp32; or NF4 with double quant and bf16 compute) with a LoRA of `rank` on the shape's
    targets."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    arch, _, targets = SHAPES[shape][:3]
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
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.requires_grad_(False)
    torch.manual_seed(0)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets, bias="none",
                     fan_in_fan_out=(arch == "gpt2" and precision != "nf4"), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def batches(vocab: int, batch: int, seq: int, n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


DATA = ("random", "blocks", "packed", "padded")


def make_batches(kind: str, vocab: int, batch: int, seq: int, n: int) -> tuple[list, list[int] | None]:
    """`n` batches of `kind` (DATA), and each one's non-padding tokens (None: every token)."""
    if kind == "random":
        return batches(vocab, batch, seq, n), None
    if kind not in DATA:
        raise SystemExit(f"--data {kind}: not one of {', '.join(DATA)}")
    return demo_batches(kind, vocab, batch, seq, n)


def demo_batches(kind: str, vocab: int, batch: int, seq: int, n: int) -> tuple[list, list[int]]:
    """`n` batches of the demo's chatterbot pairs as `kind` rows, and each batch's non-padding tokens."""
    import torch

    from qlbench.data import examples as corpora
    from qlbench.data.example import split
    from qlbench.data.models import train_tokenizer
    from qlbench.tasks import causal_lm, packing

    tok = train_tokenizer(corpora.corpus_text(["pydoc", "chatterbot"]), vocab)
    train, _ = split(corpora.chatterbot_pairs(), 0.1)
    texts = [e.text for e in train]
    if kind == "blocks":
        rows, row_tokens = causal_lm.blocks(tok, texts, seq), None
    else:
        ids = [t[: seq - 1] + [tok.eos_token_id] for t in tok(texts, add_special_tokens=False)["input_ids"]]
        rows = packing.rows([(t, t) for t in ids], seq, tok.eos_token_id, packing=kind == "packed")
        groups = packing.bins([len(t) for t in ids], seq) if kind == "packed" else [[i] for i in range(len(ids))]
        row_tokens = [sum(len(ids[i]) for i in g) for g in groups]
    out, tokens = [], []
    for step in range(n):  # rows drawn at random, as a cell's sampler draws them
        picked = torch.randint(0, rows.shape[0], (batch,), generator=torch.Generator().manual_seed(step))
        out.append(rows[picked])
        tokens.append(batch * seq if row_tokens is None else sum(row_tokens[i] for i in picked.tolist()))
    return out, tokens


class Clock:
    """Stamps taken after every step, the same for every loop: wall time and the process's CPU time."""

    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.start()

    def start(self) -> None:
        """The stamp the first step is timed from."""
        self.wall, self.cpu = [time.perf_counter()], [time.process_time()]

    def __call__(self, *_) -> None:
        self.sync()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def steps(self, stamps: list[float]) -> list[float]:
        return [b - a for a, b in zip(stamps, stamps[1:])]


def run_qlbench(model, data, args, device, autocast, compile="off", loss=None) -> Clock:
    from qlbench.cell.loop import LoopSettings, train
    from qlbench.tasks import Batch, causal_lm, packing

    s = LoopSettings(steps=len(data), lr=args.lr, warmup=0.0, final_lr=1.0, grad_clip=1.0, autocast_dtype=autocast,
                     compile=compile)
    clock = Clock(device)
    loss = loss or (packing.loss if isinstance(data[0], Batch) else causal_lm.loss)
    train(model, lambda step: data[step], s, device=device, loss=loss, log=lambda msg: None, progress=clock)
    return clock


def run_qlbench_compile(model, data, args, device, autocast) -> Clock:
    return run_qlbench(model, data, args, device, autocast, compile=args.compile_mode)


def run_qlbench_chunked(model, data, args, device, autocast) -> Clock:
    """The setting `loss_kernel: chunked`: the LM head and the cross-entropy a chunk of tokens at a time."""
    from qlbench.tasks import chunked_loss

    return run_qlbench(model, data, args, device, autocast, loss=chunked_loss.loss)


def run_plain(model, data, args, device, autocast) -> Clock:
    """What a user writes: the usual four lines, the loss read once per step for logging."""
    import torch

    from qlbench.tasks import Batch, packing

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    model.train()
    losses = []
    clock = Clock(device)
    for x in data:
        x = x.to(device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            if isinstance(x, Batch):  # examples' rows: their own labels, positions or mask (TRL's collator's)
                loss = model(**packing.inputs(x), labels=x["labels"]).loss
            else:
                loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        clock()
    return clock


def run_trainer(model, data, args, device, autocast) -> Clock:
    """transformers' Trainer; a step ends at its on_step_end callback."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    if not isinstance(data[0], torch.Tensor):
        raise SystemExit("the trainer loop takes --data random or blocks")
    rows = [{"input_ids": x[i], "labels": x[i]} for x in data for i in range(x.shape[0])]
    clock = Clock(device)

    class Stamps(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock()

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=data[0].shape[0], max_steps=len(data),
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
            optim="adamw_torch", bf16=autocast is not None, logging_strategy="no", save_strategy="no", report_to=[],
            disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0,
            use_cpu=device.type == "cpu",
        )
        clock.start()  # the Trainer's own set-up is not a step
        Trainer(model=model, args=targs, train_dataset=rows, callbacks=[Stamps()]).train()
    return clock


RUNNERS = {"qlbench": run_qlbench, "qlbench-compile": run_qlbench_compile, "qlbench-chunked": run_qlbench_chunked,
           "plain": run_plain, "trainer": run_trainer}


def one(shape: str, precision: str, loop: str, data_kind: str, base: Path, args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = load_model(base, shape, precision, args.rank, device)
    cfg = model.config
    batch, seq = shape_batch(shape, args)
    data, tokens = make_batches(data_kind, cfg.vocab_size, batch, seq, args.warmup + args.steps)
    per_step = batch * seq if tokens is None else statistics.mean(tokens[args.warmup:])  # non-padding tokens
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    autocast = None if precision == "fp32" else torch.bfloat16
    clock = RUNNERS[loop](model, data, args, device, autocast)
    wall, cpu = clock.steps(clock.wall), clock.steps(clock.cpu)
    ms = 1000 * statistics.median(wall[args.warmup:])
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
    return {"shape": shape, "precision": precision, "loop": loop, "data": data_kind, "ms_per_step": ms,
            "cpu_ms_per_step": 1000 * statistics.median(cpu[args.warmup:]), "first_step_ms": 1000 * wall[0],
            "tokens_per_s": per_step / (ms / 1000), "fill": per_step / (batch * seq), "peak_mem_mb": peak,
            "batch": batch, "seq": seq,
            "trainable_params": trainable, "steps_timed": len(wall) - args.warmup, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def shape_batch(shape: str, args) -> tuple[int, int]:
    """(sequences, tokens) per step: the shape's own where it has one (a demo cell's), else the command line's."""
    own = SHAPES[shape][3] if len(SHAPES[shape]) > 3 else None
    return own or (args.batch, args.seq)


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
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--data", default="random",
                   help=f"the batches, comma-separated, each timed apart: {', '.join(DATA)} (module docstring)")
    p.add_argument("--compile-mode", default="default", help="the qlbench-compile loop's torch.compile mode")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: each loop of the first shape and precision under cProfile, in one process; "
                        "Python calls per step and the functions that took the most time")
    p.add_argument("--ops", action="store_true",
                   help="instead of timing: each loop of the first shape and precision under torch.profiler, in one "
                        "process; torch ops per step and the ops that took the most time (self CPU time)")
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
        shape, precision, loop, data_kind, base = args.one.split(",")
        print("ROW " + json.dumps(one(shape, precision, loop, data_kind, Path(base), args)), flush=True)
        return
    if args.profile or args.ops:
        return profile(args)

    import torch

    on_gpu = torch.cuda.is_available() and not args.cpu
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            base = save_base(shape, args.small, Path(tmp), torch.bfloat16 if on_gpu else torch.float32)
            for precision in args.precisions.split(","):
                kinds, loops = args.data.split(","), args.loops.split(",")
                runs = [(lp, d) for _ in range(args.rounds) for d in kinds for lp in loops]
                for loop, data_kind in runs:
                    if on_gpu:  # one process: the allocator's peak is reset per run
                        row = one(shape, precision, loop, data_kind, base, args)
                    else:  # a process per run, so each peak RSS is its own
                        row = _child(shape, precision, loop, data_kind, base, argv)
                    print(f"  {shape:12s} {precision:5s} {loop:8s} {data_kind:7s} {row['ms_per_step']:8.1f} ms/step "
                          f"{row['tokens_per_s']:9.0f} tok/s {row['peak_mem_mb']:8.0f} MiB", flush=True)
                    rows.append(row)
    table = summarize(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "table": table}, indent=1))


def profile(args) -> None:
    """Where a step's time goes, loop by loop, over the timed steps (after the warm-up, so not the compilation):
    with `--profile`, cProfile's Python function calls per step and the top functions by their own time; with
    `--ops`, torch.profiler's ops per step and the top ops by self CPU time (a compiled graph is one entry)."""
    import cProfile
    import pstats

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shape, precision = args.shapes.split(",")[0], args.precisions.split(",")[0]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    autocast = None if precision == "fp32" else torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        base = save_base(shape, args.small, Path(tmp), torch.float32 if device.type == "cpu" else torch.bfloat16)
        for loop in args.loops.split(","):
            model = load_model(base, shape, precision, args.rank, device)
            batch, seq = shape_batch(shape, args)
            data, _ = make_batches(args.data.split(",")[0], model.config.vocab_size, batch, seq,
                                   args.warmup + args.steps)
            RUNNERS[loop](model, data[: args.warmup], args, device, autocast)  # warm-up (and compilation)
            if args.ops:
                _ops(loop, lambda: RUNNERS[loop](model, data[args.warmup :], args, device, autocast), args.steps,
                     f"{shape} {precision}")
                continue
            prof = cProfile.Profile()
            prof.enable()
            RUNNERS[loop](model, data[args.warmup :], args, device, autocast)
            prof.disable()
            stats = pstats.Stats(prof)
            print(f"== {shape} {precision} {loop}: {stats.total_calls / args.steps:,.0f} Python calls per step, "
                  f"{1000 * stats.total_tt / args.steps:.1f} ms per step under the profiler")
            stats.sort_stats("tottime").print_stats(12)


def _ops(loop: str, run, steps: int, what: str) -> None:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"== {what} {loop}: {sum(e.count for e in ops if e.key.startswith('aten::')) / steps:,.0f} torch ops per "
          f"step, {total / steps / 1000:.2f} ms per step of self CPU time under the profiler")
    for e in ops[:12]:
        print(f"  {e.key[:64]:64s} {e.count / steps:6.1f} per step {e.self_cpu_time_total / steps:9.1f} us "
              f"{100 * e.self_cpu_time_total / total:5.1f} %")


def _child(shape, precision, loop, data_kind, base, argv) -> dict:
    cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
           "--one", f"{shape},{precision},{loop},{data_kind},{base}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    raise RuntimeError(f"{shape} {precision} {loop} failed:\n{proc.stderr[-3000:]}")


BASES = {"nf4": "NF4 + DQ", "bf16": "bf16", "fp32": "fp32"}


def summarize(rows: list[dict]) -> str:
    """A Markdown table: per shape × precision × batches × loop, the median over rounds of each run's median ms/step
    (wall, and the process's CPU time), the wall range over rounds, tokens/s (non-padding) and the rows' fill, speed
    relative to the plain loop on the same batches (above 1: faster) by each clock, and a compiled loop's first step
    (the compilation)."""
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["shape"], r["precision"], r.get("data", "random"), r["loop"]), []).append(r)

    def med(key, col):
        return statistics.median(r[col] for r in runs[key])

    lines = ["| model shape | base | batches | loop | ms/step (median of rounds) | range over rounds | CPU ms/step | "
             "tokens/s | fill | peak memory (MiB) | speed vs plain (wall) | speed vs plain (CPU) | first step (s) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, rs in runs.items():
        shape, precision, data_kind, loop = key
        m, c = med(key, "ms_per_step"), med(key, "cpu_ms_per_step")
        plain = (shape, precision, data_kind, "plain")
        rel = f"{med(plain, 'ms_per_step') / m:.2f}x" if plain in runs else ""
        rel_cpu = f"{med(plain, 'cpu_ms_per_step') / c:.2f}x" if plain in runs else ""
        lo, hi = min(r["ms_per_step"] for r in rs), max(r["ms_per_step"] for r in rs)
        peak = max(r["peak_mem_mb"] for r in rs)
        first = f"{med(key, 'first_step_ms') / 1000:.1f}" if "compile" in loop else ""
        lines.append(f"| {shape} | {BASES[precision]} | {data_kind} | {loop} | {m:.1f} | {lo:.1f}-{hi:.1f} | {c:.1f} | "
                     f"{args_tokens(rs[0], m):,.0f} | {rs[0].get('fill', 1.0):.1%} | {peak:,.0f} | {rel} | {rel_cpu} | "
                     f"{first} |")
    return "\n".join(lines)


def args_tokens(row: dict, ms: float) -> float:
    """tokens/s at `ms` per step, from a run's own tokens per step."""
    return row["tokens_per_s"] * row["ms_per_step"] / ms


if __name__ == "__main__":
    main()
