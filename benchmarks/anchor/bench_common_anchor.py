"""Shared setup of the AnchorLlama benchmarks: corpus text, a tokenizer, and a Llama / AnchorLlama pair on the
same weights (the shared base checkpoint when it exists, else a random Llama of a given size: memory and time do not
depend on the weights' values)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hf_efficient_lm.anchor import AnchorLlamaConfig, AnchorLlamaForCausalLM, add_anchor_token, find_endpoint_token_ids

CORPUS = Path(os.environ.get("HFELM_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus"))
CACHE = Path(os.environ.get("HFELM_CACHE", Path.home() / ".cache" / "hf_efficient_lm"))
OUT_DIR = Path(__file__).resolve().parent / "results"


def setup_cpu(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def corpus_texts(domain: str, split: str = "valid", limit: int | None = None) -> list[str]:
    path = CORPUS / f"{domain}.{split}.jsonl.gz"
    if not path.exists():
        sys.exit(f"corpus file {path} not found (set HFELM_CORPUS)")
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            if limit is not None and len(texts) >= limit:
                break
    return texts


def load_tokenizer():
    """The shared base's tokenizer if present, else a byte-level BPE (vocab 512) trained here on corpus text."""
    base = CACHE / "base"
    if (base / "config.json").exists():
        return AutoTokenizer.from_pretrained(base)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = corpus_texts("pydocs", "train", 300) + corpus_texts("fortunes", "train", 100)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        clean_up_tokenization_spaces=False,
    )


def llama_config(vocab_size: int, size: str = "small", max_positions: int = 8192) -> LlamaConfig:
    dims = {
        "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
        "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=4),
        "medium": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=8),
    }[size]
    return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max_positions, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0, **dims)


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
