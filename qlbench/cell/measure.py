"""What a cell costs: peak memory, time per step, tokens per second, trainable parameters, device."""

from __future__ import annotations

import resource
import statistics
import sys

import torch


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem_mb(device: torch.device) -> float:
    """The CUDA allocator's peak on a GPU; the process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def step_time_s(curve: list[dict]) -> float:
    """Median time per step, leaving out the first (allocation, lazy init)."""
    times = [row["step_time_s"] for row in curve[1:]] or [row["step_time_s"] for row in curve]
    return statistics.median(times) if times else float("nan")


def compile_s(curve: list[dict]) -> float:
    """What torch.compile cost the cell: its first step's time beyond a usual step's (the first step compiles)."""
    return max(0.0, curve[0]["step_time_s"] - step_time_s(curve)) if len(curve) > 1 else float("nan")


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unique_params(model) -> int:
    """Parameters of a model, tied weights counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
