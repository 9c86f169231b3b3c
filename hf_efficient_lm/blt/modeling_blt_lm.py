"""BLT — Byte Latent Transformer (Pagnoni et al., 2024) as a Transformers causal LM. For ``N`` bytes, ``P`` patches:

1. entropy model -> next-byte entropies ``[B, N]`` -> patch start mask ``[B, N + 1]`` (``patcher_blt``);
2. byte + hashed n-gram embeddings -> ``[B, N, D_E]``; local encoder: sliding-window layers over bytes, then each
   patch (max-pooled, projected to ``k = cross_attn_k`` queries) cross-attends to its bytes -> ``[B, P, k * D_E]``;
3. latent transformer: causal over patches -> ``[B, P, D_G]``;
4. local decoder: from the encoder byte states, each byte cross-attends to the ``k`` slices of the patch *before* the
   one holding the byte it predicts, then sliding-window layers; norm; LM head -> ``[B, N, 260]``.

Blocks are Transformers' Mistral/Llama layers (half-split RoPE: ``hf_efficient_lm.tools.blt_convert`` permutes q/k rows
of Transformers' ``Blt``); cross-attention gathers each query's keys. ``BLTModel.forward`` has two paths: ``_prefill``
(the full forward) and ``_decode`` (one step of the small models per byte on a :class:`BLTCache`, one latent step
only when a patch closes), exactly equal to the full forward."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, GradientCheckpointingLayer, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast, ModelOutput
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer, MistralRMSNorm, MistralRotaryEmbedding

from .cache_blt import BLTCache
from .compat_blt import CACHE_NAME, AutoClassesMixin, resolve_cache
from .configuration_blt_lm import BLTConfig, BLTLocalConfig
from .modeling_blt_entropy import BLTEntropyModel, layer_mask
from .patcher_blt import patch_starts, relative_positions, rule_settings, starts_from_patch_lengths

# Primes of the rolling polynomial hash (same list and order as Meta's / Transformers' BLT, for weight compatibility).
HASH_PRIMES = (1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767, 3628273133,
               2860486313, 5463458053, 3367900313)


def byte_ngram_hash_ids(input_ids: torch.LongTensor, group_sizes: list[int], nb_functions: int, buckets: int,
                        positions: torch.LongTensor | None = None):
    """Row indices into the fused hash table, ``[B, N] -> [B, N, nb_functions * len(group_sizes)]``. For n-gram size
    ``n`` ending at byte ``i`` (zero left padding), ``hash = sum_j ids[i-n+1+j] * prime^j`` in wrapping int64, computed
    in one Horner pass over n (``h_n = ids[i-n+1] + prime * h_{n-1}``), then a non-negative modulo ``buckets``; table
    ``m = function * len(group_sizes) + size_index`` sits at ``m * buckets``. ``positions [B, N]`` (document masking):
    bytes before byte ``i``'s document read as the zero padding."""
    ids = input_ids.long()
    batch, length = ids.shape
    max_n = max(group_sizes, default=0)
    padded = torch.cat([ids.new_zeros(batch, max_n), ids], dim=1)  # padded[:, max_n + i - s] = ids[:, i - s]
    columns = []
    for func in range(nb_functions):
        prime = HASH_PRIMES[func % len(HASH_PRIMES)]
        by_size = {1: ids}
        for n in range(2, max_n + 1):
            older = padded[:, max_n - n + 1 : max_n - n + 1 + length]  # ids[i - n + 1]
            older = older if positions is None else older * (positions >= n - 1)
            by_size[n] = older + prime * by_size[n - 1]
        for size_index, n in enumerate(group_sizes):
            table = func * len(group_sizes) + size_index
            columns.append(torch.remainder(by_size[n], buckets) + table * buckets)
    return torch.stack(columns, dim=-1) if columns else ids.new_zeros(batch, length, 0)


def check_padding(attention_mask: torch.Tensor, refuse_right: str | None = None) -> None:
    """Validate that each row of ``attention_mask [B, N]`` is one run of ones (padding on the left and/or the right);
    with ``refuse_right`` (what needs it) also that no row is right-padded: new bytes would follow its padding."""
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):  # (before .long(): 0.9 would read as 0)
        raise ValueError(f"attention_mask must hold 0/1 values, got {sorted(set(attention_mask.unique().tolist()))}")
    mask = attention_mask.long()
    leading = (mask.cumsum(dim=1) == 0).sum(dim=1, keepdim=True)
    end = leading + mask.sum(dim=1, keepdim=True)
    slot = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    holes = (mask == 0) & (slot > leading) & (slot < end)  # padding between a row's real bytes
    if bool(holes.any()):
        row = int(holes.any(dim=1).nonzero()[0, 0])
        zeros = holes[row].nonzero().flatten().tolist()[:8]
        raise ValueError(f"attention_mask row {row} has padding between real bytes (zeros at slots {zeros}): BLT needs "
                         "each row's real bytes in one run, padding only around it")
    right_padded = (end.squeeze(1) < mask.shape[1]) & (mask.sum(dim=1) > 0)
    if refuse_right and bool(right_padded.any()):
        raise ValueError(f"{refuse_right}: row(s) {right_padded.nonzero().flatten().tolist()} end with padding, which new "
                         "bytes would follow. Pad on the left (tokenizer.padding_side='left'); right padding is for "
                         "training / scoring (use_cache=False).")


class BLTCrossAttention(GradientCheckpointingLayer):  # (checkpointed with the layers: most saved bytes are here)
    """Cross-attention without RoPE between queries and a gathered set of keys per query group. Same parameters as
    Transformers' ``BltCrossAttention`` (q/k/v/o projections, RMSNorm on queries and on the key/value input) and the
    same residual quirk: the block returns ``queries + attention`` and callers add the queries once more."""

    def __init__(self, config: BLTLocalConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, hidden = config.num_attention_heads, config.num_key_value_heads, config.hidden_size
        self.head_dim = hidden // self.num_heads
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.q_norm = MistralRMSNorm(hidden, eps=config.rms_norm_eps)
        self.k_norm = MistralRMSNorm(hidden, eps=config.rms_norm_eps)

    def forward(self, queries: torch.Tensor, kv_states: torch.Tensor, key_valid: torch.Tensor | None = None,
                kv_index: torch.LongTensor | None = None) -> torch.Tensor:
        """queries ``[B, G, Q, D]`` attend to the keys/values projected from ``kv_states``: ``[B, G, S, D]``, or ``[B, 1,
        T, D]`` whose slots ``kv_index [B, G, S]`` each group reads (gathered after the projection: each state projected
        once). ``key_valid [B, G, S]`` masks keys (none valid: zero output). Every parameter is used inside ``forward``."""
        normed = self.k_norm(kv_states)
        shape = (*kv_states.shape[:-1], self.num_kv_heads, self.head_dim)
        keys, values = self.k_proj(normed).view(shape), self.v_proj(normed).view(shape)
        query = self.q_proj(self.q_norm(queries)).unflatten(-1, (self.num_heads, self.head_dim)).transpose(2, 3)
        # The backward recomputes the core (gathered keys/values, fp32 probabilities: most saved bytes) instead of keeping it
        recompute = torch.is_grad_enabled() and not (self.gradient_checkpointing and self.training)  # (or the whole block)
        attend = partial(checkpoint, self._attend, use_reentrant=False) if recompute else self._attend
        out = attend(query, keys, values, key_valid, kv_index)
        return self.o_proj(out.transpose(2, 3).flatten(-2)) + queries

    def _attend(self, query, keys, values, key_valid, kv_index) -> torch.Tensor:
        """query ``[B, G, H, Q, d]``, keys/values ``[B, G | 1, S | T, kv_heads, d]`` (see forward) -> ``[B, G, H, Q, d]``"""
        if kv_index is not None:  # slot s of group g is slot kv_index[b, g, s] of the one group
            flat = kv_index.flatten(1)[..., None, None].expand(-1, -1, *keys.shape[3:])  # [B, G * S, heads, dim]
            keys, values = (t[:, 0].gather(1, flat).view(*kv_index.shape, *t.shape[3:]) for t in (keys, values))
        rep = self.num_heads // self.num_kv_heads
        if rep > 1:
            keys, values = keys.repeat_interleave(rep, dim=-2), values.repeat_interleave(rep, dim=-2)
        # batched matmuls over (B, G, H): [q, d] x [d, s] -> [q, s]
        scores = torch.matmul(query, keys.permute(0, 1, 3, 4, 2)) * self.head_dim**-0.5
        if key_valid is not None:
            scores = scores.masked_fill(~key_valid[:, :, None, None, :], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(values.dtype)
        return torch.matmul(probs, values.transpose(2, 3))  # [B, G, H, q, d]


class _LayerStack(nn.Module):
    """A stack of Mistral/Llama decoder layers (``layers``, ``rotary_emb``, ``config``)."""

    def run_layers(self, hidden, attention_mask, position_ids, cache=None, docs=None, before_layer=None):
        """``hidden [B, T, D]`` through the layers with :func:`layer_mask`; ``before_layer(i, hidden)`` runs before
        layer ``i`` (the decoder's cross-attention)."""
        mask = layer_mask(self.config, hidden, attention_mask, position_ids, cache, docs)
        position_embeddings = self.rotary_emb(hidden, position_ids)
        for i, layer in enumerate(self.layers):
            if before_layer is not None:
                hidden = before_layer(i, hidden)
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, use_cache=cache is not None,
                           position_embeddings=position_embeddings, **{CACHE_NAME: cache})
        return hidden


class _BLTLocalStack(_LayerStack):
    """What the local encoder and decoder share: sliding-window byte layers, RoPE, the projection to the ``k`` patch
    query / key slices and the cross-attentions (one per layer with ``cross_attn_all_layers``, else one)."""

    def __init__(self, config: BLTLocalConfig, patch_size: int, cross_attn_k: int, embed: bool = False):
        super().__init__()
        self.config, self.cross_attn_k = config, cross_attn_k
        if embed:  # the encoder's byte embedding (created first: parameter order as before the split)
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([MistralDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.rotary_emb = MistralRotaryEmbedding(config=config)
        self.patch_embedding_projection = nn.Linear(patch_size, config.hidden_size * cross_attn_k, bias=False)
        n_cross = config.num_hidden_layers if config.cross_attn_all_layers else 1
        self.cross_attn_layers = nn.ModuleList([BLTCrossAttention(config) for _ in range(n_cross)])


class BLTLocalEncoder(_BLTLocalStack):
    """Byte embedding + sliding-window byte layers + patch cross-attention (patches as queries)."""

    def __init__(self, config: BLTLocalConfig, cross_attn_k: int):
        super().__init__(config, config.hidden_size, cross_attn_k, embed=True)

    def patch_vectors(self, byte_states, gather_index, gather_valid):
        """Pool and cross-attend each patch over its bytes: byte_states ``[B, N, D]``; gather_index/valid ``[B, P, L]``
        (byte slots of each patch, L = longest patch) -> ``[B, P, k * D]``."""
        (b, p, slots), d = gather_index.shape, byte_states.shape[-1]
        flat = gather_index.reshape(b, p * slots, 1).expand(b, p * slots, d)
        patch_bytes = byte_states.gather(1, flat).view(b, p, slots, d)
        pooled = patch_bytes.masked_fill(~gather_valid[..., None], float("-inf")).amax(dim=2)
        pooled = torch.where(gather_valid.any(dim=2, keepdim=True), pooled, torch.zeros_like(pooled))
        queries = self.patch_embedding_projection(pooled).view(b, p, self.cross_attn_k, d)
        # each byte's keys/values projected once when the slots (padded to the longest patch) outnumber the bytes
        kv, index = (byte_states.unsqueeze(1), gather_index) if p * slots > byte_states.shape[1] else (patch_bytes, None)
        out = queries + self.cross_attn_layers[-1](queries, kv, gather_valid, index)
        return out.reshape(b, p, self.cross_attn_k * d)


class BLTGlobalTransformer(_LayerStack):
    """Causal Llama layers over patch vectors (no embedding table, no final norm)."""

    def __init__(self, config, input_size: int):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.token_embedding_projection = (nn.Linear(input_size, config.hidden_size, bias=False)
                                           if input_size != config.hidden_size else nn.Identity())

    def forward(self, patch_vectors, position_ids, attention_mask=None, cache=None, docs=None):
        """``[B, P, k*D_E] -> [B, P, D_G]``; ``attention_mask [B, S]`` marks valid latent slots (decoding)."""
        return self.run_layers(self.token_embedding_projection(patch_vectors), attention_mask, position_ids, cache, docs)


class BLTLocalDecoder(_BLTLocalStack):
    """Byte layers that cross-attend (before each layer) to the k slices of their assigned patch; final norm."""

    def __init__(self, config: BLTLocalConfig, global_size: int, cross_attn_k: int):
        super().__init__(config, global_size, cross_attn_k)
        self.norm = MistralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, byte_states, patch_states, byte_patch, attention_mask, position_ids, cache=None, docs=None):
        """byte_states ``[B, N, D]`` (encoder output); patch_states ``[B, P, D_G]``; byte_patch ``[B, N]`` index of
        the patch each byte reads; attention_mask ``[B, T]`` or None -> ``[B, N, D]`` normed states."""
        (b, _, d), p = byte_states.shape, patch_states.shape[1]
        slices = self.patch_embedding_projection(patch_states).view(b, 1, p * self.cross_attn_k, d)
        slice_ids = torch.arange(self.cross_attn_k, device=byte_patch.device)  # byte t reads its patch's k slices
        index = byte_patch.clamp(min=0, max=p - 1).unsqueeze(-1) * self.cross_attn_k + slice_ids

        def cross_attend(i, hidden):
            if i >= len(self.cross_attn_layers):
                return hidden
            return hidden + self.cross_attn_layers[i](hidden.unsqueeze(2), slices, kv_index=index).squeeze(2)

        return self.norm(self.run_layers(byte_states, attention_mask, position_ids, cache, docs, cross_attend))


@dataclass
class BLTModelOutput(ModelOutput):
    """last_hidden_state ``[B, N, D]``; patch_starts ``[B, N + 1]`` (byte t opens a patch); entropies ``[B, N]``
    when the entropy model ran; cache a :class:`BLTCache` when ``use_cache``; hidden_states (full forward only):
    ``(encoder byte states [B, N, D_local], latent patch states [B, P, D_global], last_hidden_state)``."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: object | None = None
    patch_starts: torch.BoolTensor | None = None
    entropies: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def patch_layout(starts: torch.Tensor, byte_valid: torch.Tensor | None = None):
    """From the start mask ``[B, N + 1]``: gather index/valid ``[B, P, L]`` of each patch's byte slots (L = longest
    patch), the decoder patch id ``[B, N]`` of each byte (the patch before the one that holds byte t + 1) and ``P``.
    ``byte_valid [B, N]`` (the attention mask) drops padding bytes from every patch."""
    b, n = starts.shape[0], starts.shape[1] - 1
    cum = starts.long().cumsum(dim=1)
    enc_ids = cum[:, :n] - 1  # left padding -> -1
    if byte_valid is not None:
        # Right padding would otherwise join the patch opened at the row's next-byte slot: no real byte reads that
        # patch, but it would make the gather as long as the padding.
        enc_ids = torch.where(byte_valid.bool(), enc_ids, torch.full_like(enc_ids, -1))
    num_patches = max(int(enc_ids.max()) + 1, 1) if n else 1
    slot = torch.arange(n, device=starts.device).expand(b, n)
    big = torch.full((b, num_patches + 1), n, dtype=torch.long, device=starts.device)
    first = big.scatter_reduce(1, enc_ids + 1, slot, reduce="amin", include_self=True)[:, 1:]
    lengths = torch.zeros(b, num_patches + 1, dtype=torch.long, device=starts.device)
    lengths = lengths.scatter_add(1, enc_ids + 1, torch.ones_like(slot))[:, 1:]
    offs = torch.arange(max(int(lengths.max()), 1), device=starts.device)
    gather_index = (first.unsqueeze(-1) + offs).clamp(max=max(n - 1, 0))
    return gather_index, offs < lengths.unsqueeze(-1), cum[:, 1:] - 2, num_patches


class BLTPreTrainedModel(AutoClassesMixin, PreTrainedModel):
    config_class = BLTConfig
    config: BLTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # FSDP / device-map units: local encoder/decoder layers, latent layers, cross-attentions, the (frozen) entropy model
    _no_split_modules = ["MistralDecoderLayer", "LlamaDecoderLayer", "BLTCrossAttention", "BLTEntropyModel"]
    _supports_sdpa = True  # flash / flex attention and fullgraph compile stay off (PreTrainedModel's defaults)
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]
    # Reading / writing Transformers' ``blt`` checkpoints is a tool: importing hf_efficient_lm.blt installs tools.blt_convert
    transformers_blt_converter = None

    def __init__(self, config: BLTConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        # the Mistral/Llama layers read the attention implementation from their sub-config: hand down the top one's
        for key in config.sub_configs:
            sub = getattr(config, key)
            if sub is not None and sub._attn_implementation_internal is None:
                sub._attn_implementation_internal = config._attn_implementation

    def freeze_entropy_model(self) -> None:
        """Entropy model parameters never train inside BLT (boundaries are a hard threshold on its entropies)."""
        for module in (m for m in self.modules() if isinstance(m, BLTEntropyModel)):
            module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Our folders; with hf_efficient_lm installed also Transformers' ``blt`` folders (converted). Entropy model frozen."""
        converter = cls.transformers_blt_converter
        if converter is not None and converter.is_transformers_blt_folder(pretrained_model_name_or_path):
            model = converter.load(cls, pretrained_model_name_or_path, **kwargs)
        else:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        (model[0] if isinstance(model, tuple) else model).freeze_entropy_model()
        return model


class BLTModel(BLTPreTrainedModel):
    """BLT without the LM head: returns the local decoder's normed byte states."""

    def __init__(self, config: BLTConfig):
        super().__init__(config)
        enc, dec, glob = config.encoder_config, config.decoder_config, config.global_config
        self.local_encoder = BLTLocalEncoder(enc, config.cross_attn_k)
        self.global_transformer = BLTGlobalTransformer(glob, config.latent_input_size)
        self.local_decoder = BLTLocalDecoder(dec, glob.hidden_size, config.cross_attn_k)
        num_tables = config.encoder_hash_byte_group_nb_functions * len(config.encoder_hash_byte_group_size)
        hash_rows = num_tables * config.encoder_hash_byte_group_vocab
        self.encoder_hash_tok_embedding = nn.Embedding(hash_rows, enc.hidden_size) if num_tables else None
        # Frozen: boundaries are a hard threshold on its entropies; it is trained separately (examples/).
        self.entropy_model = BLTEntropyModel(config.entropy_config) if config.patching_mode.startswith("entropy") else None
        self.freeze_entropy_model()
        self.post_init()

    def get_input_embeddings(self):
        return self.local_encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.local_encoder.embed_tokens = value

    def embed_bytes(self, input_ids: torch.LongTensor, positions=None) -> torch.Tensor:
        """Byte embedding plus the sum of the hashed n-gram embeddings (n-grams ending at each byte, zeros before the
        first, or before its document's first with ``positions``): ``[B, N] -> [B, N, D_E]``."""
        embeds = self.local_encoder.embed_tokens(input_ids)
        if self.encoder_hash_tok_embedding is not None:
            c = self.config
            hash_ids = byte_ngram_hash_ids(input_ids, c.encoder_hash_byte_group_size,
                                           c.encoder_hash_byte_group_nb_functions, c.encoder_hash_byte_group_vocab, positions)
            embeds = embeds + self.encoder_hash_tok_embedding(hash_ids).sum(dim=-2)
        return embeds

    def _entropies(self, ids, attention_mask, position_ids, cache=None, docs=None) -> torch.Tensor | None:
        """Next-byte entropies ``[B, T]`` (None without an entropy model). Ids beyond the entropy model's vocabulary
        (tokens added by resize_token_embeddings) read as BOE. ``docs [B, T]``: block-causal (document masking)."""
        if self.entropy_model is None:
            return None
        ids = torch.where(ids >= self.config.entropy_config.vocab_size, torch.zeros_like(ids), ids)
        return self.entropy_model.entropies(ids, attention_mask, position_ids, cache, cache is not None, docs)[0]

    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        patch_lengths: torch.Tensor | None = None, cache: BLTCache | None = None, use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None, **kwargs,
    ) -> BLTModelOutput:
        """input_ids ``[B, N]`` byte ids; attention_mask ``[B, N]`` (padding around one run of real bytes per row; right
        padding only without the cache); patch_lengths ``[B, P]`` optional precomputed patches (rows sum to the real byte
        count, or +1); ``position_ids`` only mark padding-free rows; with a non-empty ``cache``, the new bytes only."""
        cache = resolve_cache(cache, kwargs)
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("BLT needs input_ids (byte ids); inputs_embeds is not supported")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids must be byte ids in [0, {self.config.vocab_size}); got values in "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        # (not find_packed_sequence_indices: under torch.compile it never answers None, so every row looked packed)
        restarts = attention_mask is None and position_ids is not None and bool((position_ids.diff(dim=-1) != 1).any())
        packed = position_ids.expand_as(input_ids) if restarts else None  # padding-free rows
        if packed is not None and (bool(((packed != nn.functional.pad(packed[:, :-1] + 1, (1, 0))) & (packed != 0)).any())
                                   or use_cache or cache is not None or patch_lengths is not None):
            raise ValueError("padding-free packed rows (DataCollatorWithFlattening) need position_ids counting 0, 1, ... "
                             "in each document, use_cache=False and no patch_lengths")
        if cache is not None and not isinstance(cache, BLTCache):
            raise TypeError(f"the cache must be a BLTCache, got {type(cache).__name__}")
        if output_attentions:
            raise ValueError("BLT does not return attention weights (output_attentions=True): its attention runs over "
                             "three levels of different shapes; use output_hidden_states=True for per-stage states")
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if cache is not None and cache.num_bytes > 0:
            if output_hidden_states:
                raise ValueError("output_hidden_states=True is supported for the full forward only, not for cached "
                                 "incremental steps (call forward without a non-empty cache)")
            if patch_lengths is not None:
                raise ValueError("patch_lengths cannot be given for incremental steps (boundaries come from the cache)")
            if attention_mask is not None and not bool(attention_mask[:, -input_ids.shape[1]:].all()):
                raise ValueError("bytes fed over a filled cache must all be real (attention_mask 1): left padding belongs "
                                 "in the first chunk (generate: a prefill_chunk_size longer than the padding)")
            out = self._decode(input_ids.long(), cache)
        else:
            use_cache = use_cache if use_cache is not None else cache is not None
            cache = (cache or BLTCache(self.config)) if use_cache else None
            out = self._prefill(input_ids.long(), attention_mask, patch_lengths, cache, output_hidden_states, packed)
        return out if return_dict else out.to_tuple()

    def _prefill(self, input_ids, attention_mask, patch_lengths, cache, output_hidden_states, packed) -> BLTModelOutput:
        """The full forward over ``[B, N]`` bytes (training, scoring, a prompt, ``packed`` rows); fills ``cache``."""
        batch, length = input_ids.shape
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
        if attention_mask is not None:  # 0/1 values (a mask of 2s multiplied every id by 2), one run of ones per row
            check_padding(attention_mask, "use_cache=True needs left padding" if cache is not None else None)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        mask_2d = attention_mask if bool((attention_mask == 0).any()) else None
        c, ids = self.config, input_ids * attention_mask  # padding hashes like Meta's zero left-context
        eos = c.eos_token_id if c.document_mask else None
        rel = relative_positions(mask_2d, batch, length + 1, input_ids.device, ids, eos)  # [B, N + 1], per document
        rel = rel if packed is None else torch.cat([packed, packed[:, -1:] + 1], dim=1)  # (packed: positions decide)
        position_ids = rel[:, :length].clamp(min=0)
        docs = None if eos is None and packed is None else (rel[:, :length] == 0).long().cumsum(dim=1)  # of each byte
        kv = (cache.entropy, cache.encoder, cache.latent, cache.decoder) if cache is not None else (None,) * 4
        need_entropies = patch_lengths is None or cache is not None  # precomputed patches skip it unless cached
        entropies = self._entropies(ids, mask_2d, position_ids, kv[0], docs) if need_entropies else None
        if patch_lengths is None:
            starts = patch_starts(c.patching_mode, ids, entropies=entropies, max_patch_length=c.max_patch_length,
                                  attention_mask=mask_2d, eos_id=eos, positions=packed, **rule_settings(c))
        else:
            starts = starts_from_patch_lengths(patch_lengths.to(input_ids.device), length, mask_2d)
            if eos is not None and bool(((rel[:, :length] == 0) & ~starts[:, :length]).any()):
                raise ValueError("patch_lengths: a patch spans two documents (document_mask: each EOS ends a patch)")
        next_closed = None if packed is None else ((rel[:, 1:] == 0) & ~starts[:, 1:]).long()  # (see patch_starts)
        starts = starts if docs is None else starts | (rel == 0)  # each document opens a patch (EOS: its next byte)
        byte_states = self.local_encoder.run_layers(self.embed_bytes(ids, None if docs is None else position_ids),
                                                    mask_2d, position_ids, kv[1], docs)
        gather_index, gather_valid, decoder_patch_ids, num_patches = patch_layout(starts, mask_2d)
        decoder_patch_ids = decoder_patch_ids if next_closed is None else decoder_patch_ids - next_closed
        patch_vectors = self.local_encoder.patch_vectors(byte_states, gather_index, gather_valid)
        latent_positions = torch.arange(num_patches, device=input_ids.device).unsqueeze(0).expand(batch, -1)
        latent_docs = None if docs is None else docs.gather(1, gather_index[:, :, 0])  # the document of its first byte
        if docs is not None:  # latent positions count from the document's first patch
            new = torch.cat([torch.ones_like(latent_docs[:, :1]), latent_docs[:, 1:] - latent_docs[:, :-1]], 1) != 0
            latent_positions = latent_positions - torch.cummax(latent_positions * new, dim=1).values
        latent = self.global_transformer(patch_vectors, latent_positions, None, kv[2], latent_docs)
        hidden = self.local_decoder(byte_states, latent, decoder_patch_ids, mask_2d, position_ids, kv[3], docs)
        if cache is not None:
            cache.prefill(ids, attention_mask, byte_states, starts, entropies, latent, decoder_patch_ids, rel[:, -1])
        return BLTModelOutput(last_hidden_state=hidden, cache=cache, patch_starts=starts, entropies=entropies,
                              hidden_states=(byte_states, latent, hidden) if output_hidden_states else None)

    def _decode(self, input_ids: torch.LongTensor, cache: BLTCache) -> BLTModelOutput:
        """Feed new bytes ``[B, T]`` one at a time through the caches -> ``[B, T, D]``; patch_starts ``[B, T]`` says
        whether the byte after each one opens a patch."""
        hidden, starts, entropies = zip(*(self._decode_byte(input_ids[:, t], cache) for t in range(input_ids.shape[1])))
        return BLTModelOutput(last_hidden_state=torch.stack(hidden, dim=1), cache=cache,
                              patch_starts=torch.stack(starts, dim=1),
                              entropies=torch.stack(entropies, dim=1) if entropies[0] is not None else None)

    def _decode_byte(self, new_ids: torch.LongTensor, cache: BLTCache):
        """One byte per row ``[B]``: entropy model step, patch rule, encoder step; when a row's patch closes, one
        latent step; decoder step. Returns the decoder state ``[B, D]``, the rule's decision and the entropy ``[B]``."""
        position, mask_2d = cache.add_byte(new_ids)
        entropy = self._entropies(new_ids.view(-1, 1), mask_2d, position, cache.entropy)
        entropy = entropy[:, 0] if entropy is not None else None
        closing = cache.next_byte_opens_patch(entropy)
        window = max(self.config.encoder_hash_byte_group_size, default=1)  # the n-grams ending at the new byte
        embeds = self.embed_bytes((cache.byte_ids * cache.byte_mask)[:, -window:])[:, -1:]  # zeros: other documents
        state = self.local_encoder.run_layers(embeds, mask_2d, position, cache.encoder)
        cache.add_encoder_state(state)
        if bool(closing.any()):
            gather_index, gather_valid, latent_position, latent_mask = cache.close_patch(closing)
            vectors = self.local_encoder.patch_vectors(cache.encoder_states, gather_index, gather_valid)
            cache.read_latent(closing, self.global_transformer(vectors, latent_position, latent_mask, cache.latent)[:, 0])
        patch_ids = torch.zeros_like(position)  # the one latent state each row reads
        hidden = self.local_decoder(state, cache.decoder_patch.unsqueeze(1), patch_ids, mask_2d, position, cache.decoder)
        return hidden[:, 0], closing, entropy


class BLTForCausalLM(BLTPreTrainedModel, GenerationMixin):
    """BLT with the byte LM head (260 logits) and next-byte loss."""

    def __init__(self, config: BLTConfig):
        super().__init__(config)
        self.model = BLTModel(config)
        self.lm_head = nn.Linear(config.decoder_config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # BLTCache is created by forward

    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        patch_lengths: torch.Tensor | None = None, cache: BLTCache | None = None,
        inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
        use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
        position_ids: torch.LongTensor | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits ``[B, N, 260]`` (fp32); ``labels`` ``[B, N]`` (-100 ignored) give the shifted next-byte loss (nats;
        bits per byte = loss / ln 2)."""
        cache = resolve_cache(cache, kwargs)
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, patch_lengths=patch_lengths, cache=cache,
            use_cache=use_cache, inputs_embeds=inputs_embeds, position_ids=position_ids, return_dict=True,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep  # 0 keeps all
        logits = self.lm_head(outputs.last_hidden_state[:, keep]).float()
        loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     **{CACHE_NAME: outputs.cache})
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if return_dict else out.to_tuple()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, *args, **kwargs):
        impl = generation_config.cache_implementation  # (Transformers would only warn and ignore it)
        if impl not in (None, "dynamic"):
            raise ValueError(f"BLTForCausalLM.generate does not support cache_implementation={impl!r}: BLT keeps its "
                             "own BLTCache (byte- and patch-level caches with per-row patch state)")
        if generation_mode == "assisted_generation":  # (GenerationMode, a str enum; Transformers asks for a cache)
            raise ValueError("BLTForCausalLM.generate cannot do assisted decoding (assistant_model, prompt_lookup_num_"
                             "tokens): rejected draft bytes cannot be rolled back out of the patch-level BLTCache")
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, *args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, past_key_values=None, **kwargs):
        cache = resolve_cache(cache, {"past_key_values": past_key_values, **kwargs})  # (generate < 5.24 checks it)
        if cache is not None and 0 < cache.num_bytes < input_ids.shape[1]:  # (chunked prefill passes the chunk alone)
            input_ids = input_ids[:, cache.num_bytes :]
        elif attention_mask is not None and bool((attention_mask == 0).any()):
            # Transformers only warns; the result would be silently wrong, with or without the cache.
            check_padding(attention_mask, "BLTForCausalLM.generate needs left-padded prompts")
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, CACHE_NAME: cache}
        # Pass the other forward arguments through, except patch_lengths (generation decides boundaries itself).
        extra = {k: v for k, v in kwargs.items() if k not in inputs and v is not None and k != "patch_lengths"}
        return {**inputs, **extra}

    def save_pretrained_transformers(self, save_directory) -> None:
        """Write a folder Transformers' ``BltForCausalLM`` loads (model type ``blt``); needs the hf_efficient_lm package."""
        if self.transformers_blt_converter is None:
            raise ImportError("save_pretrained_transformers needs the hf_efficient_lm package: pip install hf-efficient-lm")
        self.transformers_blt_converter.export(self, save_directory)


__all__ = ["BLTModel", "BLTForCausalLM", "BLTPreTrainedModel", "BLTCache", "byte_ngram_hash_ids", "BLTCrossAttention"]
