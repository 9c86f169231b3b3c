"""Perplexity and bits-per-byte of a causal LM on a text dataset.

Protocol: documents are tokenized, joined as ``BOS doc1 EOS doc2 EOS ...`` and cut into windows of ``block_size``
predicted tokens, each window seeing only its own tokens as context. Every document token and every EOS is predicted
exactly once, so the summed NLL covers all of the text's bytes. Bits-per-byte = summed NLL / ln 2 / UTF-8 bytes of the
documents; it compares models with different tokenizers, byte models included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.packing import check_vocab_fits


@dataclass
class LMEvaluation:
    loss: float  # mean NLL per predicted token, nats
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int
    documents: int

    def as_dict(self) -> dict:
        return asdict(self)


def _token_stream(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> np.ndarray:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the evaluation protocol separates documents with EOS")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    pieces = [np.array([start], dtype=np.int64)]
    for ids in encoded:
        pieces.append(np.asarray(ids, dtype=np.int64))
        pieces.append(np.array([tokenizer.eos_token_id], dtype=np.int64))
    return np.concatenate(pieces)


@torch.no_grad()
def evaluate_causal_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    *,
    block_size: int = 256,
    batch_size: int = 8,
    show_progress: bool = True,
) -> LMEvaluation:
    """Perplexity and bits-per-byte of ``model`` on ``texts`` (see the module docstring for the protocol)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a list of documents, got a single string (it would be read character by "
                        "character); pass [text]")
    for name, value in (("block_size", block_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts must hold strings, got a {type(bad).__name__}: {bad!r:.60}")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no non-empty texts to evaluate on")
    check_vocab_fits(tokenizer, model.config.vocab_size)
    stream = _token_stream(tokenizer, texts)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    # window w predicts stream[w*B+1 : (w+1)*B+1] from inputs stream[w*B : (w+1)*B]
    num_predicted = len(stream) - 1
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and min(block_size, num_predicted) > limit:
        raise ValueError(f"evaluation windows of {min(block_size, num_predicted)} tokens are longer than the model's "
                         f"max_position_embeddings ({limit}): positions beyond it were never trained; use a block_size "
                         f"of at most {limit}")
    starts = list(range(0, num_predicted, block_size))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll_sum = 0.0
    batches = range(0, len(starts), batch_size)
    for first in tqdm(batches, desc="evaluating", disable=not show_progress, unit="batch"):
        windows = starts[first : first + batch_size]
        length = max(min(block_size, num_predicted - s) for s in windows)
        inputs = torch.zeros(len(windows), length, dtype=torch.long)
        targets = torch.full((len(windows), length), -100, dtype=torch.long)
        mask = torch.zeros(len(windows), length, dtype=torch.long)
        for row, s in enumerate(windows):
            n = min(block_size, num_predicted - s)
            inputs[row, :n] = torch.from_numpy(stream[s : s + n])
            targets[row, :n] = torch.from_numpy(stream[s + 1 : s + n + 1])
            mask[row, :n] = 1
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets.to(device), ignore_index=-100, reduction="sum")
        nll_sum += nll.item()
    model.train(was_training)
    loss = nll_sum / num_predicted
    return LMEvaluation(
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=nll_sum / math.log(2) / total_bytes,
        tokens=num_predicted,
        bytes=total_bytes,
        documents=len(texts),
    )
