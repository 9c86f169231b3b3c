"""Data: loading text datasets, training tokenizers, packing for causal-LM training."""

from .noise import NOISE_KINDS, noise_text, noise_texts
from .packing import check_vocab_fits, encode_documents, pack_dataset, pack_ids
from .text_datasets import (
    CORPUS_DOMAINS,
    cache_dir,
    corpus_dir,
    corpus_texts,
    iter_texts,
    load_text_dataset,
    local_path,
    read_texts,
    require_text_column,
)
from .tokenizer_training import SPECIAL_TOKENS, tokenizer_digest, train_tokenizer

__all__ = [
    "CORPUS_DOMAINS",
    "NOISE_KINDS",
    "SPECIAL_TOKENS",
    "cache_dir",
    "corpus_dir",
    "corpus_texts",
    "check_vocab_fits",
    "encode_documents",
    "iter_texts",
    "load_text_dataset",
    "noise_text",
    "noise_texts",
    "local_path",
    "pack_dataset",
    "pack_ids",
    "read_texts",
    "require_text_column",
    "tokenizer_digest",
    "train_tokenizer",
]
