"""Shared by the specialists protocol benchmarks: the generic pool (three corpus domains; the targets are held out),
its BPE tokenizer (trained once, cached) and its token windows, and each target domain's training text and test
blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from hf_efficient_lm.data import corpus_texts, train_tokenizer
from hf_efficient_lm.tools.specialize import token_blocks

GENERIC = ("kernel", "code", "dictionary")


def generic_windows(corpus: Path, generic_chars: int, vocab_size: int, block_size: int, cache: Path):
    """The generic pool's tokenizer (cached in ``cache / "tokenizer"``), its ``block_size``-token blocks and their
    decoded text windows (what the cluster index embeds). Returns ``(tokenizer, blocks, windows)``."""
    generic_texts = {d: corpus_texts(d, "train", corpus=corpus, limit_chars=generic_chars) for d in GENERIC}
    if (cache / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(cache / "tokenizer")
    else:
        tokenizer = train_tokenizer([[t for ts in generic_texts.values() for t in ts]], vocab_size, show_progress=False)
        tokenizer.save_pretrained(cache / "tokenizer")
    blocks = [b for d in GENERIC for b in token_blocks(generic_texts[d], tokenizer, block_size)]
    return tokenizer, blocks, [tokenizer.decode(b) for b in blocks]


def target_windows(target: str, corpus: Path, domain_tokens: int, test_blocks: int, tokenizer, block_size: int,
                   generic: list[str]):
    """A held-out target domain: about ``domain_tokens`` tokens of training text (characters per token measured on the
    ``generic`` windows), ``test_blocks`` seeded-random validation blocks and the training text's windows.
    Returns ``(texts, test_blocks, windows)``."""
    chars_per_token = sum(len(w) for w in generic[:2000]) / (min(2000, len(generic)) * block_size)
    texts = corpus_texts(target, "train", corpus=corpus, limit_chars=int(domain_tokens * chars_per_token))
    if len(texts) < 2:  # specialize() holds one document out for early stopping
        raise ValueError(f"--domain-tokens {domain_tokens} reads {len(texts)} {target!r} document(s); specialising "
                         "needs at least 2 (one is held out for early stopping): raise --domain-tokens")
    test = token_blocks(corpus_texts(target, "valid", corpus=corpus, limit_chars=10**7), tokenizer, block_size)
    test = [test[i] for i in np.random.default_rng(0).permutation(len(test))[:test_blocks]]
    return texts, test, [tokenizer.decode(b) for b in token_blocks(texts, tokenizer, block_size)]
