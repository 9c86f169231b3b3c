"""Shared by the SCONE benchmarks: the shared corpus tokenized once with the baseline tokenizer (cached as .npy), and
the data and schedule of the fusion ablation / headline runs (their own tokenizer, packed blocks, held-out blocks)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from hf_efficient_lm.data import CORPUS_DOMAINS, corpus_texts, pack_ids, train_tokenizer
from hf_efficient_lm.data import cache_dir as package_cache_dir
from hf_efficient_lm.io_utils import atomic_dir, atomic_file
from hf_efficient_lm.scone import match_flat

DOMAINS = list(CORPUS_DOMAINS)


def cache_dir() -> Path:
    path = package_cache_dir("scone")
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_tokenizer_dir() -> Path:
    """The baseline tokenizer: the finished base model's, else the one make_base.py trained first."""
    root = cache_dir().parent
    for candidate in (root / "base", root / "base.work" / "tokenizer"):
        if (candidate / "tokenizer.json").exists():
            return candidate
    raise FileNotFoundError("no baseline tokenizer yet: run `python benchmarks/make_base.py` first")


def tokenized_docs(split: str = "train", domains=DOMAINS) -> dict[str, list[np.ndarray]]:
    """``{domain: [int32 ids per document]}``, tokenized with the baseline tokenizer and cached."""
    from transformers import AutoTokenizer

    tok_dir = find_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    result = {}
    for domain in domains:
        path = cache_dir() / f"{domain}.{split}.{len(tokenizer)}.npz"
        if not path.exists():
            start = time.perf_counter()
            ids = tokenizer(corpus_texts(domain, split), add_special_tokens=False)["input_ids"]
            lengths = np.array([len(x) for x in ids], dtype=np.int64)
            flat = np.concatenate([np.asarray(x, dtype=np.int32) for x in ids])
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, flat=flat, lengths=lengths)
            os.replace(tmp, path)
            print(f"tokenized {domain}.{split}: {flat.size:,} tokens in {time.perf_counter() - start:.1f}s")
        data = np.load(path)
        result[domain] = np.split(data["flat"], np.cumsum(data["lengths"])[:-1])
    return result


def add_results_options(parser, name: str, report_help: str) -> None:
    """``--out`` / ``--name`` (where the JSON / PNG results go), ``--merge`` (several runs' results, e.g. one process per
    seed, into one report) and ``--report`` (re-report one results file): the trained SCONE benchmarks' options."""
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--name", default=name, help="file name of the JSON/PNG results")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only merge the results of earlier runs and report")
    parser.add_argument("--report", metavar="JSON", help=report_help)


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(find_tokenizer_dir())


def load_data(args, per_domain: bool = False):
    """Tokenizer (trained once, cached), shuffled packed training blocks and held-out blocks (equal per domain; a
    ``{domain: blocks}`` dict with ``per_domain``). The token ids are cached next to the tokenizer."""
    from transformers import AutoTokenizer

    root = package_cache_dir("scone_ablation", f"{args.preset}_v{args.vocab_size}_c{args.chars_per_domain}")
    tok_dir = root / "tokenizer"
    ids_path = root / f"ids_block{args.block}_eval{args.eval_tokens}.npz"
    if not (tok_dir / "tokenizer.json").exists():
        train_texts = {d: corpus_texts(d, "train", limit_chars=args.chars_per_domain) for d in DOMAINS}
        texts = [t for d in DOMAINS for t in train_texts[d]]
        tokenizer = train_tokenizer((texts[i:i + 1000] for i in range(0, len(texts), 1000)), args.vocab_size,
                                    show_progress=False)
        with atomic_dir(tok_dir) as tmp:
            tokenizer.save_pretrained(tmp)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    eos = tokenizer.eos_token_id
    if not ids_path.exists():
        docs = [np.asarray(x, dtype=np.int64) for d in DOMAINS for x in tokenizer(
            corpus_texts(d, "train", limit_chars=args.chars_per_domain), add_special_tokens=False)["input_ids"]]
        valid = {}
        for d in DOMAINS:
            ids = tokenizer(corpus_texts(d, "valid"), add_special_tokens=False)["input_ids"]
            valid[d] = pack_ids(ids, args.block, separator=eos)[: max(1, args.eval_tokens // args.block)]
        with atomic_file(ids_path, "wb") as handle:
            np.savez(handle, flat=np.concatenate(docs), lengths=np.array([len(x) for x in docs]),
                     **{f"valid_{d}": valid[d] for d in DOMAINS})
    data = np.load(ids_path)
    docs = np.split(data["flat"], np.cumsum(data["lengths"])[:-1])
    valid = {d: data[f"valid_{d}"] for d in DOMAINS}
    blocks = pack_ids(docs, args.block, separator=eos)
    blocks = blocks[np.random.default_rng(0).permutation(len(blocks))]  # mix domains before halving
    return root, tokenizer, docs, blocks, valid if per_domain else np.concatenate([valid[d] for d in DOMAINS])


def seed_std(values, axis: int = 0):
    """Spread over seeds: the sample standard deviation (ddof=1), as the anchor and BLT benchmarks report it; 0 for a
    single seed. ``values``: seeds along ``axis``; returns a float for 1-D input, else an array."""
    values = np.asarray(values, dtype=float)
    spread = values.std(axis, ddof=1) if values.shape[axis] > 1 else np.zeros_like(values.mean(axis))
    return float(spread) if np.ndim(spread) == 0 else spread


def match_blocks(vocab, blocks: np.ndarray, num_threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """``match_flat`` per row of ``blocks`` ``[N, T]``: a separator (-1) before every row, so that no match reaches
    into the previous block (``blocks.reshape(-1)`` had none, and 0.08% of positions matched across a block
    boundary). Equals ``FgramVocab.match`` on the 2-D tensor. Returns ``(rows int64, lengths int8)``, ``[N, T]``."""
    blocks = np.asarray(blocks, dtype=np.int64)
    padded = np.concatenate([np.full((len(blocks), 1), -1, dtype=np.int64), blocks], axis=1)
    rows, lengths = match_flat(vocab, padded.reshape(-1), num_threads=num_threads)
    return (np.ascontiguousarray(rows.reshape(padded.shape)[:, 1:]),
            np.ascontiguousarray(lengths.reshape(padded.shape)[:, 1:]))


def make_schedule(optimizer, steps: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(warmup, 1)) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
