"""Packing documents into fixed-length blocks for causal-LM pretraining."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def encode_documents(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each document, no BOS/EOS added, and text is text: a literal ``"</s>"`` or ``"<|endoftext|>"`` in
    a document is spelled in ordinary tokens, never turned into a special id (which training would take for a
    document boundary and bits-per-byte would score as a zero-byte token). The one tokenization of documents for
    training, mining and evaluation."""
    texts = list(texts)
    if not texts:  # (the tokenizer raises an IndexError on an empty batch)
        return []
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]


def pack_ids(
    sequences: Iterable[Sequence[int]],
    block_size: int,
    *,
    separator: int | None = None,
    row_prefix: int | None = None,
    drop_remainder: bool = True,
) -> np.ndarray | list[np.ndarray]:
    """Concatenate id sequences (``separator`` after each, e.g. EOS) and cut them into rows of ``block_size`` ids.

    The one packer of the package: ``pack_dataset``, the specialists' blocks, the SCONE and BLT benchmarks use it.
    ``row_prefix`` (e.g. BOS) opens every row, which then holds ``block_size - 1`` stream ids. Returns an int64
    array ``[rows, block_size]``; with ``drop_remainder=False`` a list of rows whose last one may be shorter.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    tail = () if separator is None else (separator,)
    pieces = [np.asarray([*seq, *tail] if tail else seq, dtype=np.int64).reshape(-1) for seq in sequences]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    step = block_size - (row_prefix is not None)
    usable = len(stream) // step * step
    rows = stream[:usable].reshape(-1, step)
    if row_prefix is not None:
        rows = np.concatenate([np.full((rows.shape[0], 1), row_prefix, dtype=np.int64), rows], axis=1)
    if drop_remainder:
        return rows
    rest = stream[usable:]
    last = [np.concatenate([[row_prefix], rest]) if row_prefix is not None else rest] if rest.size else []
    return list(rows) + last


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
        blocks = pack_ids(encode_documents(tokenizer, batch[text_column]), block_size, separator=eos).tolist()
        return {"input_ids": blocks, "labels": blocks}

    return dataset.map(
        pack, batched=True, batch_size=1000, remove_columns=dataset.column_names, num_proc=num_proc, desc=desc
    )
