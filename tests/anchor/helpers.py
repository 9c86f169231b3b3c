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
