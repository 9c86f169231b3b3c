"""A 10M-row f-gram table: writing it, process memory growth, and lookup latency per token (batch 1 and 16).

The table is written with ``StreamingTableWriter`` (row chunks into a temp file, then renamed: never whole in RAM)
and opened as ``FgramTable`` (a private memory map). Reported:
* RSS growth, split into anonymous memory (what the process really allocates) and file-backed pages (page cache
  mapped in by lookups; shared, reclaimable, bounded by the rows touched). Goal: < 100 MB growth.
* per-token lookup latency = gather the step's rows from the map (+ copy to a tensor), warm and cold (the file's
  pages evicted with posix_fadvise DONTNEED), uniform and Zipf(1.1) row ids; baseline in the same run: the base
  model's in-RAM token-embedding gather (``nn.Embedding``) for the same number of tokens. Both sides run under
  ``torch.no_grad()`` (as in decoding; with autograd on, the embedding built a graph per call, ~15% of its time) and
  get the same untimed warm-up calls (``--warmup``); a cold measurement evicts the file's pages after its warm-up.
* the per-step matching cost (``FgramVocab.match_last``) against a 10M-key vocabulary.

    nice -n 10 python benchmarks/scone/bench_table_scone.py --rows 10000000 --dim 256
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args
from hf_efficient_lm.scone import FgramTable, FgramVocab
from hf_efficient_lm.tools.scone_export import StreamingTableWriter
from corpus_scone import cache_dir


def rss_mb() -> dict[str, float]:
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) / 1024
    return fields


def evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_lookups(fn, row_batches, warmup: int, before=None) -> float:
    """Median microseconds per token over the steps, after ``warmup`` untimed calls (then ``before()``, if given:
    the cold measurement's page eviction). Run under ``torch.no_grad()`` by the caller."""
    for rows in row_batches[:warmup]:
        fn(rows)
    if before is not None:
        before()
    times = []
    for rows in row_batches:
        start = time.perf_counter()
        fn(rows)
        times.append((time.perf_counter() - start) / rows.numel() * 1e6)
    return statistics.median(times)


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls before every latency measurement")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--delete", action="store_true", help="delete the table file at the end (default: keep it)")
    args = parse_benchmark_args(parser, argv)
    dtype = getattr(torch, args.dtype)
    path = cache_dir() / f"bench_table_{args.rows}x{args.dim}_{args.dtype}.safetensors"
    rss0 = rss_mb()
    if not path.exists():
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        chunk = 65536
        peak = 0.0
        with StreamingTableWriter(path, args.rows, args.dim, dtype) as writer:
            for begin in tqdm(range(0, args.rows, chunk), desc="writing table", unit="chunk"):
                n = min(chunk, args.rows - begin)
                writer.write(torch.randn(n, args.dim, generator=generator) * 0.02)
                peak = max(peak, rss_mb()["VmRSS"])
        print(f"wrote {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.1f}s; peak RSS while "
              f"writing {peak:.0f} MB (table is {args.rows * args.dim * dtype.itemsize / 1e6:.0f} MB)")
    before = rss_mb()
    start = time.perf_counter()
    table = FgramTable(path, num_rows=args.rows, dim=args.dim)
    open_ms = (time.perf_counter() - start) * 1e3
    after_open = rss_mb()
    print(f"opened {table} in {open_ms:.1f} ms; RSS growth on open: "
          f"{after_open['VmRSS'] - before['VmRSS']:.1f} MB")

    generator = np.random.default_rng(0)
    embedding = torch.nn.Embedding(args.vocab_size, args.dim).to(dtype)
    print("\n| batch | row ids | cache | table us/token | nn.Embedding us/token | ratio |")
    print("|---|---|---|---|---|---|")
    for batch in (1, 16):
        for dist in ("uniform", "zipf"):
            if dist == "uniform":
                ids = generator.integers(0, args.rows, size=(args.steps, batch))
            else:
                ids = np.minimum(generator.zipf(1.1, size=(args.steps, batch)) - 1, args.rows - 1)
            row_batches = [torch.from_numpy(r).long() for r in ids]
            token_batches = [torch.from_numpy(r % args.vocab_size).long() for r in ids]
            with torch.no_grad():  # both sides without autograd, the same warm-up
                base = time_lookups(embedding, token_batches, args.warmup)
                for cache in ("cold", "warm"):
                    per_token = time_lookups(lambda r: table.lookup(r, dtype=dtype), row_batches, args.warmup,
                                             before=(lambda: evict(path)) if cache == "cold" else None)
                    print(f"| {batch} | {dist} | {cache} | {per_token:.2f} | {base:.2f} | {per_token / base:.1f}x |")
    after = rss_mb()
    touched = sum((args.steps + args.warmup) * b for b in (1, 16)) * 2 * 2  # (2 row-id kinds x cold / warm)
    print(f"\nRSS growth after {touched:,} row lookups: total {after['VmRSS'] - before['VmRSS']:.1f} MB = anonymous "
          f"{after['RssAnon'] - before['RssAnon']:.1f} MB + file-backed (mapped page cache) "
          f"{after['RssFile'] - before['RssFile']:.1f} MB; goal < 100 MB")

    # Matching cost per decode step against a vocabulary with as many keys (synthetic, uniform over levels 2..5).
    levels = 4
    per_level = args.rows // levels
    rng = np.random.default_rng(1)
    keys, rows = [], []
    offset = 0
    for level in range(levels):
        bound = (per_level if level else args.vocab_size) * args.vocab_size
        k = np.unique(rng.integers(0, bound, size=per_level))
        keys.append(torch.from_numpy(k))
        rows.append(torch.arange(offset, offset + k.size))
        offset += k.size
    vocab = FgramVocab(vocab_size=args.vocab_size, max_len=5, level_keys=keys, level_rows=rows,
                       counts=torch.ones(offset, dtype=torch.long))
    print(f"\nsynthetic vocabulary: {vocab.num_fgrams:,} keys")
    for batch in (1, 16):
        history = torch.from_numpy(rng.integers(3, args.vocab_size, size=(batch, 64))).long()
        times = []
        for _ in range(500):
            start = time.perf_counter()
            vocab.match_last(history, 1)
            times.append(time.perf_counter() - start)
        print(f"match_last (per decode step) batch {batch}: {statistics.median(times) * 1e6:.0f} us/step "
              f"= {statistics.median(times) / batch * 1e6:.1f} us/token")
    print(f"final RSS {rss_mb()['VmRSS']:.0f} MB (start of script {rss0['VmRSS']:.0f} MB)")
    if args.delete:
        del table
        path.unlink()


if __name__ == "__main__":
    main()
