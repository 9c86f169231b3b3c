"""The BLT entropy model: a small causal byte LM (Mistral-style Llama blocks with a sliding window) whose next-byte
entropy decides where patches start. Trainable on its own with the Trainer like any causal LM."""

from __future__ import annotations

import torch
from transformers import MistralForCausalLM

from .compat_blt import CACHE_NAME, cache_of
from .configuration_blt_lm import BLTEntropyConfig


def next_byte_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of ``softmax(logits)`` over the last axis, computed in fp32: ``[..., V] -> [...]``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions counted from the first real byte (left padding -> 0): ``[B, N] -> [B, N]``."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


class BLTEntropyModel(MistralForCausalLM):
    """Causal byte LM used as BLT's patcher. ``model(input_ids, labels=...)`` trains it; :meth:`entropies` gives the
    per-position next-byte entropies ``[B, N]`` in one batched pass."""

    config_class = BLTEntropyConfig
    config: BLTEntropyConfig
    # Separate output head (like the released BLT patcher): Mistral's lm_head <-> embed_tokens tie is not declared.
    _tied_weights_keys = {}

    @torch.no_grad()
    def entropies(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                  position_ids: torch.LongTensor | None = None, cache=None, use_cache: bool = False):
        """Next-byte entropies (nats, fp32) ``[B, N]`` and the (updated) cache.

        ``H[:, t]`` is the uncertainty about byte ``t + 1`` given bytes ``<= t``. With left padding pass
        ``attention_mask``; positions then count from each row's first real byte.
        """
        if attention_mask is not None and position_ids is None and cache is None:
            position_ids = positions_from_mask(attention_mask)
        out = self(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
                   **{CACHE_NAME: cache})
        return next_byte_entropy(out.logits), cache_of(out)


__all__ = ["BLTEntropyModel", "next_byte_entropy", "positions_from_mask"]
