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


def token_byte_counts(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """``[len(tokenizer)]`` UTF-8 bytes each token id adds to the text (special tokens 0, an added token its text).

    Byte-level BPE (GPT-2's alphabet, ``data.train_tokenizer``'s): each character of a token is one byte, so a token
    holding part of a multi-byte character counts its own bytes. ``BLTTokenizer``: one byte per byte id. Otherwise
    (SentencePiece, word-level, ...): the UTF-8 length of the text the token adds after another token (SentencePiece's
    ``▁`` is its space), a byte-fallback piece ``<0xNN>`` one byte.
    """
    from tokenizers import decoders
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from ..blt.tokenization_blt_lm import BYTE_OFFSET, BLTTokenizer
    from ..data.tokenizer_training import surface_texts

    special, added = set(tokenizer.all_special_ids), tokenizer.added_tokens_decoder
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(tokenizer, BLTTokenizer):
        counts[BYTE_OFFSET:] = 1
    elif backend is not None and isinstance(backend.decoder, decoders.ByteLevel):
        alphabet = set(bytes_to_unicode().values())
        for token, token_id in tokenizer.get_vocab().items():
            counts[token_id] = len(token) if set(token) <= alphabet else len(token.encode("utf-8"))
    else:
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        for token_id, (piece, text) in enumerate(zip(pieces, surface_texts(tokenizer))):
            fallback = isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
            counts[token_id] = 1 if fallback else len(text.encode("utf-8"))
    for token_id, token in added.items():  # literal text, not spelled in the alphabet
        # special ones (<AC> added with special_tokens=True, not in all_special_ids) are no text: 0 bytes, as
        # decode(skip_special_tokens=True) counts them
        counts[token_id] = 0 if token_id in special or token.special else len(token.content.encode("utf-8"))
    counts[[i for i in special if 0 <= i < len(counts)]] = 0
    return counts


def document_prefix_bytes(tokenizer: PreTrainedTokenizerBase, counts: np.ndarray) -> int:
    """Bytes a document's first token carries that are not in the text: SentencePiece's dummy prefix ``▁`` and
    byte-level BPE's ``add_prefix_space`` ``Ġ`` (1), else 0. Read off how the tokenizer encodes ``"a"``."""
    ids = tokenizer.encode("a", add_special_tokens=False)
    return max(0, int(counts[ids].sum()) - 1) if ids else 0


def make_compute_metrics(tokenizer: PreTrainedTokenizerBase):
    """``compute_metrics`` for a Trainer using ``token_nll_for_metrics``: loss, perplexity and bits-per-byte.

    Bytes are each predicted token's own bytes (:func:`token_byte_counts`), so a block that starts or ends inside a
    multi-byte character, or inside a word, counts exactly its bytes. A token right after BOS / EOS opens a document
    (the packing protocol of ``data.pack_dataset``): its dummy prefix (:func:`document_prefix_bytes`) is no text and is
    not counted (a document that itself begins with a space is then counted one byte short).
    """
    import evaluate

    metric = evaluate.load(lm_bits_per_byte_path())
    byte_counts = token_byte_counts(tokenizer)
    prefix = document_prefix_bytes(tokenizer, byte_counts)
    boundaries = [i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None]

    def compute_metrics(prediction: EvalPrediction) -> dict:
        nll, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        predicted = np.zeros_like(labels, dtype=bool)
        predicted[:, 1:] = labels[:, 1:] != -100  # token t is predicted at position t-1
        for row in range(labels.shape[0]):
            where = predicted[row].nonzero()[0]
            ids = labels[row][where]
            num_bytes = int(byte_counts[ids].sum())
            if prefix:
                opens = np.isin(labels[row][where - 1], boundaries) & (byte_counts[ids] >= prefix)
                num_bytes -= prefix * int(opens.sum())
            metric.add(nll_sum=float(nll[row][:-1][predicted[row][1:]].sum()), num_tokens=len(ids), num_bytes=num_bytes)
        return metric.compute()

    return compute_metrics
