"""Device-aware timing for the benchmarks: the same code measures on a CPU and on a GPU (it synchronises the
device around each timed call, so asynchronous CUDA kernels are counted), medians of repeats, throughputs.

Timings never appear in tests; ``benchmarks/`` uses these to print method vs baseline measured in one process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_seconds(fn: Callable[[], object], device: torch.device | str, *, repeats: int = 3,
                   warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones, device-synchronised."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def decode_tokens_per_second(model, input_ids: torch.LongTensor, new_tokens: int, *, repeats: int = 3,
                             **generate_kwargs) -> float:
    """Greedy ``generate`` throughput in new tokens per second, prefill excluded: the time of a call generating
    ``new_tokens + 1`` tokens minus the time of a call generating 1 (the prefill), for a batch ``input_ids``
    ``[batch, prompt]`` on the model's device."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    device = input_ids.device
    common = dict(do_sample=False, attention_mask=torch.ones_like(input_ids), **generate_kwargs)

    def generate(count: int):
        return lambda: model.generate(input_ids, max_new_tokens=count, min_new_tokens=count, **common)

    for attempt in range(3):  # a shared machine can stall one median; measure again, with more repeats, first
        prefill = median_seconds(generate(1), device, repeats=repeats << attempt)
        total = median_seconds(generate(new_tokens + 1), device, repeats=repeats << attempt)
        if total > prefill:
            return input_ids.shape[0] * new_tokens / (total - prefill)
    raise RuntimeError(f"{new_tokens} new tokens took no measurable time beyond the prefill ({total:.4f} s vs "
                       f"{prefill:.4f} s): time more tokens")


def train_tokens_per_second(model, input_ids: torch.LongTensor, *, steps: int = 3, autocast_dtype=None) -> float:
    """Training throughput (forward + backward + AdamW step) in tokens per second on ``input_ids`` ``[batch, T]``
    (labels = inputs), optionally under ``torch.autocast`` with ``autocast_dtype``."""
    device = input_ids.device
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_seconds(step, device, repeats=steps)
    model.eval()
    return input_ids.numel() / seconds


def saved_for_backward_bytes(model, **inputs) -> int:
    """Bytes autograd keeps for the backward of one ``model(**inputs)`` forward: the activation memory that
    activation checkpointing cuts (weights a matmul saves count too, although they take no extra memory). Counted
    tensor by tensor, so it reads the same on every device and needs no allocator statistics."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs)
    return total
