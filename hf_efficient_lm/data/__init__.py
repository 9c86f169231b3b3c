"""Data: loading text datasets, training tokenizers, packing for causal-LM training."""

from .packing import check_vocab_fits, pack_dataset
from .text_datasets import iter_texts, load_text_dataset, local_path, read_texts, require_text_column
from .tokenizer_training import SPECIAL_TOKENS, tokenizer_digest, train_tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "check_vocab_fits",
    "iter_texts",
    "load_text_dataset",
    "local_path",
    "pack_dataset",
    "read_texts",
    "require_text_column",
    "tokenizer_digest",
    "train_tokenizer",
]
