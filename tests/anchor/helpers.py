"""Shared helpers for the AnchorLlama tests."""

import torch

from hf_efficient_lm.testing_utils import TINY_LLAMA_KWARGS

ANCHOR_IDS = [5, 6]
VOCAB = TINY_LLAMA_KWARGS["vocab_size"]


def anchored_ids(batch: int, length: int, seed: int = 0, every: float = 0.25) -> torch.LongTensor:
    """Random ids in [7, vocab) with anchors (5 or 6) at random positions, different per row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, VOCAB, (batch, length), generator=generator)
    is_anchor = torch.rand(batch, length, generator=generator) < every
    anchors = torch.tensor(ANCHOR_IDS)[torch.randint(0, 2, (batch, length), generator=generator)]
    return torch.where(is_anchor, anchors, ids)


def sentencepiece_style_tokenizer():
    """A tiny Llama-2-style tokenizer (Metaspace ``▁`` pieces, byte fallback ``<0x0A>``) built offline: ``"."`` and
    ``"▁."`` are different pieces, as Llama-2's ids 29889 and 869 (only the first is the paper's anchor)."""
    from transformers.models.llama.tokenization_llama import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, ".": 4, "▁.": 5, "?": 6, "!": 7, "<0x0A>": 8}
    for char in "abcdefghijklmnopqrstuvwxyzTW<>AC/":
        vocab.setdefault(char, len(vocab))
    merges = [("▁", ".")]
    for word in ("The", "cat", "sat", "World", "dog", "ran"):
        current = "▁"
        for char in word:
            merges.append((current, char))
            current += char
            vocab.setdefault(current, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=merges)
