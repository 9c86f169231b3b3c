"""Bits-per-byte and perplexity inside ``Trainer.evaluate`` via the local `evaluate` metric module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, PreTrainedTokenizerBase


def lm_bits_per_byte_path() -> str:
    """Local path of the ``lm_bits_per_byte`` metric module, for ``evaluate.load`` (works offline)."""
    return str(Path(__file__).parent / "metrics" / "lm_bits_per_byte")


def token_nll_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: reduce logits [B, T, V] to next-token NLL [B, T] (0 where unlabelled).

    Keeps the Trainer from accumulating full-vocabulary logits for the whole eval set.
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    shifted_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    nll = F.cross_entropy(logits.float().transpose(1, 2), shifted_labels, ignore_index=-100, reduction="none")
    return nll


def token_byte_counts(tokenizer: PreTrainedTokenizerBase) -> np.ndarray | None:
    """``[len(tokenizer)]`` UTF-8 bytes each token id stands for (special tokens 0) for a byte-level BPE tokenizer
    (GPT-2's alphabet, ``data.train_tokenizer``'s): each character of a token is one byte, so a token that holds part
    of a multi-byte character still counts its own bytes. ``None`` for other tokenizers."""
    from tokenizers import decoders
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    alphabet, special, added = set(bytes_to_unicode().values()), set(tokenizer.all_special_ids), tokenizer.added_tokens_decoder
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in added:  # an added token is literal text, not spelled in the byte alphabet
            # special ones (<AC> added with special_tokens=True, not in all_special_ids) are no text: 0 bytes, as
            # decode(skip_special_tokens=True) counts them
            is_special = token_id in special or added[token_id].special
            counts[token_id] = 0 if is_special else len(added[token_id].content.encode("utf-8"))
        elif set(token) <= alphabet:
            counts[token_id] = len(token)
        else:
            return None
    return counts


def make_compute_metrics(tokenizer: PreTrainedTokenizerBase):
    """``compute_metrics`` for a Trainer using ``token_nll_for_metrics``: loss, perplexity and bits-per-byte.

    Bytes are each predicted token's own bytes (:func:`token_byte_counts`) for a byte-level BPE tokenizer, so a
    block that starts or ends inside a multi-byte character counts exactly its bytes; for other tokenizers, the
    UTF-8 length of the decoded tokens (exact where blocks end between characters). Special tokens count zero bytes.
    """
    import evaluate

    metric = evaluate.load(lm_bits_per_byte_path())
    byte_counts = token_byte_counts(tokenizer)

    def num_bytes(ids: list[int]) -> int:
        if byte_counts is not None:
            return int(byte_counts[ids].sum())
        return len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))

    def compute_metrics(prediction: EvalPrediction) -> dict:
        nll, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        predicted = np.zeros_like(labels, dtype=bool)
        predicted[:, 1:] = labels[:, 1:] != -100  # token t is predicted at position t-1
        for row in range(labels.shape[0]):
            ids = labels[row][predicted[row]].tolist()
            metric.add(
                nll_sum=float(nll[row][:-1][predicted[row][1:]].sum()),
                num_tokens=len(ids),
                num_bytes=num_bytes(ids),
            )
        return metric.compute()

    return compute_metrics
