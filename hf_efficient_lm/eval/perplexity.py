"""Perplexity and bits-per-byte of a causal LM on a text dataset.

Protocol: documents are tokenized, joined as ``BOS doc1 EOS doc2 EOS ...`` and cut into windows of ``block_size``
predicted tokens, each window seeing only its own tokens as context. Every document token and every EOS is predicted
exactly once, so the summed NLL covers all of the text's bytes. Bits-per-byte = summed NLL / ln 2 / UTF-8 bytes of the
documents; it compares models with different tokenizers, byte models included.

:func:`rows_nll` is the one loop under every perplexity / bits-per-byte figure of the package, its examples and
benchmarks: summed next-token NLL over rows of ids, with a hook for model-specific inputs (BLT patch lengths,
specialist cluster ids, SCONE f-gram matches, AnchorLlama anchor flags) and ids that are not scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.packing import check_vocab_fits, encode_documents


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


@dataclass
class NLLTotal:
    """Summed next-token NLL (nats) over ``tokens`` predicted tokens."""

    nats: float
    tokens: int

    @property
    def loss(self) -> float:
        """Mean NLL per predicted token (nats)."""
        return self.nats / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        """``exp(loss)``; ``inf`` for a diverged model (instead of an OverflowError)."""
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def bits_per_token(self) -> float:
        """``loss / ln 2``, bits per predicted token (for BLT rows that counts each EOS as a byte; bits per UTF-8 byte:
        ``hf_efficient_lm.tools.blt_data.rows_bits_per_byte``)."""
        return self.loss / math.log(2)


@torch.no_grad()
def rows_nll(
    model: PreTrainedModel,
    rows,
    *,
    batch_size: int = 8,
    model_inputs: Callable[[torch.Tensor, Sequence[int]], dict] | None = None,
    ignore_ids: Iterable[int] = (),
    show_progress: bool = False,
) -> NLLTotal:
    """Summed NLL of ``model`` predicting ``row[1:]`` from ``row[:-1]`` for every row of ids.

    Args:
        rows: a sequence of id rows (lists, 1-D arrays or tensors) or a ``[N, T]`` array / tensor. Rows may differ
            in length: batches hold rows of one length, so nothing is padded (a row alone or in a batch gets the
            same logits).
        model_inputs: ``model_inputs(ids, row_indices) -> dict`` of extra forward keyword arguments for the fed
            ids ``[b, T - 1]`` (the rows ``rows[row_indices]`` without their last id) (e.g. ``{"cluster_ids": ...}``, BLT
            ``{"patch_lengths": ...}``, AnchorLlama ``{"anchor_flags": ...}``).
        ignore_ids: target ids that are not scored (an inserted anchor token, say).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = [torch.as_tensor(row, dtype=torch.long).reshape(-1) for row in rows]
    short = next((i for i, row in enumerate(rows) if row.numel() < 2), None)
    if short is not None:
        raise ValueError(f"row {short} has {rows[short].numel()} ids; a row needs at least 2 (one to predict)")
    groups: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.numel(), []).append(index)
    batches = [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    ignored = torch.tensor(sorted(set(ignore_ids)), dtype=torch.long)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, tokens = 0.0, 0
    try:
        for indices in tqdm(batches, desc="evaluating", disable=not show_progress, unit="batch"):
            ids = torch.stack([rows[i] for i in indices]).to(device)
            # the last id is only a target: fed too, it would make a window one position longer than the block
            # (past max_position_embeddings at block_size == the limit; a length-scaled RoPE rescales every position)
            inputs = ids[:, :-1]
            extra = model_inputs(inputs, indices) if model_inputs is not None else {}
            logits = model(input_ids=inputs, use_cache=False, **extra).logits.float()
            targets = ids[:, 1:]
            if ignored.numel():
                targets = targets.masked_fill(torch.isin(targets, ignored.to(device)), -100)
            nats += float(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"))
            tokens += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return NLLTotal(nats, tokens)


def _token_stream(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> np.ndarray:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the evaluation protocol separates documents with EOS")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = encode_documents(tokenizer, texts)
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
    num_predicted = len(stream) - 1
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and min(block_size, num_predicted) > limit:
        raise ValueError(f"evaluation windows of {min(block_size, num_predicted)} tokens are longer than the model's "
                         f"max_position_embeddings ({limit}): positions beyond it were never trained; use a block_size "
                         f"of at most {limit}")
    # window w predicts stream[w*B+1 : (w+1)*B+1] from stream[w*B : (w+1)*B]: row w is stream[w*B : (w+1)*B+1]
    rows = [torch.from_numpy(stream[s : s + block_size + 1]) for s in range(0, num_predicted, block_size)]
    nll_sum = rows_nll(model, rows, batch_size=batch_size, show_progress=show_progress).nats
    loss = nll_sum / num_predicted
    return LMEvaluation(
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=nll_sum / math.log(2) / total_bytes,
        tokens=num_predicted,
        bytes=total_bytes,
        documents=len(texts),
    )
