"""Prefix reuse for N queries: compress few-shot demonstrations once into an AnchorCache and score N queries from
copies of it, vs recomputing prefix + query for every query (AnchorLlama and Llama), vs Llama reusing a full
DynamicCache copy of the prefix. All on the same weights; prints total times, ratios and cache sizes.

    python benchmarks/anchor/bench_prefix_reuse_anchor.py --queries 32 --size small
"""

from __future__ import annotations

import copy
import time

import torch
from tqdm import tqdm

from bench_common_anchor import (  # noqa: E402
    anchor_parser, corpus_texts, ep_ids, five_shot_prompts, full_cache_bytes, load_tokenizer, model_pair,
)

from hf_efficient_lm.compat import CACHE_NAME, cache_of  # noqa: E402
from hf_efficient_lm.anchor import compress_prefix, continuation_logits  # noqa: E402
from hf_efficient_lm.eval.benchmarking import parse_benchmark_args  # noqa: E402


def queries(tokenizer, n: int, length: int) -> list[torch.LongTensor]:
    out = []
    for text in corpus_texts("fortunes", "valid"):  # held-out text, as before the shared reader (986d54b)
        for piece in text.split("\n%\n"):
            ids = tokenizer.encode(" " + " ".join(piece.split()), add_special_tokens=False)[:length]
            if len(ids) == length:
                out.append(torch.tensor([ids]))
            if len(out) == n:
                return out
    return out


@torch.no_grad()
def run(name, fn, items):
    start = time.perf_counter()
    for item in tqdm(items, desc=name, leave=False):
        fn(item)
    return time.perf_counter() - start


def main(argv=None):
    parser = anchor_parser(__doc__)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--query-tokens", type=int, default=24)
    args = parse_benchmark_args(parser, argv)

    tokenizer = load_tokenizer()
    llama, anchor = model_pair(tokenizer, ep_ids(tokenizer), args.size)
    prefix_ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(five_shot_prompts(1)[0] + "\n\n",
                                                                            add_special_tokens=False)])
    items = queries(tokenizer, args.queries, args.query_tokens)

    with torch.no_grad():
        start = time.perf_counter()
        prefix = compress_prefix(anchor, prefix_ids)
        compress_time = time.perf_counter() - start
        llama_prefix = cache_of(llama(prefix_ids, use_cache=True, logits_to_keep=1))

    times = {
        "AnchorLlama recompute prefix+query": run(
            "anchor recompute", lambda q: anchor(torch.cat([prefix_ids, q], 1), logits_to_keep=q.shape[1]), items
        ),
        "Llama recompute prefix+query": run(
            "llama recompute", lambda q: llama(torch.cat([prefix_ids, q], 1), logits_to_keep=q.shape[1]), items
        ),
        "Llama full-cache prefix reuse": run(
            "llama reuse", lambda q: llama(q, **{CACHE_NAME: copy.deepcopy(llama_prefix)}, use_cache=True), items
        ),
        "AnchorLlama compressed prefix reuse": run(
            "anchor reuse", lambda q: continuation_logits(anchor, prefix, q), items
        ),
    }
    times["AnchorLlama compressed prefix reuse"] += compress_time
    reuse = times["AnchorLlama compressed prefix reuse"]
    print(f"\nPrefix reuse: {len(items)} queries of {args.query_tokens} tokens after a 5-shot prefix of "
          f"{prefix_ids.shape[1]} tokens (size={args.size}, fp32, {torch.get_num_threads()} thread(s))")
    print(f"prefix cache: Llama {full_cache_bytes(llama_prefix) / 2**20:.3f} MiB ({prefix_ids.shape[1]} positions), "
          f"AnchorLlama {prefix.kv_bytes() / 2**20:.4f} MiB ({prefix.cached_tokens()} positions) -> "
          f"{prefix.kv_bytes() / full_cache_bytes(llama_prefix):.4f} of the full cache")
    print(f"{'method':40} {'total s':>8} {'per query ms':>13} {'vs anchor reuse':>16}")
    for name, seconds in times.items():
        print(f"{name:40} {seconds:8.3f} {seconds / len(items) * 1e3:13.2f} {seconds / reuse:15.2f}x")
    print(f"(anchor reuse includes the one-time compression: {compress_time * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
