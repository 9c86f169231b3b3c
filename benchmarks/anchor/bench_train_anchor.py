"""Training step time with the AnSAN mask vs Llama's causal attention (same weights, same batch of corpus text).

Rows: Llama causal (sdpa ``is_causal``), AnchorLlama dense AnSAN mask with sdpa and with eager (forward + backward +
AdamW step). ``--flex`` adds forward-only timings of the flex-attention (block-sparse ``BlockMask``) path against the
dense mask, checking they agree: PyTorch's flex attention has no backward on CPU, so a flex *training* step can only
be timed on a GPU (the same script, run there, times it with backward).

    python benchmarks/anchor/bench_train_anchor.py --seq-len 1024 --batch 2 --size small --flex
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common_anchor import corpus_texts, ep_ids, load_tokenizer, model_pair, setup_cpu  # noqa: E402


def batch_of_text(tokenizer, batch: int, length: int) -> torch.LongTensor:
    ids = tokenizer.encode("\n\n".join(corpus_texts("pydocs", "train", 200)), add_special_tokens=False)
    rows = [ids[i * length : (i + 1) * length] for i in range(batch)]
    return torch.tensor(rows)


def time_train_steps(model, input_ids, steps: int, backward: bool = True) -> float:
    model.train(backward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if backward else None
    times = []
    for _ in tqdm(range(steps + 1), desc=type(model).__name__ + "/" + model.config._attn_implementation, leave=False):
        start = time.perf_counter()
        if backward:
            loss = model(input_ids, labels=input_ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(input_ids, logits_to_keep=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first step pays one-time costs (allocation, compilation)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--flex", action="store_true", help="also time the flex-attention path (forward only on CPU)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_cpu(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tokenizer = load_tokenizer()
    anchors = ep_ids(tokenizer)
    llama, anchor = model_pair(tokenizer, anchors, args.size)
    llama.to(device)
    anchor.to(device)
    input_ids = batch_of_text(tokenizer, args.batch, args.seq_len).to(device)
    n_anchors = int(torch.isin(input_ids, torch.tensor(anchors, device=device)).sum())

    results = {"Llama causal (sdpa)": time_train_steps(llama, input_ids, args.steps)}
    results["AnchorLlama AnSAN dense (sdpa)"] = time_train_steps(anchor, input_ids, args.steps)
    anchor.set_attn_implementation("eager")
    results["AnchorLlama AnSAN dense (eager)"] = time_train_steps(anchor, input_ids, args.steps)
    anchor.set_attn_implementation("sdpa")
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
        dense = time_train_steps(anchor, input_ids, args.steps, backward=backward)
        with torch.no_grad():
            anchor.eval()
            reference = anchor(input_ids[:1, :256]).logits
            anchor.set_attn_implementation("flex_attention")
            flex_logits = anchor(input_ids[:1, :256]).logits
        flex = time_train_steps(anchor, input_ids, args.steps, backward=backward)
        what = "fwd+bwd+AdamW" if backward else "forward only (no flex backward on CPU)"
        print(f"\nflex attention vs dense AnSAN mask, {what}; max |logit diff| = "
              f"{(flex_logits - reference).abs().max().item():.2e}")
        print(f"{'AnchorLlama dense (sdpa)':36} {dense:8.3f} {1.0:9.2f}x")
        print(f"{'AnchorLlama flex (BlockMask)':36} {flex:8.3f} {flex / dense:9.2f}x")


if __name__ == "__main__":
    main()
