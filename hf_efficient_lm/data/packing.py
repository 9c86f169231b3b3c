"""Packing documents into fixed-length blocks for causal-LM pretraining."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from .text_datasets import require_text_column


def check_vocab_fits(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
    """A tokenizer that emits ids the model has no embedding row for is an error, not an index crash later."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"tokenizer/model vocab mismatch: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocab_size is {vocab_size}; resize the model's embeddings or use the model's own tokenizer"
        )


def pack_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    *,
    text_column: str = "text",
    num_proc: int | None = None,
    desc: str = "Packing",
) -> Dataset:
    """Tokenize ``dataset[text_column]`` and pack it into blocks of exactly ``block_size`` ids.

    Each document is followed by EOS, so a block may hold the end of one document and the start of the next; the
    tail that does not fill a whole block is dropped (per map batch of 1000 documents). Returns a Dataset with
    ``input_ids`` and ``labels`` (equal; the model shifts) of length ``block_size``.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; packing needs one between documents")
    require_text_column(dataset, text_column)
    eos = tokenizer.eos_token_id

    def pack(batch):
        encoded = tokenizer(batch[text_column], add_special_tokens=False, verbose=False)["input_ids"]
        stream = np.fromiter(
            (i for ids in encoded for i in (*ids, eos)), dtype=np.int64, count=sum(len(x) + 1 for x in encoded)
        )
        usable = (len(stream) // block_size) * block_size
        blocks = stream[:usable].reshape(-1, block_size).tolist()
        return {"input_ids": blocks, "labels": blocks}

    return dataset.map(
        pack, batched=True, batch_size=1000, remove_columns=dataset.column_names, num_proc=num_proc, desc=desc
    )
