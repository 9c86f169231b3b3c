"""Llama size presets: tiny for tests, ~5M / ~20M for CPU benchmarks, up to ~1B for GPUs.

Parameter counts in the comments assume the vocabulary each preset is meant for; the real count depends on the
tokenizer's vocabulary (``llama_config_from_preset`` takes it).
"""

from __future__ import annotations

from transformers import LlamaConfig

LLAMA_PRESETS: dict[str, dict] = {
    # ~30k params at vocab 512: the contract suite's and the demo's size
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
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
