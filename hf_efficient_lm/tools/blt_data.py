"""Byte data pipeline for BLT: pack texts into byte rows (or keep one document per row), precompute patch lengths as a
dataset column (so training does not run the entropy model each step), calibrate the entropy threshold to a target
patch size, collate (right-padding rows of different lengths). Also the per-mode patching helpers and patch lengths
from a start mask (the model itself needs only ``patcher_blt``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..blt.modeling_blt_entropy import BLTEntropyModel
from ..blt.patcher_blt import patch_starts
from ..blt.tokenization_blt_lm import BOE_ID, BOS_ID, BYTE_OFFSET, EOS_ID


def text_to_ids(text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
    """UTF-8 bytes of ``text`` as BLT ids (byte + 4), with BOS/EOS."""
    ids = [b + BYTE_OFFSET for b in text.encode("utf-8", errors="surrogatepass")]
    return ([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else [])


def pack_texts(texts: Iterable[str], seq_len: int, drop_remainder: bool = True) -> list[list[int]]:
    """Concatenate ``BOS text EOS`` documents and cut rows of ``seq_len`` ids (every row starts with its own BOS)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    rows, buffer = [], []
    for text in texts:
        buffer.extend(text_to_ids(text, add_bos=False))
        while len(buffer) >= seq_len - 1:
            rows.append([BOS_ID] + buffer[: seq_len - 1])
            buffer = buffer[seq_len - 1 :]
    if buffer and not drop_remainder:
        rows.append([BOS_ID] + buffer)
    return rows


def document_rows(texts: Iterable[str], seq_len: int) -> list[list[int]]:
    """One row per document: ``BOS text EOS`` cut to its first ``seq_len`` ids (rows of different lengths, for
    :class:`BLTDataCollator` to right-pad)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    return [text_to_ids(text)[:seq_len] for text in texts]


def byte_dataset(texts: Sequence[str], seq_len: int, pack: bool = True):
    """A ``datasets.Dataset`` with an ``input_ids`` column: packed rows of ``seq_len`` ids, or with ``pack=False``
    one document per row (at most ``seq_len`` ids)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": pack_texts(texts, seq_len) if pack else document_rows(texts, seq_len)})


def pad_right(rows: Sequence[Sequence[int]], pad_id: int = BOE_ID) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Rows of different lengths -> ``(input_ids, attention_mask)``, each ``[B, longest]``, padded on the right."""
    if not rows or min(len(r) for r in rows) == 0:
        raise ValueError("every row needs at least one id")
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def entropy_patch_starts(entropies: torch.Tensor, threshold: float, monotonic: bool = False,
                         attention_mask: torch.Tensor | None = None, max_patch_length: int | None = None) -> torch.Tensor:
    """Start mask ``[B, N + 1]`` from next-byte entropies ``[B, N]`` (nats). Global rule: byte ``t`` opens a patch
    iff ``H[t-1] > threshold``; approximate monotonic rule (``monotonic=True``): iff ``H[t-1] - H[t-2] > threshold``."""
    mode = "entropy_monotonic" if monotonic else "entropy"
    return patch_starts(mode, None, entropies, threshold, None, max_patch_length, attention_mask)


def space_patch_starts(input_ids: torch.Tensor, attention_mask=None, max_patch_length: int | None = None) -> torch.Tensor:
    """Start mask ``[B, N + 1]``: byte ``t`` opens a patch iff byte ``t-1`` is space-like and byte ``t-2`` is not."""
    return patch_starts("space", input_ids, max_patch_length=max_patch_length, attention_mask=attention_mask)


def static_patch_starts(batch: int, length: int, patch_size: int, attention_mask=None) -> torch.Tensor:
    """Start mask ``[B, N + 1]``: the BOS patch, then fixed patches of ``patch_size`` bytes from relative byte 1."""
    return patch_starts("static", None, patch_size=patch_size, attention_mask=attention_mask, shape=(batch, length))


def patch_ids_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """Patch index of every slot, ``[B, slots]`` (``cumsum - 1``; left padding gets -1)."""
    return starts.long().cumsum(dim=1) - 1


def patch_lengths_from_starts(
    starts: torch.Tensor, include_next: bool = False, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Lengths ``[B, P]`` of the patches over the first ``N`` slots (or all ``N + 1`` with ``include_next``,
    Meta's ``include_next_token`` convention), right-padded with zeros. Rows sum to their number of real bytes
    (+1 with ``include_next``). Pass the ``attention_mask [B, N]`` of right-padded rows so that their trailing padding
    is not counted (left padding never is)."""
    cols = starts if include_next else starts[:, :-1]
    ids = patch_ids_from_starts(cols)
    if attention_mask is not None:
        leading = (attention_mask.long().cumsum(dim=1) == 0).sum(dim=1, keepdim=True)  # left padding
        rel = torch.arange(cols.shape[1], device=cols.device).unsqueeze(0) - leading
        counted = rel < attention_mask.long().sum(dim=1, keepdim=True) + int(include_next)
        ids = torch.where(counted, ids, torch.full_like(ids, -1))
    batch = cols.shape[0]
    num = int(ids.max().item()) + 1 if ids.numel() else 0
    lengths = torch.zeros(batch, max(num, 0) + 1, dtype=torch.long, device=starts.device)
    lengths.scatter_add_(1, (ids + 1).clamp(min=0), torch.ones_like(ids))
    return lengths[:, 1:]  # column 0 collected the padding


@torch.no_grad()
def compute_patch_lengths(
    input_ids: torch.LongTensor | Sequence[Sequence[int]],
    entropy_model: BLTEntropyModel | None,
    mode: str = "entropy",
    threshold: float | None = None,
    patch_size: int = 4,
    max_patch_length: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> list[list[int]]:
    """Patch lengths of each row (Meta's ``include_next_token`` convention: rows sum to their ``n + 1`` real ids),
    batched. ``input_ids`` is ``[B, N]`` (with an optional ``attention_mask``) or a list of rows of different
    lengths, which are right-padded here; causal patching makes a row's lengths independent of its padding."""
    if not isinstance(input_ids, torch.Tensor):
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a tensor of input_ids; lists of rows are padded here")
        input_ids, attention_mask = pad_right(input_ids)
        if bool(attention_mask.all()):
            attention_mask = None
    entropies = None
    if mode.startswith("entropy"):
        if entropy_model is None:
            raise ValueError(f"patching mode {mode!r} needs an entropy model")
        device = next(entropy_model.parameters()).device
        mask = attention_mask.to(device) if attention_mask is not None else None
        entropies, _ = entropy_model.entropies(input_ids.to(device), mask)
        entropies = entropies.cpu()
    starts = patch_starts(mode, input_ids, entropies=entropies, threshold=threshold, patch_size=patch_size,
                          max_patch_length=max_patch_length, attention_mask=attention_mask)
    lengths = patch_lengths_from_starts(starts, include_next=True, attention_mask=attention_mask)
    return [row[row > 0].tolist() for row in lengths]


def add_patch_lengths_column(dataset, entropy_model, mode="entropy", threshold=None, patch_size=4,
                             max_patch_length=None, batch_size: int = 16):
    """``dataset.map`` adding ``patch_lengths`` computed in batches (vectorised patching, no per-byte loop)."""

    def fn(batch):
        rows = batch["input_ids"]  # equal lengths when packed, ragged for one document per row
        return {"patch_lengths": compute_patch_lengths(rows, entropy_model, mode, threshold, patch_size, max_patch_length)}

    return dataset.map(fn, batched=True, batch_size=batch_size, desc="patch lengths")


@torch.no_grad()
def mean_patch_size(entropies: torch.Tensor, threshold: float, monotonic: bool = False,
                    max_patch_length: int | None = None, attention_mask: torch.Tensor | None = None) -> float:
    """Average bytes per patch of entropy patching at ``threshold`` over ``entropies [B, N]`` (real bytes only when
    an ``attention_mask [B, N]`` marks padding)."""
    starts = entropy_patch_starts(entropies, threshold, monotonic, attention_mask, max_patch_length)[:, :-1]
    if attention_mask is None:
        return entropies.numel() / float(starts.sum())
    real = attention_mask.bool()
    return float(real.sum()) / float((starts & real).sum())


@torch.no_grad()
def calibrate_threshold(entropies: torch.Tensor, target_patch_size: float, monotonic: bool = False,
                        iterations: int = 40, attention_mask: torch.Tensor | None = None) -> float:
    """Bisect the threshold so that the mean patch size on ``entropies [B, N]`` (real bytes of ``attention_mask``)
    is ~``target_patch_size`` (the maintainers' recipe for a new dataset); mean patch size grows with the
    threshold."""
    if (isinstance(target_patch_size, bool) or not isinstance(target_patch_size, (int, float))
            or not math.isfinite(float(target_patch_size)) or target_patch_size < 1):
        raise ValueError(f"target_patch_size must be a finite number >= 1, got {target_patch_size!r}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    entropies = torch.as_tensor(entropies)
    if entropies.numel() == 0:
        raise ValueError("entropies is empty: nothing to calibrate the threshold on")
    if not torch.isfinite(entropies).all():
        raise ValueError("entropies holds NaN or infinite values; the entropy model's output is broken")
    lo, hi = float(entropies.min()) - 10.0, float(entropies.max()) + 10.0
    if monotonic:
        diffs = entropies[:, 1:] - entropies[:, :-1]
        lo, hi = float(diffs.min()) - 10.0, float(diffs.max()) + 10.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if mean_patch_size(entropies, mid, monotonic, attention_mask=attention_mask) < target_patch_size:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class BLTDataCollator:
    """Batches ``input_ids`` rows and sets ``labels``; right-pads ``patch_lengths`` with zeros when the column is
    present.

    Packed rows (all one length) are stacked as they are. Rows of different lengths are right-padded with ``pad_id``
    and get an ``attention_mask`` (0 on padding) and ``-100`` labels on padding: BLT's forward gives every real byte
    of a right-padded row the logits it has alone, so the loss is the one of the unpadded rows.
    """

    def __init__(self, pad_id: int = BOE_ID):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("BLTDataCollator got an empty list of features")
        rows = [f["input_ids"] for f in features]
        if len({len(r) for r in rows}) == 1:
            input_ids = torch.tensor(rows, dtype=torch.long)
            batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        else:
            input_ids, attention_mask = pad_right(rows, self.pad_id)
            labels = input_ids.masked_fill(attention_mask == 0, -100)
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "patch_lengths" in features[0]:
            longest = max(len(f["patch_lengths"]) for f in features)
            batch["patch_lengths"] = torch.tensor(
                [list(f["patch_lengths"]) + [0] * (longest - len(f["patch_lengths"])) for f in features], dtype=torch.long
            )
        return batch


__all__ = [
    "entropy_patch_starts", "space_patch_starts", "static_patch_starts", "patch_ids_from_starts", "patch_lengths_from_starts", "text_to_ids", "pack_texts", "document_rows", "byte_dataset", "pad_right", "compute_patch_lengths",
    "add_patch_lengths_column", "mean_patch_size", "calibrate_threshold", "BLTDataCollator",
]
