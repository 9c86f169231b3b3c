"""Which embedder makes clusters that follow the corpus domains? (The paper's main untested assumption.)

Windows from every corpus domain are embedded by each embedder, clustered with k = number of domains, and the
clusters are compared with the ground-truth domain labels (purity, normalised mutual information). Embedding
throughput is reported relative to the hashed n-gram embedder, measured in the same process.

    nice -n 10 python benchmarks/specialists/bench_embedders.py --windows-per-domain 120
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from hf_efficient_lm.data import cache_dir, corpus_dir, read_texts
from hf_efficient_lm.specialists import ClusterIndex, HashedNgramEmbedder, LMHiddenStateEmbedder
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args

DOMAINS = ("pydocs", "kernel", "code", "dictionary", "fortunes")


def windows_of(corpus: Path, domain: str, count: int, chars: int, seed: int) -> list[str]:
    texts = read_texts([corpus / f"{domain}.valid.jsonl.gz"])
    pieces = [text[i : i + chars] for text in texts for i in range(0, max(len(text) - chars // 2, 1), chars)]
    pieces = [p for p in pieces if len(p.strip()) > chars // 4]
    rng = np.random.default_rng(seed)
    return [pieces[i] for i in rng.choice(len(pieces), size=min(count, len(pieces)), replace=False)]


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    return sum(np.bincount(labels[clusters == c]).max() for c in np.unique(clusters)) / len(labels)


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--windows-per-domain", type=int, default=120)
    parser.add_argument("--window-chars", type=int, default=400, help="~100-130 BPE tokens")
    parser.add_argument("--lm", type=Path, default=None,
                        help="a causal LM checkpoint + tokenizer for the LM hidden-state embedder "
                             "(default: $HFELM_CACHE/base if present)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_benchmark_args(parser, argv)
    from sklearn.metrics import normalized_mutual_info_score

    texts, labels = [], []
    for label, domain in enumerate(DOMAINS):
        chunk = windows_of(args.corpus, domain, args.windows_per_domain, args.window_chars, args.seed)
        texts += chunk
        labels += [label] * len(chunk)
    labels = np.array(labels)
    embedders = {"hashed n-grams": HashedNgramEmbedder(dim=512)}
    try:
        from hf_efficient_lm.specialists import MiniLMEmbedder

        embedders["MiniLM-L6 (128 wp)"] = MiniLMEmbedder(max_tokens=128)
    except ImportError as error:
        print(f"skipping MiniLM: {error}")
    lm = args.lm or cache_dir("base")
    if (Path(lm) / "config.json").is_file():
        embedders["LM mean hidden state"] = LMHiddenStateEmbedder(lm, max_tokens=128)
    else:
        print(f"skipping the LM hidden-state embedder: no checkpoint at {lm}")
    results = {}
    for name, embedder in embedders.items():
        started = time.perf_counter()
        vectors = embedder.embed(texts, progress=True)
        seconds = time.perf_counter() - started
        index = ClusterIndex.fit_embeddings(vectors, len(DOMAINS), embedder=embedder, seed=args.seed)
        clusters = index.assign_embeddings(vectors)
        results[name] = {
            "windows_per_s": len(texts) / seconds,
            "purity": purity(labels, clusters),
            "nmi": normalized_mutual_info_score(labels, clusters),
        }
    base = results["hashed n-grams"]["windows_per_s"]
    print(f"\n{len(texts)} windows of {args.window_chars} chars from {DOMAINS}, k = {len(DOMAINS)}, "
          f"{args.threads} thread(s)")
    print("| embedder | windows/s | speed vs hashed | purity | NMI |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['windows_per_s']:.0f} | x{r['windows_per_s'] / base:.3f} | {r['purity']:.3f} "
              f"| {r['nmi']:.3f} |")
    return results


if __name__ == "__main__":
    main()
