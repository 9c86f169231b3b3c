"""Size presets, in one table: Llama sizes (tiny for tests, ~5M / ~20M for CPU benchmarks, up to ~1B for GPUs),
the AnchorLlama benchmarks' shapes, and BLT's sizes (ours and the Transformers reference ``BltConfig``).

Parameter counts in the comments assume the vocabulary each preset is meant for; the real count depends on the
tokenizer's vocabulary (``llama_config_from_preset`` takes it).
"""

from __future__ import annotations

from transformers import LlamaConfig

LLAMA_PRESETS: dict[str, dict] = {
    # ~51k params at vocab 512 (19k non-embedding): the contract suite's and the demo's size
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    # ~0.2M / ~0.45M non-embedding (0.73M / 1.2M at vocab 4096): the small end of the BLT scaling ladder
    # (benchmarks/blt/bench_scaling_blt.py pairs 200k, 450k, 1m with BLT_PRESETS scale-64, scale-96, scale-128)
    "200k": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "450k": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    # ~1.3M at vocab 2048: quick CPU experiments
    "1m": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    # ~5.4M at vocab 4096: the shared CPU baseline (benchmarks/make_base.py)
    "5m": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    # ~20M at vocab 8192
    "20m": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=6),
    # GPU presets
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12),
    "350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
    # the AnchorLlama benchmarks' shapes (more heads than the presets above: KV-cache figures depend on them)
    "anchor-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2),
    "anchor-small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4),
    "anchor-medium": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                          num_key_value_heads=8),
}

# The tiny checkpoint of tests, examples and contract cases (hf_efficient_lm.testing_utils builds it).
TINY_LLAMA_KWARGS = dict(**LLAMA_PRESETS["tiny"], vocab_size=128, max_position_embeddings=256, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)

# BLT sizes: byte-level local encoder/decoder width, latent (patch) transformer width and depth, local attention
# window, hash-embedding buckets. "small" is the CPU size of examples/train_blt.py and the BLT benchmarks.
BLT_PRESETS: dict[str, dict] = {
    "small": dict(local=128, latent=256, latent_layers=4, decoder_layers=3, window=256, hash_buckets=8191),
    # The scaling ladder of benchmarks/blt/bench_scaling_blt.py: one small local model (64 wide, 1 encoder and 2
    # decoder layers) and a latent transformer of the shape of the paired Llama preset (200k, 450k, 1m), which it
    # runs once per patch instead of once per token.
    "scale-64": dict(local=64, latent=64, latent_layers=4, decoder_layers=2, window=256, hash_buckets=4099),
    "scale-96": dict(local=64, latent=96, latent_layers=4, decoder_layers=2, window=256, hash_buckets=4099),
    "scale-128": dict(local=64, latent=128, latent_layers=4, decoder_layers=2, window=256, hash_buckets=4099),
    # scale-128 with a wider latent for larger patches at the same inference FLOPs per byte (latent FLOPs/byte
    # ~ width^2 / patch size): ~6 and ~8 bytes per patch instead of ~4.5
    "scale-128-ps6": dict(local=64, latent=152, latent_layers=4, decoder_layers=2, window=256, hash_buckets=4099),
    "scale-128-ps8": dict(local=64, latent=168, latent_layers=4, decoder_layers=2, window=256, hash_buckets=4099),
}


def llama_config_from_preset(
    preset: str, *, vocab_size: int, max_position_embeddings: int = 2048, bos_token_id: int | None = 1,
    eos_token_id: int | None = 2, pad_token_id: int | None = 0, **overrides,
) -> LlamaConfig:
    """A ``LlamaConfig`` for ``preset`` (see ``LLAMA_PRESETS``) with the tokenizer's vocabulary and special ids."""
    if preset not in LLAMA_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(LLAMA_PRESETS)}")
    return LlamaConfig(
        **LLAMA_PRESETS[preset],
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
        **overrides,
    )


def blt_config_for(entropy_model=None, *, preset: str = "small", threshold: float = 0.0, mode: str = "space",
                   threshold_add: float | None = None, document_mask: bool = False, **sizes):
    """A ``BLTConfig`` of ``preset`` (see ``BLT_PRESETS``; keyword sizes override it) patching with ``mode`` at
    ``threshold`` (and ``threshold_add`` for ``entropy_combined``), with ``document_mask``; with a trained
    ``BLTEntropyModel`` its config becomes the patcher's."""
    from ..blt import BLTConfig

    if preset not in BLT_PRESETS:
        raise ValueError(f"unknown BLT preset {preset!r}; choose one of {sorted(BLT_PRESETS)}")
    unknown = sorted(set(sizes) - set(BLT_PRESETS[preset]))
    if unknown:
        raise ValueError(f"unknown BLT size option(s) {unknown}; known: {sorted(BLT_PRESETS[preset])}")
    size = {**BLT_PRESETS[preset], **sizes}
    local = dict(hidden_size=size["local"], num_attention_heads=4, intermediate_size=int(8 * size["local"] / 3))
    kwargs = dict(
        encoder_config=dict(local, num_hidden_layers=1),
        decoder_config=dict(local, num_hidden_layers=size["decoder_layers"]),
        global_config=dict(hidden_size=size["latent"], num_attention_heads=4,
                           intermediate_size=int(8 * size["latent"] / 3), num_hidden_layers=size["latent_layers"]),
        local_attention_window_len=size["window"], encoder_hash_byte_group_vocab=size["hash_buckets"],
        patching_mode=mode, patching_threshold=threshold, patching_threshold_add=threshold_add,
        document_mask=document_mask,
    )
    if entropy_model is not None:
        kwargs["entropy_config"] = entropy_model.config.to_dict()
    return BLTConfig(**kwargs)


def transformers_blt_kwargs(local: int = 128, latent: int = 256, latent_layers: int = 4, window: int = 512) -> dict:
    """Keyword arguments of a scaled-down Transformers ``BltConfig`` (the shape of BLT-1B: 1 encoder layer,
    cross-attention k=2, hash n=3..8), the reference the BLT benchmarks compare against."""
    loc = dict(hidden_size=local, num_attention_heads=4, intermediate_size=int(8 * local / 3), cross_attn_k=2,
               hidden_size_global=latent)
    return dict(
        vocab_size=260, patch_in_forward=True, encoder_hash_byte_group_size=[3, 4, 5, 6, 7, 8],
        encoder_hash_byte_group_vocab=4099, local_attention_window_len=window, cross_attn_k=2,
        patcher_config=dict(hidden_size=local, num_attention_heads=4, intermediate_size=int(8 * local / 3),
                            num_hidden_layers=2, sliding_window=window),
        encoder_config=dict(loc, num_hidden_layers=1, cross_attn_all_layers=False),
        decoder_config=dict(loc, num_hidden_layers=3),
        global_config=dict(hidden_size=latent, num_attention_heads=4, intermediate_size=int(8 * latent / 3),
                           num_hidden_layers=latent_layers),
        use_cache=False,
    )
