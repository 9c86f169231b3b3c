"""Shared pieces of the BLT benchmarks: corpus bytes and a small random Transformers Blt with calibrated threshold."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import torch

CORPUS = Path(os.environ.get("HFELM_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus"))
DOMAINS = ("pydocs", "kernel", "code", "dictionary", "fortunes")


def corpus_texts(domain: str = "pydocs", split: str = "valid", limit: int | None = None) -> list[str]:
    path = CORPUS / f"{domain}.{split}.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; set HFELM_CORPUS to the corpus folder")
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if limit is not None and len(texts) >= limit:
                break
    return texts


def corpus_bytes(num_bytes: int, domain: str = "pydocs", split: str = "valid", offset: int = 0) -> torch.LongTensor:
    """``[1, num_bytes]`` ids: BOS then the corpus bytes (+4)."""
    data = "\n".join(corpus_texts(domain, split, limit=200)).encode("utf-8")[offset : offset + num_bytes - 1]
    return torch.tensor([[1] + [b + 4 for b in data]])


def small_blt_kwargs(local: int = 128, latent: int = 256, latent_layers: int = 4, window: int = 512) -> dict:
    """A scaled-down BLT layout (same shape as BLT-1B: 1 encoder layer, cross-attention k=2, hash n=3..8)."""
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


@torch.no_grad()
def make_transformers_blt(sample: torch.LongTensor, target_patch_size: float = 4.5, seed: int = 0, **kw):
    """Random Transformers ``BltForCausalLM`` whose threshold gives ~``target_patch_size`` bytes/patch on ``sample``."""
    from transformers import BltConfig, BltForCausalLM

    torch.manual_seed(seed)
    config = BltConfig(**small_blt_kwargs(**kw))
    config.num_hidden_layers = config.global_config.num_hidden_layers  # 5.23 generate() needs it
    model = BltForCausalLM(config).eval()
    with torch.no_grad():
        model.model.patcher.lm_head.weight.mul_(20.0)  # spread the random patcher's entropies
    entropies, _, _ = model.model.patcher(sample)
    model.config.patching_threshold = float(entropies[0, 1:].float().quantile(1 - 1 / target_patch_size))
    return model
