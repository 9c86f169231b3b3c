"""Tiny checkpoints for tests, examples and contract cases (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .train.presets import TINY_LLAMA_KWARGS


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-layer, hidden-32 Llama config (GQA 4 heads / 2 kv heads); keyword overrides win."""
    return LlamaConfig(**{**TINY_LLAMA_KWARGS, **overrides})


def make_tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A seeded random tiny ``LlamaForCausalLM`` in eval mode."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def save_tiny_llama(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny Llama checkpoint to ``path`` (as a user's downloaded checkpoint would look) and return it."""
    path = Path(path)
    make_tiny_llama(seed, **overrides).save_pretrained(path)
    return path
