"""Mining and matching throughput of SCONE's f-gram tools on the shared corpus (baseline tokenizer).

Method vs baseline in one process:
* mining: ``mine_fgrams`` (vectorised numpy, Apriori, K-1 passes, ``--threads`` workers) vs a
  ``collections.Counter`` over n-gram tuples (what the only public implementation does) on a subset — tokens/s and
  the ratio; goal >= 4M tokens/s on 2 cores.
* matching: ``FgramVocab.match`` (torch hash index, the model's path) and ``match_flat`` (pandas, the data-pipeline
  path) vs a literal per-position Python implementation on a subset; goal >= 8M tokens/s.
Tokenisation is excluded (cached once). Rates are given per wall second (the goal's unit: what 2 cores do) and per
CPU second of this process (``time.process_time``), which stays honest when other jobs share the machine.

    nice -n 10 python benchmarks/scone/bench_mining_matching_scone.py --num-fgrams 100000 1000000
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args
from hf_efficient_lm.scone import match_flat, mine_fgrams
from corpus_scone import DOMAINS, load_tokenizer, tokenized_docs


def counter_mine(docs, max_len, barrier):
    counts = Counter()
    for doc in docs:
        doc = doc.tolist()
        for n in range(2, max_len + 1):
            for i in range(len(doc) - n + 1):
                gram = tuple(doc[i:i + n])
                if barrier not in gram:
                    counts[gram] += 1
    return counts


def fgram_dict(vocab):
    tokens, lengths = vocab.fgram_tokens(torch.arange(vocab.num_fgrams))
    return {tuple(tokens[r, :lengths[r]].tolist()): r for r in range(vocab.num_fgrams)}


def brute_match(vocab, table, ids):
    ids = ids.tolist()
    out = []
    for i in range(len(ids)):
        best = -1
        for n in range(2, vocab.max_len + 1):
            if i - n + 1 < 0:
                break
            row = table.get(tuple(ids[i - n + 1:i + 1]))
            if row is not None:
                best = row
        out.append(best)
    return out


def index_vs_searchsorted(vocab, num_queries: int = 2_000_000) -> str:
    """Per-query time of the hash index behind ``FgramVocab.match`` against its baseline, ``torch.searchsorted`` over
    the same sorted keys plus the equality check, for each level: half the queries are keys, half keys + 1."""
    from hf_efficient_lm.scone.fgram_vocab_scone import KeyHashIndex

    generator = torch.Generator().manual_seed(0)
    parts = []
    for n, keys in enumerate(vocab.level_keys, start=2):
        if keys.numel() < 2:
            continue
        query = keys[torch.randint(0, keys.numel(), (num_queries,), generator=generator)]
        query[num_queries // 2:] += 1
        index = KeyHashIndex(keys, query_bound=int(query.max()) + 1)

        def bisect(q, keys=keys):
            at = torch.searchsorted(keys, q).clamp_(max=keys.numel() - 1)
            return torch.where(keys[at] == q, at, -1)

        assert torch.equal(index.index_of(query), bisect(query))
        timings = {}
        for name, lookup in (("hash", index.index_of), ("searchsorted", bisect)):
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                lookup(query)
                best = min(best, time.perf_counter() - start)
            timings[name] = best / num_queries * 1e9
        parts.append(f"level {n} ({keys.numel():,} keys) {timings['hash']:.0f} vs {timings['searchsorted']:.0f} ns "
                     f"({timings['searchsorted'] / timings['hash']:.1f}x)")
    return "hash index vs searchsorted, per query: " + "; ".join(parts)


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def rates(tokens, timer):
    return f"{tokens / timer.wall / 1e6:.2f}M tokens/s wall, {tokens / timer.cpu / 1e6:.2f}M tokens/CPU-s"


def main(argv=None):
    parser = benchmark_parser(__doc__, threads=2)
    parser.add_argument("--num-fgrams", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--max-len", type=int, default=5)
    args = parse_benchmark_args(parser, argv)
    tokenizer = load_tokenizer()
    train = tokenized_docs("train")
    valid = tokenized_docs("valid")
    docs = [d for domain in DOMAINS for d in train[domain]]
    valid_docs = [d for domain in DOMAINS for d in valid[domain]]
    num_tokens = sum(d.size for d in docs)
    barrier = tokenizer.eos_token_id
    print(f"corpus: {len(docs):,} train documents, {num_tokens:,} tokens; tokenizer {len(tokenizer)} ids; "
          f"torch threads {args.threads}")

    subset = docs[:200]
    subset_tokens = sum(d.size for d in subset)
    with Timer() as counter_timer:
        counter_mine(subset, args.max_len, barrier)
    counter_rate = subset_tokens / counter_timer.cpu
    print(f"baseline Counter mining: {rates(subset_tokens, counter_timer)} ({subset_tokens:,} tokens)")

    for num_fgrams in args.num_fgrams:
        with Timer() as mine_timer:
            vocab = mine_fgrams(docs, num_fgrams=num_fgrams, max_len=args.max_len, min_count=5,
                                barrier_ids=[barrier, tokenizer.bos_token_id, tokenizer.pad_token_id],
                                tokenizer=tokenizer, show_progress=False, num_threads=args.threads)
        rate = num_tokens / mine_timer.cpu
        print(f"\nS={num_fgrams:,}: mined {vocab.num_fgrams:,} f-grams {vocab.num_per_length()} in "
              f"{mine_timer.wall:.2f}s wall / {mine_timer.cpu:.2f}s CPU -> {rates(num_tokens, mine_timer)} "
              f"({rate / counter_rate:.0f}x Counter per CPU-s; goal 4M/s wall: "
              f"{'met' if num_tokens / mine_timer.wall >= 4e6 else 'NOT met'}); min count kept {int(vocab.counts.min())}")

        flat = np.concatenate([np.append(d.astype(np.int64), -1) for d in docs])
        start = time.perf_counter()
        match_flat(vocab, flat[:1000])  # builds the pandas indexes once
        build = time.perf_counter() - start
        with Timer() as np_timer:
            rows, lengths = match_flat(vocab, flat, num_threads=args.threads)
        batch = torch.from_numpy(flat[: (flat.size // 1024) * 1024].reshape(-1, 1024))
        batch = torch.where(batch < 0, torch.tensor(barrier), batch)
        vocab.match(batch[:2])  # builds the hash indexes once
        torch_timers = {}
        for threads in sorted({1, args.threads}):  # torch intra-op threads: see --threads
            torch.set_num_threads(threads)
            with Timer() as torch_timers[threads]:
                vocab.match(batch)
        torch.set_num_threads(args.threads)
        torch_threads, torch_timer = max(torch_timers.items(), key=lambda kv: -kv[1].wall)
        print(index_vs_searchsorted(vocab))
        brute_ids = flat[:100_000]
        table = fgram_dict(vocab)
        with Timer() as brute_timer:
            brute_match(vocab, table, brute_ids)
        np_rate, torch_rate = flat.size / np_timer.cpu, batch.numel() / torch_timer.cpu
        brute_rate = brute_ids.size / brute_timer.cpu
        print(f"matching match_flat (numpy): {rates(flat.size, np_timer)} (index build {build:.2f}s); "
              f"FgramVocab.match (torch): " + "; ".join(f"{t} thread(s) {rates(batch.numel(), tm)}"
                                                        for t, tm in torch_timers.items()) + "; per-position Python "
              f"{brute_rate / 1e6:.3f}M tokens/CPU-s -> {np_rate / brute_rate:.0f}x / {torch_rate / brute_rate:.0f}x; "
              f"goal 8M/s wall: numpy {'met' if flat.size / np_timer.wall >= 8e6 else 'NOT met'}, torch "
              f"{'met' if batch.numel() / torch_timer.wall >= 8e6 else 'NOT met'} (best: {torch_threads} thread(s))")
        in_sample = (lengths[flat >= 0] > 0).mean()
        vflat = np.concatenate([np.append(d.astype(np.int64), -1) for d in valid_docs])
        _, vlen = match_flat(vocab, vflat)
        vlen = vlen[vflat >= 0]
        print(f"coverage: train {in_sample:.1%} of tokens matched; held-out {(vlen > 0).mean():.1%}, mean matched "
              f"length {vlen[vlen > 0].mean():.2f}; length histogram "
              f"{ {n: int((vlen == n).sum()) for n in range(2, args.max_len + 1)} }")


if __name__ == "__main__":
    main()
