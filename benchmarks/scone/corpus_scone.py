"""Shared by the SCONE benchmarks: the shared corpus tokenized once with the baseline tokenizer, cached as .npy."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from hf_efficient_lm.data import CORPUS_DOMAINS, corpus_texts
from hf_efficient_lm.data import cache_dir as package_cache_dir

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


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(find_tokenizer_dir())
