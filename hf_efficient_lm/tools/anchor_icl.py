"""In-context learning with prefix compression: run the demonstrations once into an :class:`AnchorCache` (which keeps
only their anchors), then answer many queries from copies of that small cache without recomputing the prefix.

Exact: a query scored from the compressed prefix gets the logits of the full AnSAN forward over prefix + query.
Not imported by the modeling files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..anchor.cache_anchor import AnchorCache
from ..anchor.compat_anchor import CACHE_NAME, cache_of


@dataclass
class CompressedPrefix:
    """A prompt prefix (e.g. few-shot demonstrations) already run through the model.

    cache: the pruned cache for one row (batch 1).
    input_ids: ``[1, prefix_len]`` the prefix tokens (``generate`` needs them to count positions).
    """

    cache: AnchorCache
    input_ids: torch.LongTensor

    @property
    def seen_tokens(self) -> int:
        return self.cache.get_seq_length()

    def cached_tokens(self) -> int:
        return self.cache.cached_tokens()

    def kv_bytes(self) -> int:
        return self.cache.kv_bytes()

    def cache_for(self, batch_size: int = 1) -> AnchorCache:
        """A fresh copy of the prefix cache for ``batch_size`` rows (the stored one is never modified)."""
        cache = copy.deepcopy(self.cache)
        if batch_size != 1:
            cache.batch_repeat_interleave(batch_size)
        return cache


@torch.no_grad()
def compress_prefix(model, prefix_ids: torch.LongTensor, prune: bool = True) -> CompressedPrefix:
    """Run ``prefix_ids`` (``[prefix_len]`` or ``[1, prefix_len]``) once and keep its anchor-pruned cache."""
    if prefix_ids.dim() == 1:
        prefix_ids = prefix_ids[None]
    if prefix_ids.dim() != 2 or prefix_ids.shape[0] != 1:
        raise ValueError(f"compress_prefix takes one prefix, shape [1, L]; got {tuple(prefix_ids.shape)}")
    prefix_ids = prefix_ids.to(model.device)
    cache = AnchorCache(config=model.config, prune=prune)
    model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1, **{CACHE_NAME: cache})
    return CompressedPrefix(cache=cache, input_ids=prefix_ids)


@torch.no_grad()
def continuation_logits(
    model, prefix: CompressedPrefix, query_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, AnchorCache]:
    """Logits ``[batch, q_len, vocab]`` of ``query_ids`` (``[batch, q_len]``, right-padded with ``attention_mask``
    ``[batch, q_len]``) continuing the compressed prefix; also returns the (copied) cache after the query."""
    if query_ids.dim() == 1:
        query_ids = query_ids[None]
    query_ids = query_ids.to(model.device)
    cache = prefix.cache_for(query_ids.shape[0])
    if attention_mask is not None:
        attention_mask = attention_mask.to(model.device)
    out = model(input_ids=query_ids, attention_mask=attention_mask, use_cache=True, **{CACHE_NAME: cache})
    return out.logits, cache_of(out)


@torch.no_grad()
def generate_with_prefix(model, prefix: CompressedPrefix, query_ids: torch.LongTensor, **generate_kwargs):
    """``model.generate`` for ``query_ids`` ``[batch, q_len]`` (no padding) after the compressed prefix.

    Returns the generated ids including prefix and query, like ``generate``. Beam search and
    ``num_return_sequences`` are supported (the cache is expanded the way ``generate`` expands its inputs).
    """
    if query_ids.dim() == 1:
        query_ids = query_ids[None]
    query_ids = query_ids.to(model.device)
    batch = query_ids.shape[0]
    expand = max(int(generate_kwargs.get("num_beams", 1) or 1), 1)
    if generate_kwargs.get("do_sample") or expand == 1:
        expand = max(expand, int(generate_kwargs.get("num_return_sequences", 1) or 1))
    input_ids = torch.cat([prefix.input_ids.expand(batch, -1), query_ids], dim=1)
    cache = prefix.cache_for(batch)
    if expand > 1:
        cache.batch_repeat_interleave(expand)
    return model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **{CACHE_NAME: cache}, **generate_kwargs
    )


__all__ = ["CompressedPrefix", "compress_prefix", "continuation_logits", "generate_with_prefix"]
