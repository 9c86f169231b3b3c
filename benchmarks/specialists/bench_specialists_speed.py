"""Training/inference cost of the specialists against a plain small Llama, measured side by side in one process.

- training step time: SLM vs hard mixture vs projected network (PN), with cluster-homogeneous micro-batches (weights
  materialised once per micro-batch) and with mixed micro-batches (one materialisation per cluster present);
  the paper reports 3.6 vs 2.2 GPUh per 1B tokens for PN vs SLM (1.64x).
- inference: the specialised stock Llama (what specialize() returns) vs running the PN / mixture itself.

    nice -n 10 python benchmarks/specialists/bench_specialists_speed.py --steps 20
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_efficient_lm.specialists import (
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
)
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args
from hf_efficient_lm.io_utils import atomic_file


def step_seconds(model, input_ids, cluster_ids, steps: int) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    extra = {} if cluster_ids is None else {"cluster_ids": cluster_ids}
    times = []
    for step in range(steps + 3):
        started = time.perf_counter()
        loss = model(input_ids=input_ids, labels=input_ids, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def forward_seconds(model, input_ids, cluster_ids, repeats: int) -> float:
    model.eval()
    extra = {} if cluster_ids is None else {"cluster_ids": cluster_ids}
    times = []
    for i in range(repeats + 2):
        started = time.perf_counter()
        model(input_ids=input_ids, use_cache=False, **extra)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--basis", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/specialists/results"))
    args = parse_benchmark_args(parser, argv)
    torch.manual_seed(0)
    kwargs = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                  num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=args.length, tie_word_embeddings=False)
    slm = LlamaForCausalLM(LlamaConfig(**kwargs))
    mixture = SpecialistMixtureForCausalLM(SpecialistMixtureConfig(**kwargs, num_experts=args.k))
    hyper = HyperSpecialistForCausalLM(HyperSpecialistConfig(**kwargs, num_clusters=args.k, num_basis=args.basis,
                                                             code_dim=args.k))
    ids = torch.randint(3, args.vocab, (args.batch, args.length))
    homogeneous = torch.zeros(args.batch, dtype=torch.long)
    mixed = torch.arange(args.batch) % args.k
    results = {
        "train_step_s": {
            "SLM": step_seconds(slm, ids, None, args.steps),
            "mixture (1 cluster / batch)": step_seconds(mixture, ids, homogeneous, args.steps),
            "mixture (k clusters / batch)": step_seconds(mixture, ids, mixed, args.steps),
            "PN (1 cluster / batch)": step_seconds(hyper, ids, homogeneous, args.steps),
            "PN (k clusters / batch)": step_seconds(hyper, ids, mixed, args.steps),
        },
        "forward_s": {
            "specialised Llama": forward_seconds(hyper.instantiate(cluster=0), ids, None, args.steps),
            "PN routed": forward_seconds(hyper, ids, homogeneous, args.steps),
            "mixture routed": forward_seconds(mixture, ids, homogeneous, args.steps),
        },
        "params": {
            "SLM / specialised Llama": sum(p.numel() for p in slm.parameters()),
            "mixture total": sum(p.numel() for p in mixture.parameters()),
            "PN total": sum(p.numel() for p in hyper.parameters()),
        },
    }
    base_train = results["train_step_s"]["SLM"]
    base_forward = results["forward_s"]["specialised Llama"]
    print(f"config: hidden {args.hidden}, layers {args.layers}, k {args.k}, h {args.basis}, batch {args.batch}x"
          f"{args.length}, {args.threads} thread(s)")
    print("training step (median s, ratio to SLM):")
    for name, seconds in results["train_step_s"].items():
        print(f"  {name:30s} {seconds * 1e3:8.1f} ms  x{seconds / base_train:.2f}")
    print("forward (median s, ratio to the specialised stock Llama):")
    for name, seconds in results["forward_s"].items():
        print(f"  {name:30s} {seconds * 1e3:8.1f} ms  x{seconds / base_forward:.2f}")
    print("parameters (pretraining-time model vs what is deployed):")
    for name, count in results["params"].items():
        print(f"  {name:30s} {count / 1e3:8.0f}k  x{count / results['params']['SLM / specialised Llama']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / "speed.json", "w") as handle:
        json.dump({"args": vars(args) | {"out": str(args.out)}, **results}, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
