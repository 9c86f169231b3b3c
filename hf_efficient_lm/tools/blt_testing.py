"""Tiny BLT configs/models for tests, examples and benchmarks (nothing downloaded)."""

from __future__ import annotations

import torch

from ..blt.configuration_blt_lm import BLTConfig
from ..blt.modeling_blt_lm import BLTForCausalLM


def tiny_blt_config(hidden: int = 32, latent: int = 64, window: int = 16, **overrides) -> BLTConfig:
    """BLT with hidden-32 local models (1 encoder, 2 decoder layers), a 2-layer hidden-64 latent transformer, a
    2-layer entropy model, n-grams 3..5 in 97 buckets; keyword overrides win."""
    local = dict(hidden_size=hidden, num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * hidden,
                 max_position_embeddings=4096)
    kwargs = dict(
        encoder_config=dict(local, num_hidden_layers=1),
        decoder_config=dict(local, num_hidden_layers=2),
        global_config=dict(hidden_size=latent, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=2 * latent, num_hidden_layers=2, max_position_embeddings=4096),
        entropy_config=dict(hidden_size=hidden, num_attention_heads=4, intermediate_size=2 * hidden,
                            num_hidden_layers=2, sliding_window=window, max_position_embeddings=4096),
        encoder_hash_byte_group_size=[3, 4, 5],
        encoder_hash_byte_group_vocab=97,
        local_attention_window_len=window,
        patching_threshold=3.0,
    )
    kwargs.update(overrides)
    return BLTConfig(**kwargs)


def sharpen_entropy_model(model: BLTForCausalLM, scale: float = 40.0) -> BLTForCausalLM:
    """Scale the random entropy model's LM head so its entropies spread over ~0.5..5 nats (random init gives ~5.55
    everywhere), giving mixed patch sizes at threshold ~3 with wide margins (no boundary flips from rounding)."""
    if model.model.entropy_model is not None:
        with torch.no_grad():
            model.model.entropy_model.lm_head.weight.mul_(scale)
    return model


def make_tiny_blt(seed: int = 0, attn_implementation: str | None = None, **overrides) -> BLTForCausalLM:
    """A seeded random tiny ``BLTForCausalLM`` in eval mode with a sharpened entropy model."""
    torch.manual_seed(seed)
    calibrate = "patching_threshold" not in overrides
    config = tiny_blt_config(**overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    model = sharpen_entropy_model(BLTForCausalLM(config)).eval()
    if calibrate and config.patching_mode.startswith("entropy"):
        # entropy_combined: the global threshold at the 30% quantile, so that its patching_threshold_add also bites
        combined = config.patching_mode == "entropy_combined"
        model.config.patching_threshold = entropy_quantile_threshold(
            model, monotonic=config.patching_mode == "entropy_monotonic", quantile=0.3 if combined else 0.5)
    return model


@torch.no_grad()
def entropy_quantile_threshold(model: BLTForCausalLM, monotonic: bool = False, quantile: float = 0.5) -> float:
    """The ``quantile`` of the entropy model's entropies (or of their increments, for the monotonic rule) on random
    bytes: a threshold giving a mix of patch sizes."""
    entropies, _ = model.model.entropy_model.entropies(random_bytes(4, 64, torch.Generator().manual_seed(99)))
    values = entropies[:, 2:] - entropies[:, 1:-1] if monotonic else entropies[:, 1:]
    return float(values.float().quantile(quantile))


def random_bytes(batch: int, length: int, generator: torch.Generator | None = None) -> torch.LongTensor:
    """BOS followed by random printable-ish bytes (ids 36..130 = bytes 32..126), ``[batch, length]``."""
    ids = torch.randint(36, 131, (batch, length), generator=generator)
    ids[:, 0] = 1
    return ids
