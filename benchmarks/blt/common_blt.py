"""Shared by the BLT benchmarks (run as scripts from this folder): corpus bytes, and the reference Transformers Blt
(``hf_efficient_lm.tools.blt_reference.make_transformers_blt``) at the sizes given on the command line."""

from __future__ import annotations

import argparse

import torch

from hf_efficient_lm.data import corpus_texts
from hf_efficient_lm.tools.blt_reference import make_transformers_blt
from hf_efficient_lm.tools.blt_training import add_blt_size_options, parsed_blt_sizes

# the sizes the reference Transformers Blt takes (``transformers_blt_kwargs``); the rest of its shape is BLT-1B's
REFERENCE_SIZE_KEYS = ("local", "latent", "latent_layers")


def corpus_bytes(num_bytes: int, domain: str = "pydocs", split: str = "valid", offset: int = 0) -> torch.LongTensor:
    """``[1, num_bytes]`` ids: BOS then the corpus bytes (+4)."""
    data = "\n".join(corpus_texts(domain, split, limit=200)).encode("utf-8")[offset : offset + num_bytes - 1]
    return torch.tensor([[1] + [b + 4 for b in data]])


def add_reference_size_options(parser: argparse.ArgumentParser) -> None:
    """``--local-hidden --latent-hidden --latent-layers`` of the reference model (defaults: ``BLT_PRESETS["small"]``)."""
    add_blt_size_options(parser, keys=REFERENCE_SIZE_KEYS)


def reference_blt(sample: torch.LongTensor, args: argparse.Namespace):
    """The random reference ``BltForCausalLM`` at the parsed sizes, its threshold set for ~4.5 bytes/patch on
    ``sample``; the benchmarks load the same weights into ``BLTForCausalLM``."""
    return make_transformers_blt(sample, **parsed_blt_sizes(args))
