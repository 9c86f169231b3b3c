"""The BLT entropy model: a small causal byte LM (Mistral-style Llama blocks with a sliding window) whose next-byte
entropy decides where patches start. Trainable on its own with the Trainer like any causal LM."""

from __future__ import annotations

import torch
from transformers import MistralForCausalLM
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from .compat_blt import CACHE_NAME, AutoClassesMixin, cache_of
from .configuration_blt_lm import BLTEntropyConfig


def next_byte_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of ``softmax(logits)`` over the last axis, computed in fp32: ``[..., V] -> [...]``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def layer_mask(config, hidden, attention_mask, position_ids, cache=None, docs=None):
    """The causal (sliding-window when ``config`` has one) mask for ``hidden [B, T, *]``, ``attention_mask [B, S]`` (all
    slots, or None) and ``cache``; ``docs [B, T]`` (document of each slot, full forward only): block-causal as Meta's."""
    make_mask = create_sliding_window_causal_mask if getattr(config, "sliding_window", None) is not None else create_causal_mask
    same_doc = None if docs is None else (lambda b, h, q, kv: docs[b, q] == docs[b, kv])
    # position_ids restarting per document must not trigger Transformers' packed-sequence remapping of same_doc's indices
    return make_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask, and_mask_function=same_doc,
                     position_ids=position_ids if docs is None else None, **{CACHE_NAME: cache})


class BLTEntropyModel(AutoClassesMixin, MistralForCausalLM):
    """Causal byte LM used as BLT's patcher. ``model(input_ids, labels=...)`` trains it; :meth:`entropies` gives the
    per-position next-byte entropies ``[B, N]`` in one batched pass."""

    config_class = BLTEntropyConfig
    config: BLTEntropyConfig
    # Separate output head (like the released BLT patcher): Mistral's lm_head <-> embed_tokens tie is not declared.
    _tied_weights_keys = {}

    def __init__(self, config: BLTEntropyConfig):  # the class name sets no loss_type, and Trainer would then count
        super().__init__(config)  # all labels for num_items_in_batch, not the shifted ones (loss scaled by (T-1)/T)
        self.loss_type = "ForCausalLM"

    @torch.no_grad()
    def entropies(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                  position_ids: torch.LongTensor | None = None, cache=None, use_cache: bool = False, docs=None):
        """Next-byte entropies (nats, fp32) ``[B, N]`` (``H[:, t]``: the uncertainty about byte ``t + 1``) and the cache.
        With left padding pass ``attention_mask`` (positions then count from each row's first real byte); ``docs [B, N]``
        (document of each byte, positions counted per document): block-causal attention, each document read alone."""
        if attention_mask is not None and position_ids is None and cache is None:  # count from the first real byte
            position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        if docs is not None:  # Mistral's forward takes a 4-D mask as it is
            shape = torch.empty(*input_ids.shape, 0, dtype=self.dtype, device=input_ids.device)
            attention_mask = layer_mask(self.config, shape, attention_mask, position_ids, cache, docs)
        out = self(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
                   **{CACHE_NAME: cache})
        return next_byte_entropy(out.logits), cache_of(out)


__all__ = ["BLTEntropyModel", "next_byte_entropy", "layer_mask"]
