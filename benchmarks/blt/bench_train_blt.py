"""Training throughput (bytes/s, forward + backward + AdamW step) of BLTForCausalLM vs Transformers' Blt on the same
weights, with in-forward entropy patching and with precomputed patch lengths (the dataset-column path).
``--checkpointing``: instead, what activation checkpointing saves: the bytes autograd keeps for the backward and the
step time, plain vs checkpointed, for both models. ``--padding-free``: instead, ours on ``--batch`` corpus paragraphs
(varied lengths, cut at ``--seq-len``) as one right-padded batch vs one ``DataCollatorWithFlattening`` row: real
bytes/s of a training step and the bytes autograd keeps.

    nice -n 10 python benchmarks/blt/bench_train_blt.py --batch 4 --seq-len 512 [--checkpointing]
    nice -n 10 python benchmarks/blt/bench_train_blt.py --batch 16 --seq-len 512 --padding-free
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from common_blt import add_reference_size_options, corpus_bytes, reference_blt

from hf_efficient_lm import BLTForCausalLM
from hf_efficient_lm.blt import BLTDataCollator, patch_lengths_from_starts, text_to_ids
from hf_efficient_lm.data import corpus_texts
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args
from hf_efficient_lm.eval.speed import saved_for_backward_bytes


def make_step(model, input_ids, labels=None, **kwargs):
    """One training step (forward + backward + AdamW) as a closure; returns its wall time. Labels: ``input_ids``."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        model.train()
        start = time.perf_counter()
        loss = model(input_ids, labels=input_ids if labels is None else labels, use_cache=False, **kwargs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def median_step_seconds(steps: dict, rounds: int) -> dict[str, float]:
    """Median time of each step closure over ``rounds`` interleaved rounds after one warm-up round."""
    times = {name: [] for name in steps}
    for round_index in range(rounds + 1):  # round-robin so machine load drifts hit all methods alike
        for name, step in steps.items():
            elapsed = step()
            if round_index:  # round 0 is warm-up
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def set_checkpointing(model, enabled: bool) -> None:
    if enabled:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()


def step_with_checkpointing(model, batch, enabled: bool):
    """A training-step closure (see :func:`make_step`) that first sets the model's checkpointing to ``enabled``."""
    step = make_step(model, batch)

    def run() -> float:
        set_checkpointing(model, enabled)
        return step()

    return run


def compare_checkpointing(models: dict, data: torch.Tensor, rounds: int) -> None:
    """Saved-for-backward bytes and step time of each model, plain vs activation checkpointing."""
    saved, steps = {}, {}
    for name, model in models.items():
        model.train()
        for enabled in (False, True):
            set_checkpointing(model, enabled)
            saved[name, enabled] = saved_for_backward_bytes(model, input_ids=data, labels=data, use_cache=False)
            steps[name, enabled] = step_with_checkpointing(model, data, enabled)
    seconds = median_step_seconds(steps, rounds)
    print(f"activation checkpointing; batch {data.shape[0]} x {data.shape[1]} bytes; median of {rounds} interleaved "
          "steps")
    for name in models:
        plain, checkpointed = saved[name, False], saved[name, True]
        plain_s, checkpointed_s = seconds[name, False], seconds[name, True]
        print(f"{name:18s} saved for backward {plain / 2**20:7.1f} -> {checkpointed / 2**20:6.1f} MiB "
              f"({checkpointed / plain:.2f}x); step {plain_s:.2f} -> {checkpointed_s:.2f} s "
              f"({checkpointed_s / plain_s:.2f}x)")


def compare_padding_free(model, batch: int, max_bytes: int, rounds: int) -> None:
    """Training steps on the same documents: right-padded ``[batch, longest]`` vs one padding-free row."""
    from transformers import DataCollatorWithFlattening

    paragraphs = [p for text in corpus_texts("pydocs", "valid", limit=20) for p in text.split("\n\n") if len(p) >= 16]
    documents = [text_to_ids(text, add_eos=False)[:max_bytes] for text in paragraphs[:batch]]
    padded = BLTDataCollator()([{"input_ids": ids} for ids in documents])  # right-padded, -100 labels on padding
    flat = DataCollatorWithFlattening()([{"input_ids": ids} for ids in documents])
    inputs = {"padded": padded, "padding-free": flat}
    steps = {name: make_step(model, **batch) for name, batch in inputs.items()}
    saved = {name: saved_for_backward_bytes(model, **batch, use_cache=False) for name, batch in inputs.items()}
    seconds = median_step_seconds(steps, rounds)
    real = sum(len(ids) for ids in documents)
    print(f"{len(documents)} documents of {sorted(len(ids) for ids in documents)} bytes ({real} real, padded batch "
          f"{padded['input_ids'].numel()} slots); median of {rounds} interleaved steps")
    for name in inputs:
        print(f"{name:13s} {real / seconds[name]:9.0f} real bytes/s ({seconds['padded'] / seconds[name]:.2f}x), "
              f"saved for backward {saved[name] / 2**20:7.1f} MiB ({saved[name] / saved['padded']:.2f}x)")


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--checkpointing", action="store_true", help="measure activation checkpointing instead")
    parser.add_argument("--padding-free", action="store_true", help="measure padded vs padding-free rows instead")
    add_reference_size_options(parser)
    args = parse_benchmark_args(parser, argv)
    data = corpus_bytes(args.batch * args.seq_len).view(args.batch, args.seq_len).clone()
    data[:, 0] = 1
    hf = reference_blt(data[:1], args)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = BLTForCausalLM.from_pretrained(tmp)
    if args.checkpointing:
        compare_checkpointing({"BLTForCausalLM": ours, "Transformers Blt": hf}, data, args.steps)
        return
    if args.padding_free:
        compare_padding_free(ours, args.batch, args.seq_len, args.steps)
        return
    with torch.no_grad():
        lengths = patch_lengths_from_starts(ours.model(data).patch_starts, include_next=True)
    steps = {
        "ours": make_step(ours, data),
        "ours_pre": make_step(ours, data, patch_lengths=lengths),
        "hf": make_step(hf, data),
    }
    rate = {name: data.numel() / seconds for name, seconds in median_step_seconds(steps, args.steps).items()}
    ours_rate, ours_pre, hf_rate = rate["ours"], rate["ours_pre"], rate["hf"]
    print(f"median of {args.steps} interleaved steps; batch {args.batch} x {args.seq_len} bytes, {data.numel() / int((lengths > 0).sum()):.2f} bytes/patch")
    print(f"BLTForCausalLM, in-forward patching:    {ours_rate:9.0f} bytes/s  ({ours_rate / hf_rate:.2f}x)")
    print(f"BLTForCausalLM, precomputed patches:    {ours_pre:9.0f} bytes/s  ({ours_pre / hf_rate:.2f}x)")
    print(f"Transformers Blt, in-forward patching:  {hf_rate:9.0f} bytes/s  (1.00x)")


if __name__ == "__main__":
    main()
