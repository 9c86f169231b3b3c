"""Byte data pipeline for BLT: pack texts into byte rows, precompute patch lengths as a dataset column (so training
does not run the entropy model each step), calibrate the entropy threshold to a target patch size, collate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .modeling_blt_entropy import BLTEntropyModel
from .patcher_blt import patch_lengths_from_starts, patch_starts
from .tokenization_blt_lm import BOS_ID, BYTE_OFFSET, EOS_ID


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


def byte_dataset(texts: Sequence[str], seq_len: int):
    """A ``datasets.Dataset`` with an ``input_ids`` column of packed byte rows."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": pack_texts(texts, seq_len)})


@torch.no_grad()
def compute_patch_lengths(
    input_ids: torch.LongTensor,
    entropy_model: BLTEntropyModel | None,
    mode: str = "entropy",
    threshold: float | None = None,
    patch_size: int = 4,
    max_patch_length: int | None = None,
) -> list[list[int]]:
    """Patch lengths of each row (Meta's ``include_next_token`` convention: rows sum to ``N + 1``), batched."""
    entropies = None
    if mode.startswith("entropy"):
        if entropy_model is None:
            raise ValueError(f"patching mode {mode!r} needs an entropy model")
        device = next(entropy_model.parameters()).device
        entropies, _ = entropy_model.entropies(input_ids.to(device))
        entropies = entropies.cpu()
    starts = patch_starts(mode, input_ids, entropies=entropies, threshold=threshold, patch_size=patch_size,
                          max_patch_length=max_patch_length)
    lengths = patch_lengths_from_starts(starts, include_next=True)
    return [row[row > 0].tolist() for row in lengths]


def add_patch_lengths_column(dataset, entropy_model, mode="entropy", threshold=None, patch_size=4,
                             max_patch_length=None, batch_size: int = 16):
    """``dataset.map`` adding ``patch_lengths`` computed in batches (vectorised patching, no per-byte loop)."""

    def fn(batch):
        ids = torch.tensor(batch["input_ids"])
        return {"patch_lengths": compute_patch_lengths(ids, entropy_model, mode, threshold, patch_size, max_patch_length)}

    return dataset.map(fn, batched=True, batch_size=batch_size, desc="patch lengths")


@torch.no_grad()
def mean_patch_size(entropies: torch.Tensor, threshold: float, monotonic: bool = False,
                    max_patch_length: int | None = None) -> float:
    """Average bytes per patch of entropy patching at ``threshold`` over ``entropies [B, N]``."""
    from .patcher_blt import entropy_patch_starts

    starts = entropy_patch_starts(entropies, threshold, monotonic, max_patch_length=max_patch_length)
    return entropies.numel() / float(starts[:, :-1].sum())


@torch.no_grad()
def calibrate_threshold(entropies: torch.Tensor, target_patch_size: float, monotonic: bool = False,
                        iterations: int = 40) -> float:
    """Bisect the threshold so that the mean patch size on ``entropies [B, N]`` is ~``target_patch_size``
    (the maintainers' recipe for a new dataset); mean patch size grows with the threshold."""
    if target_patch_size < 1:
        raise ValueError(f"target_patch_size must be >= 1, got {target_patch_size}")
    lo, hi = float(entropies.min()) - 10.0, float(entropies.max()) + 10.0
    if monotonic:
        diffs = entropies[:, 1:] - entropies[:, :-1]
        lo, hi = float(diffs.min()) - 10.0, float(diffs.max()) + 10.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if mean_patch_size(entropies, mid, monotonic) < target_patch_size:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class BLTDataCollator:
    """Stacks equal-length ``input_ids`` rows (packed data), sets ``labels`` and right-pads ``patch_lengths`` with
    zeros when the column is present."""

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = {len(f["input_ids"]) for f in features}
        if len(lengths) != 1:
            raise ValueError(f"BLTDataCollator expects packed rows of one length, got lengths {sorted(lengths)}")
        input_ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if "patch_lengths" in features[0]:
            longest = max(len(f["patch_lengths"]) for f in features)
            batch["patch_lengths"] = torch.tensor(
                [list(f["patch_lengths"]) + [0] * (longest - len(f["patch_lengths"])) for f in features], dtype=torch.long
            )
        return batch


__all__ = [
    "text_to_ids", "pack_texts", "byte_dataset", "compute_patch_lengths", "add_patch_lengths_column",
    "mean_patch_size", "calibrate_threshold", "BLTDataCollator",
]
