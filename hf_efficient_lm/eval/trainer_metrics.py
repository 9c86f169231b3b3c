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


def make_compute_metrics(tokenizer: PreTrainedTokenizerBase):
    """``compute_metrics`` for a Trainer using ``token_nll_for_metrics``: loss, perplexity and bits-per-byte.

    Bytes are counted by decoding each example's predicted label tokens, so the figure is exact for byte-level
    tokenizers (special tokens count zero bytes).
    """
    import evaluate

    metric = evaluate.load(lm_bits_per_byte_path())

    def compute_metrics(prediction: EvalPrediction) -> dict:
        nll, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        predicted = np.zeros_like(labels, dtype=bool)
        predicted[:, 1:] = labels[:, 1:] != -100  # token t is predicted at position t-1
        for row in range(labels.shape[0]):
            ids = labels[row][predicted[row]].tolist()
            metric.add(
                nll_sum=float(nll[row][:-1][predicted[row][1:]].sum()),
                num_tokens=len(ids),
                num_bytes=len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8")),
            )
        return metric.compute()

    return compute_metrics
