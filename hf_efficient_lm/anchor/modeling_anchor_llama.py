"""AnchorLlama: Transformers' Llama with anchor-based self-attention (AnSAN) and an anchor-pruned KV cache (AnLLM).

The weights, parameter names and layers are exactly Llama's (``LlamaModel`` is subclassed; only ``forward`` changes
to build the AnSAN mask and to drive :class:`AnchorCache`), so any Llama checkpoint loads unchanged::

    model = AnchorLlamaForCausalLM.from_pretrained(llama_dir, anchor_token_ids=[ids of ".", "!", "?"])
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import and_masks, find_packed_sequence_indices, packed_sequence_mask_function
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel,
                                                      apply_rotary_pos_emb)
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .cache_anchor import AnchorCache
from .compat_anchor import CACHE_NAME, AutoClassesMixin, resolve_cache
from .configuration_anchor_llama import AnchorLlamaConfig
from .masking_anchor import (
    AnchorAttentionMask,
    ansan_mask_function,
    build_anchor_attention_mask,
    check_attn_implementation,
    chunk_token_info,
    decode_step_mask,
    find_anchor_tokens,
)


def chunked_sdpa_attention(module, query, key, value, mask: AnchorAttentionMask, dropout=0.0, scaling=None, **kwargs):
    """Transformers' sdpa attention under an :class:`AnchorAttentionMask` ``[batch, 1, q_len, kv_len]``, one block of
    query rows at a time: query ``[batch, heads, q_len, head_dim]``, key / value ``[batch, kv_heads, kv_len,
    head_dim]`` (cache slots, then the chunk's ``q_len`` tokens) -> ``([batch, q_len, heads, head_dim], None)``.
    Rows are independent, so each is exactly what one dense call gives; a block reads keys only up to its last token.
    Under autograd each block is checkpointed (the backward rebuilds its mask rather than keeping a quadratic one per
    layer): memory stays linear in the length, for one extra attention forward."""
    q_length, kv_length = query.shape[2], key.shape[2]
    if tuple(mask.shape[2:]) != (q_length, kv_length):
        raise ValueError(f"the anchor mask is {tuple(mask.shape)} but the attention is {q_length} x {kv_length}")
    held = kv_length - q_length
    rows = mask.block_rows()
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))

    def block(start, end, query, key, value):  # the mask block is built here: a checkpointed block rebuilds it
        block_mask = mask.rows(start, end, key.shape[2])
        return sdpa_attention_forward(module, query, key, value, block_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)[0]

    outputs = []
    for start in range(0, q_length, rows):
        end = min(start + rows, q_length)
        args = (start, end, query[:, :, start:end], key[:, :, : held + end], value[:, :, : held + end])
        outputs.append(checkpoint(block, *args, use_reentrant=False) if track else block(*args))
    return torch.cat(outputs, dim=1), None


class AnchorLlamaAttention(LlamaAttention):
    """``LlamaAttention`` that also accepts an :class:`AnchorAttentionMask` (long sdpa inputs)."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        if not isinstance(attention_mask, AnchorAttentionMask):
            return super().forward(hidden_states, position_embeddings=position_embeddings,
                                   attention_mask=attention_mask, **kwargs)
        # LlamaAttention.forward's steps, with the attention call replaced.
        cache = resolve_cache(kwargs.pop("cache", None), kwargs)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = chunked_sdpa_attention(self, query_states, key_states, value_states, attention_mask,
                                                           dropout=self.attention_dropout if self.training else 0.0,
                                                           scaling=self.scaling, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class AnchorLlamaPreTrainedModel(AutoClassesMixin, LlamaPreTrainedModel):
    config: AnchorLlamaConfig
    config_class = AnchorLlamaConfig
    # Flash attention only knows causal + padding masks; the AnSAN mask needs sdpa / eager / flex.
    _supports_flash_attn = False


class AnchorLlamaModel(AnchorLlamaPreTrainedModel, LlamaModel):
    """``LlamaModel`` whose forward uses the AnSAN mask and an :class:`AnchorCache`."""

    def __init__(self, config: AnchorLlamaConfig):
        config.validate_architecture()
        check_attn_implementation(getattr(config, "_attn_implementation", None))
        super().__init__(config)
        for layer in self.layers:
            # AnchorLlamaAttention adds no parameter or state, only a second mask type to forward: re-classing keeps
            # the initialised modules (and every parameter name) of LlamaModel.
            layer.self_attn.__class__ = AnchorLlamaAttention

    def _anchor_ids(self, device: torch.device) -> torch.LongTensor:
        ids = tuple(self.config.anchor_token_ids)
        cached = getattr(self, "_anchor_ids_cache", None)
        if cached is None or cached[0] != ids or cached[1].device != device:
            self.config.validate_architecture()  # the ids (or vocab_size) may have changed since __init__
            cached = self._anchor_ids_cache = (ids, torch.tensor(ids, dtype=torch.long, device=device))
        return cached[1]

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                anchor_flags: torch.BoolTensor | None = None, **kwargs) -> BaseModelOutputWithPast:
        """``LlamaModel.forward`` with the AnSAN mask and an :class:`AnchorCache` (``past_key_values`` before 5.24).
        ``input_ids`` ``[batch, q_len]`` (anchors found by id); ``attention_mask``: 2D padding mask ``[batch, seen +
        q_len]`` or ``[batch, q_len]`` (only the last ``q_len`` columns are read: earlier padding left the cache);
        ``anchor_flags`` ``[batch, q_len]`` bool overrides the id lookup (needed with ``inputs_embeds``)."""
        cache = resolve_cache(cache, kwargs)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        attn_implementation = check_attn_implementation(self.config._attn_implementation)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch_size, q_length = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        if (use_cache and cache is None) or (isinstance(cache, DynamicCache) and cache.get_seq_length() == 0):
            cache = AnchorCache(config=self.config)  # an empty DynamicCache holds nothing to convert
        if cache is not None and not isinstance(cache, AnchorCache):
            raise TypeError(f"AnchorLlama needs an AnchorCache (or None), got a filled {type(cache).__name__}: "
                            "its slots carry no anchor/sentence bookkeeping.")

        # Per-token metadata of this chunk: padding, anchors, sentence ids, stream indices.
        first_index = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None:  # (a mask wider than the stream would be read from its right)
            widths = {(batch_size, q_length), (batch_size, first_index + q_length)}
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) not in widths:
                raise ValueError(f"AnchorLlama builds its own 4D AnSAN mask; pass a 2D padding mask [batch, q_len] or [batch, "
                                 f"seen + q_len] = {[batch_size, first_index + q_length]}, got shape {tuple(attention_mask.shape)}")
            valid = attention_mask[:, -q_length:].to(device=device, dtype=torch.bool)
        else:
            valid = torch.ones(batch_size, q_length, dtype=torch.bool, device=device)
        if anchor_flags is None:
            if input_ids is None:
                raise ValueError("With inputs_embeds, pass anchor_flags [batch, q_len] marking the anchors, also in "
                                 "generate(inputs_embeds=...); PEFT prompt tuning / p-tuning pass none: not supported")
            anchor_flags = find_anchor_tokens(input_ids, self._anchor_ids(device))
        elif anchor_flags.shape != (batch_size, q_length) or anchor_flags.dtype != torch.bool:  # (it would broadcast)
            raise ValueError(f"anchor_flags must be a bool tensor of shape [batch, q_len] = {[batch_size, q_length]}, got "
                             f"{anchor_flags.dtype} {list(anchor_flags.shape)}")
        anchors_before = cache.anchors_seen if cache is not None else None
        if self.config.position_mode == "compact" and first_index > 0:
            # The official real-time inference: RoPE offset = length of the (pruned) cache, per row, counted over
            # the chunk's real tokens. Read before begin_chunk, which prunes.
            kept = cache.slot_info.valid.sum(dim=1)
            position_ids = kept[:, None] + (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        queries = chunk_token_info(anchor_flags.to(device), valid, first_index, anchors_before)
        keys = cache.begin_chunk(queries) if cache is not None else queries

        variant = self.config.anchor_mask_variant
        mask_function = ansan_mask_function(queries, keys, variant)
        documents = None
        if attention_mask is None and first_index == 0 and position_ids is not None:
            # Padding-free batches (DataCollatorWithFlattening, TRL): several documents per row, positions restart
            # at each one. Like Llama, keep every token inside its own document (anchors of earlier documents too).
            documents = find_packed_sequence_indices(position_ids.to(device))
            if documents is not None:
                in_document = packed_sequence_mask_function(documents.expand(batch_size, -1))
                mask_function = and_masks(mask_function, in_document)
        if position_ids is None:
            position_ids = torch.arange(q_length, device=device).unsqueeze(0) + first_index

        if attn_implementation == "flex_attention" and device.type == "cpu" and torch.is_grad_enabled() and (
            self.training or inputs_embeds.requires_grad
        ):
            raise ValueError("attn_implementation='flex_attention' cannot train on CPU: PyTorch's flex attention has "
                             "no backward pass there (it trains on CUDA). On CPU use 'sdpa' (its AnSAN mask is built "
                             "block by block for long inputs: linear memory); flex runs only inference there.")
        if q_length == 1 and documents is None and attn_implementation != "flex_attention":
            # Decode step: a few ops on [batch, kv_len] instead of the generic builder, usually no mask at all.
            attention_mask_4d = decode_step_mask(queries, keys, variant)
        else:
            attention_mask_4d = build_anchor_attention_mask(attn_implementation, queries, keys, lazy=True,
                                                            dtype=inputs_embeds.dtype, mask_function=mask_function)
        if isinstance(attention_mask_4d, torch.Tensor) and attention_mask_4d.dtype == torch.bool:
            # Additive, once for all layers: eager adds its mask, and given a bool mask torch's sdpa makes its own
            # float copy in every layer and keeps each one for the backward pass (num_layers x 4 x q_len x kv_len).
            blocked = float("-inf") if attn_implementation == "sdpa" else torch.finfo(inputs_embeds.dtype).min
            attention_mask_4d = torch.zeros(attention_mask_4d.shape, dtype=inputs_embeds.dtype, device=device
                                            ).masked_fill_(~attention_mask_4d, blocked)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(hidden_states, attention_mask=attention_mask_4d, position_ids=position_ids,
                                          position_embeddings=position_embeddings, **{CACHE_NAME: cache},
                                          use_cache=use_cache, **kwargs)
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

    @functools.wraps(LlamaForCausalLM.forward)  # (its signature, which generate() and the Trainer read)
    def forward(self, *args, cache=None, **kwargs):  # Llama's would drop a second cache: PEFT prefix tuning's on 5.24+
        return super().forward(*args, **{CACHE_NAME: resolve_cache(cache, kwargs)}, **kwargs)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, mode, *args, **kwargs):
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(f"AnchorLlama generates with its own AnchorCache; cache_implementation="
                             f"{generation_config.cache_implementation!r} is not supported.")
        if mode == "assisted_generation":  # (a GenerationMode, str enum; 5.23 would only fail at the first rejection)
            raise ValueError("AnchorLlama cannot do assisted decoding (assistant_model, prompt_lookup_num_tokens): "
                             "rejected draft tokens cannot be cropped out of an AnchorCache that pruned sentences")
        user_cache = model_kwargs.get(CACHE_NAME)
        if user_cache is not None and not isinstance(user_cache, AnchorCache):
            raise TypeError(f"AnchorLlama.generate needs an AnchorCache as {CACHE_NAME}, got {type(user_cache).__name__}")
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, mode, *args, **kwargs)
        if isinstance(model_kwargs.get(CACHE_NAME), DynamicCache):
            model_kwargs[CACHE_NAME] = AnchorCache(config=self.config)
        return result

    def prepare_inputs_for_generation(self, input_ids, *args, inputs_embeds=None, anchor_flags=None, **kwargs):
        """``GenerationMixin``'s, plus ``generate(inputs_embeds=..., anchor_flags=...)``: embeddings carry no ids, so the
        prompt's anchors come as ``anchor_flags`` ``[batch, prompt_len]``, given to the forward that reads the
        embeddings only; every later step finds its anchors by id."""
        if anchor_flags is not None and inputs_embeds is None:  # (ids carry their anchors: the flags would be dropped)
            raise ValueError("generate() takes anchor_flags with inputs_embeds only: with input_ids, anchors are found by id")
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, inputs_embeds=inputs_embeds, **kwargs)
        embeds = model_inputs.get("inputs_embeds")
        if embeds is not None and anchor_flags is not None:
            model_inputs["anchor_flags"] = anchor_flags[:, -embeds.shape[1]:]
        return model_inputs
