"""Shared by the BLT benchmarks (run as scripts from this folder): corpus bytes; the reference Transformers Blt is
``hf_efficient_lm.tools.blt_reference.make_transformers_blt``."""

from __future__ import annotations

import torch

from hf_efficient_lm.data import corpus_texts
from hf_efficient_lm.tools.blt_reference import make_transformers_blt  # noqa: F401  (the benchmarks' import)


def corpus_bytes(num_bytes: int, domain: str = "pydocs", split: str = "valid", offset: int = 0) -> torch.LongTensor:
    """``[1, num_bytes]`` ids: BOS then the corpus bytes (+4)."""
    data = "\n".join(corpus_texts(domain, split, limit=200)).encode("utf-8")[offset : offset + num_bytes - 1]
    return torch.tensor([[1] + [b + 4 for b in data]])
