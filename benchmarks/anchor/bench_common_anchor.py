"""Shared setup of the AnchorLlama benchmarks: corpus text, a tokenizer, and a Llama / AnchorLlama pair on the
same weights (the shared base checkpoint when it exists, else a random Llama of a given size: memory and time do not
depend on the weights' values)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hf_efficient_lm.anchor import AnchorLlamaConfig, AnchorLlamaForCausalLM, add_anchor_token, find_endpoint_token_ids
from hf_efficient_lm.data import cache_dir, corpus_dir, corpus_texts, train_tokenizer
from hf_efficient_lm.eval.benchmarking import benchmark_parser
from hf_efficient_lm.train import llama_config_from_preset

CORPUS = corpus_dir()
CACHE = cache_dir()
OUT_DIR = Path(__file__).resolve().parent / "results"


def anchor_parser(doc: str | None, size: str = "small") -> argparse.ArgumentParser:
    """The AnchorLlama benchmarks' parser: ``--threads`` and ``--size`` (the ``anchor-<size>`` shape of
    ``LLAMA_PRESETS``); parse it with ``hf_efficient_lm.eval.benchmarking.parse_benchmark_args``."""
    parser = benchmark_parser(doc)
    parser.add_argument("--size", default=size, choices=["tiny", "small", "medium"], help="Llama shape: the anchor-<size> preset")
    return parser


def setup_cpu(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_tokenizer():
    """The shared base's tokenizer if present, else a byte-level BPE (vocab 512) trained here on corpus text."""
    base = CACHE / "base"
    if (base / "config.json").exists():
        return AutoTokenizer.from_pretrained(base)
    texts = corpus_texts("pydocs", "train", 300) + corpus_texts("fortunes", "train", 100)
    return train_tokenizer(texts, 512, min_frequency=0, show_progress=False)


def llama_config(vocab_size: int, size: str = "small", max_positions: int = 8192) -> LlamaConfig:
    """``size``: tiny / small / medium, the ``anchor-*`` presets of ``hf_efficient_lm.train.LLAMA_PRESETS``."""
    return llama_config_from_preset(f"anchor-{size}", vocab_size=vocab_size, max_position_embeddings=max_positions)


def model_pair(tokenizer, anchor_token_ids, size: str = "small", dtype=torch.float32, seed: int = 0):
    """``(llama, anchor_llama)`` sharing one set of weights (random, seeded)."""
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(llama_config(len(tokenizer), size)).to(dtype).eval()
    config = AnchorLlamaConfig(**llama.config.to_dict(), anchor_token_ids=list(anchor_token_ids))
    anchor = AnchorLlamaForCausalLM(config).to(dtype).eval()
    anchor.load_state_dict(llama.state_dict())
    return llama, anchor


def ac_model_pair(tokenizer, size: str = "small", dtype=torch.float32):
    """Adds ``<AC>`` to (a copy of) the tokenizer; returns ``(tokenizer, llama, anchor_llama, ac_id)``."""
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    llama, anchor = model_pair(tokenizer, [], size, dtype)
    ac_id = add_anchor_token(anchor, tokenizer)
    llama.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return tokenizer, llama, anchor, ac_id


def ep_ids(tokenizer) -> list[int]:
    """EP anchors: tokens that are, or end with, ``.``, ``!`` or ``?`` (merged BPE pieces included)."""
    return find_endpoint_token_ids(tokenizer, endpoints=(".", "!", "?"), match="endswith")


def full_cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)


# ------------------------------------------------------------------------------- prompts of real corpus text
def paragraphs(domain: str, min_chars: int = 200, max_chars: int = 600) -> list[str]:
    out = []
    for text in corpus_texts(domain, "valid"):  # held-out text (the tokenizer fallback trains on "train")
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if min_chars <= len(para) <= max_chars and para.count(". ") >= 2:
                out.append(para)
    return out


def five_shot_prompts(n: int) -> list[str]:
    paras = paragraphs("pydocs") + paragraphs("kernel")
    return ["\n\n".join(paras[i * 6 : i * 6 + 6]) for i in range(n)]


def long_prompt(tokenizer, tokens: int, domain: str) -> str:
    parts = []
    for para in paragraphs(domain, 100, 4000):
        parts.append(para)
        if len(tokenizer.encode(" ".join(parts))) > tokens * 1.05:
            break
    return "\n\n".join(parts)
