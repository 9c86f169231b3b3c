"""Forward FLOPs per byte of BLT and of a token-level Llama (paper section 4.5 style: 2 FLOPs per multiply-add of
every matmul, embedding lookups free, attention over the causal / sliding context; training = 3x forward)."""

from __future__ import annotations


def _head_dim(config) -> int:
    # (the layers honour config.head_dim, which may differ from hidden / heads: it was read as hidden / heads)
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _block_matmul_params(config) -> int:
    """Matmul weights of one decoder layer of ``config``: q, o (heads x head_dim wide), k, v (kv heads), SwiGLU."""
    hidden, head_dim = config.hidden_size, _head_dim(config)
    attn = hidden * config.num_attention_heads * head_dim * 2 + hidden * config.num_key_value_heads * head_dim * 2
    return attn + 3 * hidden * config.intermediate_size


def _attention_flops(config, context: float) -> float:
    """QK^T and AV for one query over ``context`` keys, all layers of ``config``."""
    return 2 * 2 * config.num_attention_heads * _head_dim(config) * context * config.num_hidden_layers


def mean_context(length: float, window: int | None = None) -> float:
    """Keys a query attends to on average over a causal row of ``length`` positions: ``(length + 1) / 2``, or under a
    sliding ``window`` (itself and ``window - 1`` before it) ``sum_t min(t, window) / length``."""
    if not window or length <= window:
        return (length + 1) / 2
    return (window * (window + 1) / 2 + (length - window) * window) / length


def llama_flops_per_token(config, context: int) -> float:
    """Forward FLOPs per token of a LlamaConfig over rows of ``context`` tokens (mean causal context)."""
    return (2 * _block_matmul_params(config) * config.num_hidden_layers + 2 * config.hidden_size * config.vocab_size
            + _attention_flops(config, mean_context(context)))


def blt_flops_per_byte(config, mean_patch_size: float, context_bytes: int, include_entropy_model: bool = True) -> dict:
    """Forward FLOPs per byte of each BLT component at ``mean_patch_size`` bytes per patch and ``context_bytes``.

    Returns ``{"entropy_model", "local_encoder", "latent", "local_decoder", "total"}``.
    """
    if mean_patch_size <= 0:
        raise ValueError(f"mean_patch_size must be positive, got {mean_patch_size}")
    e, enc, dec, g, k = config.entropy_config, config.encoder_config, config.decoder_config, config.global_config, config.cross_attn_k

    def local_ctx(window):  # (was min(N / 2, window): 256 keys for a 256-byte window over 512 bytes, not 192.25)
        return mean_context(context_bytes, window)

    out = {}
    if include_entropy_model and config.patching_mode.startswith("entropy"):
        out["entropy_model"] = (2 * _block_matmul_params(e) * e.num_hidden_layers + 2 * e.hidden_size * e.vocab_size
                                + _attention_flops(e, local_ctx(e.sliding_window)))
    else:
        out["entropy_model"] = 0.0
    # The patch cross-attention: k queries per patch (pooled bytes projected to k * D, then q and o projections)
    # attend to the patch's bytes, whose k and v projections run once per byte.
    d_enc, kv_dim = enc.hidden_size, enc.num_key_value_heads * (enc.hidden_size // enc.num_attention_heads)
    out["local_encoder"] = (
        2 * _block_matmul_params(enc) * enc.num_hidden_layers
        + _attention_flops(enc, local_ctx(config.local_attention_window_len))
        + (2 * d_enc * d_enc * k + 2 * 2 * d_enc * d_enc * k) / mean_patch_size  # per patch: projection, q and o
        + 2 * 2 * d_enc * kv_dim  # per byte: k and v
        + 2 * 2 * d_enc * k  # per byte: each of the patch's k queries scores and mixes it
    )
    latent_in = config.latent_input_size
    per_patch = (2 * _block_matmul_params(g) * g.num_hidden_layers
                 + _attention_flops(g, mean_context(context_bytes / mean_patch_size)))
    if latent_in != g.hidden_size:
        per_patch += 2 * latent_in * g.hidden_size
    out["latent"] = per_patch / mean_patch_size
    n_cross = dec.num_hidden_layers if dec.cross_attn_all_layers else 1
    dec_kv_dim = dec.num_key_value_heads * (dec.hidden_size // dec.num_attention_heads)
    out["local_decoder"] = (
        2 * _block_matmul_params(dec) * dec.num_hidden_layers
        + _attention_flops(dec, local_ctx(config.local_attention_window_len))
        + n_cross * (2 * 2 * dec.hidden_size * dec.hidden_size + 2 * 2 * dec.hidden_size * k)  # q, o + k keys
        # per patch: its k slices of the latent state, then their k and v projections in each cross layer
        + (2 * g.hidden_size * dec.hidden_size * k + n_cross * 2 * 2 * dec.hidden_size * dec_kv_dim * k) / mean_patch_size
        + 2 * dec.hidden_size * config.vocab_size
    )
    out["total"] = sum(out.values())
    return out


__all__ = ["blt_flops_per_byte", "llama_flops_per_token", "mean_context"]
