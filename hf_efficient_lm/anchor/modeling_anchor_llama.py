"""AnchorLlama: Transformers' Llama with anchor-based self-attention (AnSAN) and an anchor-pruned KV cache (AnLLM).

The weights, parameter names and layers are exactly Llama's (``LlamaModel`` is subclassed; only ``forward`` changes
to build the AnSAN mask and to drive :class:`AnchorCache`), so any Llama checkpoint loads unchanged::

    model = AnchorLlamaForCausalLM.from_pretrained(llama_dir, anchor_token_ids=[ids of ".", "!", "?"])

Only stdlib / torch / transformers imports and single-dot siblings: this file travels with checkpoints for
``trust_remote_code``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import and_masks, find_packed_sequence_indices, packed_sequence_mask_function
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .cache_anchor import AnchorCache
from .compat_anchor import CACHE_NAME, resolve_cache
from .configuration_anchor_llama import AnchorLlamaConfig
from .masking_anchor import (
    ansan_mask_function,
    build_anchor_attention_mask,
    check_attn_implementation,
    chunk_token_info,
    find_anchor_tokens,
)


class AnchorLlamaPreTrainedModel(LlamaPreTrainedModel):
    config: AnchorLlamaConfig
    config_class = AnchorLlamaConfig
    # Flash attention only knows causal + padding masks; the AnSAN mask needs sdpa / eager / flex.
    _supports_flash_attn = False


class AnchorLlamaModel(AnchorLlamaPreTrainedModel, LlamaModel):
    """``LlamaModel`` whose forward uses the AnSAN mask and an :class:`AnchorCache`."""

    def __init__(self, config: AnchorLlamaConfig):
        config.validate_anchor_settings()
        check_attn_implementation(getattr(config, "_attn_implementation", None))
        super().__init__(config)

    def _anchor_ids(self, device: torch.device) -> torch.LongTensor:
        ids = self.config.anchor_token_ids
        cached = getattr(self, "_anchor_ids_cache", None)
        if cached is None or cached[0] != tuple(ids) or cached[1].device != device:
            for token_id in ids:
                if not 0 <= token_id < self.config.vocab_size:
                    raise ValueError(
                        f"anchor token id {token_id} is outside the vocabulary (vocab_size={self.config.vocab_size})"
                    )
            cached = (tuple(ids), torch.tensor(list(ids), dtype=torch.long, device=device))
            self._anchor_ids_cache = cached
        return cached[1]

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        anchor_flags: torch.BoolTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Like ``LlamaModel.forward``; the mask is AnSAN and the cache an :class:`AnchorCache`.

        Args:
            input_ids: ``[batch, q_len]``; anchors are found by id (``config.anchor_token_ids``).
            attention_mask: optional 2D ``[batch, seen + q_len]`` (or ``[batch, q_len]``) padding mask, 1 = real.
                Only its last ``q_len`` columns are read: earlier padding was already dropped from the cache.
            anchor_flags: ``[batch, q_len]`` bool, overrides the id lookup (needed with ``inputs_embeds``).
            cache: an :class:`AnchorCache` (``past_key_values`` before Transformers 5.24 is accepted too).
        """
        cache = resolve_cache(cache, kwargs)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        attn_implementation = check_attn_implementation(self.config._attn_implementation)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch_size, q_length = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        if use_cache and cache is None:
            cache = AnchorCache(config=self.config)
        if cache is not None and not isinstance(cache, AnchorCache):
            if isinstance(cache, DynamicCache) and cache.get_seq_length() == 0:
                cache = AnchorCache(config=self.config)
            else:
                raise TypeError(
                    f"AnchorLlama needs an AnchorCache (or None), got a filled {type(cache).__name__}: "
                    "its slots carry no anchor/sentence bookkeeping."
                )

        # Per-token metadata of this chunk: padding, anchors, sentence ids, stream indices.
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(
                    f"AnchorLlama builds its own 4D AnSAN mask; pass a 2D padding mask, got shape "
                    f"{tuple(attention_mask.shape)}"
                )
            if attention_mask.shape[1] < q_length:
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[1]} columns, fewer than the {q_length} input tokens"
                )
            valid = attention_mask[:, -q_length:].to(device=device, dtype=torch.bool)
        else:
            valid = torch.ones(batch_size, q_length, dtype=torch.bool, device=device)
        if anchor_flags is None:
            if input_ids is None:
                raise ValueError("With inputs_embeds, pass anchor_flags [batch, q_len] to mark the anchors")
            anchor_flags = find_anchor_tokens(input_ids, self._anchor_ids(device))
        first_index = cache.get_seq_length() if cache is not None else 0
        anchors_before = cache.anchors_seen if cache is not None else None
        queries = chunk_token_info(anchor_flags.to(device), valid, first_index, anchors_before)
        keys = cache.begin_chunk(queries) if cache is not None else queries

        mask_function = None
        if attention_mask is None and first_index == 0 and position_ids is not None:
            # Padding-free batches (DataCollatorWithFlattening, TRL): several documents per row, positions restart
            # at each one. Like Llama, keep every token inside its own document (anchors of earlier documents too).
            documents = find_packed_sequence_indices(position_ids.to(device))
            if documents is not None:
                mask_function = and_masks(
                    ansan_mask_function(queries, keys, self.config.anchor_mask_variant),
                    packed_sequence_mask_function(documents.expand(batch_size, -1)),
                )
        if position_ids is None:
            position_ids = torch.arange(q_length, device=device).unsqueeze(0) + first_index

        attention_mask_4d = build_anchor_attention_mask(
            attn_implementation,
            queries,
            keys,
            variant=self.config.anchor_mask_variant,
            dtype=inputs_embeds.dtype,
            mask_function=mask_function,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=attention_mask_4d,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                **{CACHE_NAME: cache},
                use_cache=use_cache,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_NAME: cache})


class AnchorLlamaForCausalLM(AnchorLlamaPreTrainedModel, LlamaForCausalLM):
    """``LlamaForCausalLM`` on :class:`AnchorLlamaModel`: same parameters (``model.*``, ``lm_head``), AnSAN attention,
    and ``generate()`` that uses an :class:`AnchorCache` (greedy, sampling, beam search, left-padded batches)."""

    def __init__(self, config: AnchorLlamaConfig):
        # Not LlamaForCausalLM.__init__: that would build (and initialise) a plain LlamaModel first.
        AnchorLlamaPreTrainedModel.__init__(self, config)
        self.model = AnchorLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"AnchorLlama generates with its own AnchorCache; cache_implementation="
                f"{generation_config.cache_implementation!r} is not supported."
            )
        user_cache = model_kwargs.get(CACHE_NAME)
        if user_cache is not None and not isinstance(user_cache, AnchorCache):
            raise TypeError(f"AnchorLlama.generate needs an AnchorCache as {CACHE_NAME}, got {type(user_cache).__name__}")
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if isinstance(model_kwargs.get(CACHE_NAME), DynamicCache):
            model_kwargs[CACHE_NAME] = AnchorCache(config=self.config)
        return result


__all__ = ["AnchorLlamaPreTrainedModel", "AnchorLlamaModel", "AnchorLlamaForCausalLM"]
