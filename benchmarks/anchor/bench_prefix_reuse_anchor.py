"""Prefix reuse for N queries: compress few-shot demonstrations once into an AnchorCache and score N queries from
copies of it, vs recomputing prefix + query for every query (AnchorLlama and Llama), vs Llama reusing a full
DynamicCache copy of the prefix. All on the same weights, in one process; prints per-query and total times, ratios
and cache sizes. Each reuse setting is charged its own one-off prefix pass (AnchorLlama: compress_prefix; Llama: the
prefill of its full cache); both the per-query time and the total including that pass are printed. Every model and
path is warmed up first, and the queries are timed interleaved across the methods.

    python benchmarks/anchor/bench_prefix_reuse_anchor.py --queries 32 --size small
"""

from __future__ import annotations

import copy
import time

import torch
from tqdm import tqdm

from bench_common_anchor import (
    anchor_parser, corpus_texts, ep_ids, five_shot_prompts, full_cache_bytes, load_tokenizer, model_pair,
)

from hf_efficient_lm.compat import CACHE_NAME, cache_of
from hf_efficient_lm.anchor import compress_prefix, continuation_logits
from hf_efficient_lm.eval.benchmarking import parse_benchmark_args


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


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


@torch.no_grad()
def main(argv=None):
    parser = anchor_parser(__doc__)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--query-tokens", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed runs of every path (prefix passes included) before timing (default: %(default)s)")
    parser.add_argument("--prefix-repeats", type=int, default=5,
                        help="timed one-off prefix passes per model, median reported (default: %(default)s)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: time.perf_counter; cpu: this process's CPU time (steadier on a shared machine)")
    args = parse_benchmark_args(parser, argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    tokenizer = load_tokenizer()
    llama, anchor = model_pair(tokenizer, ep_ids(tokenizer), args.size)
    prefix_ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(five_shot_prompts(1)[0] + "\n\n",
                                                                            add_special_tokens=False)])
    items = queries(tokenizer, args.queries, args.query_tokens)

    # the one-off pass each reuse setting pays before its first query: the prefix run once into its cache
    prefix_passes = {
        "Llama full-cache prefix reuse": lambda: cache_of(llama(prefix_ids, use_cache=True, logits_to_keep=1)),
        "AnchorLlama compressed prefix reuse": lambda: compress_prefix(anchor, prefix_ids),
    }
    llama_prefix = prefix_passes["Llama full-cache prefix reuse"]()
    prefix = prefix_passes["AnchorLlama compressed prefix reuse"]()
    methods = {
        "AnchorLlama recompute prefix+query":
            lambda q: anchor(torch.cat([prefix_ids, q], 1), logits_to_keep=q.shape[1]),
        "Llama recompute prefix+query":
            lambda q: llama(torch.cat([prefix_ids, q], 1), logits_to_keep=q.shape[1]),
        "Llama full-cache prefix reuse":
            lambda q: llama(q, **{CACHE_NAME: copy.deepcopy(llama_prefix)}, use_cache=True),
        "AnchorLlama compressed prefix reuse": lambda q: continuation_logits(anchor, prefix, q),
    }

    # warm-up: every model and path (the first forward of a model is slower: one-time allocations, kernel setup)
    for i in range(args.warmup):
        for fn in prefix_passes.values():
            fn()
        for fn in methods.values():
            fn(items[i % len(items)])

    # one-off prefix passes, interleaved (Llama, anchor, Llama, ...), median of --prefix-repeats
    pass_times = {name: [] for name in prefix_passes}
    for _ in range(args.prefix_repeats):
        for name, fn in prefix_passes.items():
            start = clock()
            fn()
            pass_times[name].append(clock() - start)
    one_off = {name: median(t) for name, t in pass_times.items()}

    # queries, interleaved: each query runs through every method in turn, the order rotated from query to query
    names = list(methods)
    query_times = {name: [] for name in names}
    for i, q in enumerate(tqdm(items, desc="queries", leave=False)):
        for name in names[i % len(names):] + names[: i % len(names)]:
            start = clock()
            methods[name](q)
            query_times[name].append(clock() - start)

    queries_total = {name: sum(t) for name, t in query_times.items()}
    with_pass = {name: queries_total[name] + one_off.get(name, 0.0) for name in names}
    ref = "AnchorLlama compressed prefix reuse"
    print(f"\nPrefix reuse: {len(items)} queries of {args.query_tokens} tokens after a 5-shot prefix of "
          f"{prefix_ids.shape[1]} tokens (size={args.size}, fp32, {torch.get_num_threads()} thread(s), {args.clock} "
          f"clock; {args.warmup} warm-up round(s) of every path, then queries interleaved across methods)")
    print(f"prefix cache: Llama {full_cache_bytes(llama_prefix) / 2**20:.3f} MiB ({prefix_ids.shape[1]} positions), "
          f"AnchorLlama {prefix.kv_bytes() / 2**20:.4f} MiB ({prefix.cached_tokens()} positions) -> "
          f"{prefix.kv_bytes() / full_cache_bytes(llama_prefix):.4f} of the full cache")
    print(f"one-off prefix pass (median of {args.prefix_repeats}): "
          + ", ".join(f"{name.split()[0]} {seconds * 1e3:.1f} ms" for name, seconds in one_off.items()))
    print(f"{'method':38} {'prefix pass ms':>14} {'per query ms':>12} {'median ms':>9} {'queries s':>9} "
          f"{'total s':>8} {'queries / anchor reuse':>22} {'total / anchor reuse':>20}")
    for name in names:
        pass_ms = f"{one_off[name] * 1e3:14.1f}" if name in one_off else f"{'-':>14}"
        print(f"{name:38} {pass_ms} {queries_total[name] / len(items) * 1e3:12.2f} "
              f"{median(query_times[name]) * 1e3:9.2f} {queries_total[name]:9.3f} {with_pass[name]:8.3f} "
              f"{queries_total[name] / queries_total[ref]:21.2f}x {with_pass[name] / with_pass[ref]:19.2f}x")
    print("(queries s: the per-query work only; total s: queries s + that setting's own one-off prefix pass; the "
          "recompute rows have no one-off pass. A ratio > 1 means slower than anchor reuse.)")


if __name__ == "__main__":
    main()
