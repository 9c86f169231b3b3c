"""Training step time with the AnSAN mask vs Llama's causal attention (same weights, same batch of corpus text).

Rows: Llama causal (sdpa ``is_causal``), AnchorLlama's AnSAN mask with sdpa (dense, or block by block past 2^20 mask
entries) and with eager (forward + backward + AdamW step). ``--flex`` adds forward-only timings of the flex-attention (block-sparse ``BlockMask``) path against the
dense mask, checking they agree: PyTorch's flex attention has no backward on CPU, so a flex *training* step can only
be timed on a GPU (the same script, run there, times it with backward).

    python benchmarks/anchor/bench_train_anchor.py --seq-len 1024 --batch 2 --size small --flex
"""

from __future__ import annotations

import statistics
import time

import torch
from tqdm import tqdm

from bench_common_anchor import anchor_parser, corpus_texts, ep_ids, load_tokenizer, model_pair
from hf_efficient_lm.eval.benchmarking import parse_benchmark_args


def batch_of_text(tokenizer, batch: int, length: int) -> torch.LongTensor:
    ids = tokenizer.encode("\n\n".join(corpus_texts("pydocs", "train", 200)), add_special_tokens=False)
    rows = [ids[i * length : (i + 1) * length] for i in range(batch)]
    return torch.tensor(rows)


def time_train_steps(settings, input_ids, steps: int, backward: bool = True) -> list[float]:
    """Median step seconds of each ``(model, attn_implementation)`` setting. Steps of the settings are interleaved
    (round robin) so that load from other processes on a shared machine hits all of them alike; the first step of
    each pays one-time costs (allocation, compilation) and is dropped."""
    optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-5) if backward else None for model, _ in settings]
    times = [[] for _ in settings]
    for _ in tqdm(range(steps + 1), desc="steps", leave=False):
        for (model, attn), optimizer, record in zip(settings, optimizers, times):
            model.set_attn_implementation(attn)
            model.train(backward)
            start = time.perf_counter()
            if backward:
                loss = model(input_ids, labels=input_ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model(input_ids, logits_to_keep=1)
            record.append(time.perf_counter() - start)
    return [statistics.median(record[1:]) for record in times]


def main(argv=None):
    parser = anchor_parser(__doc__)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--flex", action="store_true", help="also time the flex-attention path (forward only on CPU)")
    args = parse_benchmark_args(parser, argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tokenizer = load_tokenizer()
    anchors = ep_ids(tokenizer)
    llama, anchor = model_pair(tokenizer, anchors, args.size)
    llama.to(device)
    anchor.to(device)
    input_ids = batch_of_text(tokenizer, args.batch, args.seq_len).to(device)
    n_anchors = int(torch.isin(input_ids, torch.tensor(anchors, device=device)).sum())

    names = ["Llama causal (sdpa)", "AnchorLlama AnSAN (sdpa)", "AnchorLlama AnSAN (eager)"]
    medians = time_train_steps([(llama, "sdpa"), (anchor, "sdpa"), (anchor, "eager")], input_ids, args.steps)
    results = dict(zip(names, medians))
    base = results["Llama causal (sdpa)"]
    print(f"\nTraining step (fwd+bwd+AdamW), batch {args.batch} x {args.seq_len} tokens, {n_anchors} anchors, "
          f"size={args.size}, fp32, {device}, {torch.get_num_threads()} thread(s)")
    print(f"{'setting':36} {'step s':>8} {'vs causal':>10}")
    for name, seconds in results.items():
        print(f"{name:36} {seconds:8.3f} {seconds / base:9.2f}x")

    if args.flex:
        # Recompiling flex attention with dynamic shapes hits an inductor C++ codegen error on CPU (torch 2.13,
        # 'cur_qSplitSize4' undeclared); static shapes compile fine.
        torch._dynamo.config.automatic_dynamic_shapes = False
        backward = device != "cpu"
        with torch.no_grad():
            anchor.set_attn_implementation("sdpa")
            anchor.eval()
            reference = anchor(input_ids[:1, :256]).logits
            anchor.set_attn_implementation("flex_attention")
            flex_logits = anchor(input_ids[:1, :256]).logits
        dense, flex = time_train_steps(
            [(anchor, "sdpa"), (anchor, "flex_attention")], input_ids, args.steps, backward=backward
        )
        what = "fwd+bwd+AdamW" if backward else "forward only (no flex backward on CPU)"
        print(f"\nflex attention vs dense AnSAN mask, {what}; max |logit diff| = "
              f"{(flex_logits - reference).abs().max().item():.2e}")
        print(f"{'AnchorLlama dense (sdpa)':36} {dense:8.3f} {1.0:9.2f}x")
        print(f"{'AnchorLlama flex (BlockMask)':36} {flex:8.3f} {flex / dense:9.2f}x")


if __name__ == "__main__":
    main()
