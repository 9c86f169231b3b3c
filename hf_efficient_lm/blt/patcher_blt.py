"""Patch boundaries for BLT: vectorised, batched, causal.

Representation. A patching of a row of ``N`` byte positions is a boolean *start mask* ``starts[B, N + 1]``:
``starts[b, t]`` says that byte ``t`` opens a new patch. Column ``N`` is the decision for the byte that comes next
(it decides which patch the decoder reads at the last position, and during generation whether the open patch is
complete). Every rule here is causal: ``starts[:, t]`` depends on bytes ``< t`` (entropies up to ``t - 1``) only, so
prefix patches never change when bytes are appended and generation can decide boundaries as bytes arrive.

Conventions shared with Transformers' ``Blt`` and Meta's code: the first two real bytes always open patches (the first
patch is the BOS byte alone); for ``t >= 2`` byte ``t`` opens a patch iff the rule fires on position ``t - 1``.
Padding (``attention_mask == 0``) on the left and/or on the right of each row's one run of real bytes is supported:
rules count positions from the first real byte, and padded positions never start patches except the slot right after
the last real byte of a right-padded row, which holds that row's next-byte decision (column ``N`` of the row alone).
So every real byte gets the patch it gets when the row is alone.

Patch *lengths* (``[B, P]``, right-padded with zeros) are the exchange format for datasets and for Transformers'
``patch_lengths`` argument; :func:`starts_from_patch_lengths` validates and converts them.
"""

from __future__ import annotations

import math

import torch

PATCHING_MODES = ("entropy", "entropy_monotonic", "space", "static", "byte")


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(float(threshold)):
        raise ValueError(f"patching threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def _relative_positions(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Position of each slot counted from the row's first real byte, ``[B, length]`` (left padding -> negative)."""
    ar = torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    if attention_mask is None:
        return ar
    leading = (attention_mask.long().cumsum(dim=1) == 0).sum(dim=1, keepdim=True)  # left padding of each row
    return ar - leading


def _inside_rows(attention_mask: torch.Tensor | None, rel: torch.Tensor) -> torch.Tensor:
    """Slots up to and including each row's next-byte slot (relative position <= number of real bytes); the slots
    after it are right padding, ``[B, slots]``."""
    if attention_mask is None:
        return torch.ones_like(rel, dtype=torch.bool)
    return rel <= attention_mask.long().sum(dim=1, keepdim=True)


def _forced_and_valid(batch: int, length: int, attention_mask, device):
    """For N+1 start slots: (forced starts at relative 0 and 1, slots that may start: relative >= 2), both limited to
    the row's real bytes and its next-byte slot."""
    rel = _relative_positions(attention_mask, batch, length + 1, device)
    inside = _inside_rows(attention_mask, rel)
    forced = ((rel == 0) | (rel == 1)) & inside
    return forced, (rel >= 2) & inside, rel


def _shift_right(x: torch.Tensor, fill) -> torch.Tensor:
    """``out[:, t] = x[:, t - 1]``, ``out[:, 0] = fill``; output has one more column than ``x``."""
    pad = torch.full_like(x[:, :1], fill)
    return torch.cat([pad, x], dim=1)


def entropy_patch_starts(
    entropies: torch.Tensor,
    threshold: float,
    monotonic: bool = False,
    attention_mask: torch.Tensor | None = None,
    max_patch_length: int | None = None,
) -> torch.Tensor:
    """Start mask ``[B, N + 1]`` from next-byte entropies ``[B, N]`` (nats).

    Global rule: byte ``t`` opens a patch iff ``H[t-1] > threshold``. Approximate monotonic rule
    (``monotonic=True``): iff ``H[t-1] - H[t-2] > threshold``.
    """
    threshold = _check_threshold(threshold)
    if entropies.dim() != 2:
        raise ValueError(f"entropies must be [batch, length], got shape {tuple(entropies.shape)}")
    batch, length = entropies.shape
    forced, may_start, _ = _forced_and_valid(batch, length, attention_mask, entropies.device)
    prev = _shift_right(entropies, 0.0)  # prev[:, t] = H[t-1]
    if monotonic:
        prev2 = _shift_right(prev[:, :-1], 0.0)  # H[t-2]
        fire = (prev - prev2) > threshold
    else:
        fire = prev > threshold
    starts = forced | (may_start & fire)
    return split_long_patches(starts, max_patch_length, attention_mask)


_SPACE_LIKE_TABLE = None


def _space_like_table(device) -> torch.Tensor:
    """Boolean table over byte ids 0..259: special ids, and bytes outside [0-9A-Za-z] and UTF-8 continuations."""
    table = torch.ones(260, dtype=torch.bool)
    for lo, hi in ((ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("a"), ord("z")), (0x80, 0xBF)):
        table[lo + 4 : hi + 5] = False
    return table.to(device)


def space_like(ids: torch.Tensor) -> torch.Tensor:
    """Space-like flag of each id (ids beyond the byte vocabulary, e.g. added tokens, count as special)."""
    table = _space_like_table(ids.device)
    return torch.where(ids >= 260, torch.ones_like(ids, dtype=torch.bool), table[ids.clamp(min=0, max=259)])


def space_patch_starts(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_patch_length: int | None = None,
) -> torch.Tensor:
    """Start mask ``[B, N + 1]``: byte ``t`` opens a patch iff byte ``t-1`` is space-like and byte ``t-2`` is not
    (only the first of a run of space-like bytes counts), besides the forced starts."""
    batch, length = input_ids.shape
    forced, may_start, rel = _forced_and_valid(batch, length, attention_mask, input_ids.device)
    space = space_like(input_ids)
    prev = _shift_right(space, False)  # space-like at t-1
    prev2 = _shift_right(prev[:, :-1], False)  # at t-2
    prev2 = prev2 & (rel >= 3)  # t-2 must be a real byte
    starts = forced | (may_start & prev & ~prev2)
    return split_long_patches(starts, max_patch_length, attention_mask)


def static_patch_starts(
    batch: int,
    length: int,
    patch_size: int,
    attention_mask: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Start mask ``[B, N + 1]``: the BOS patch, then fixed patches of ``patch_size`` bytes from relative byte 1."""
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    forced, may_start, rel = _forced_and_valid(batch, length, attention_mask, device)
    return forced | (may_start & ((rel - 1) % patch_size == 0))


def byte_patch_starts(batch: int, length: int, attention_mask=None, device=None) -> torch.Tensor:
    """Every real byte is its own patch (the mode used to train the entropy model)."""
    forced, may_start, _ = _forced_and_valid(batch, length, attention_mask, device)
    return forced | may_start


def split_long_patches(starts: torch.Tensor, max_patch_length: int | None, attention_mask=None) -> torch.Tensor:
    """Add starts so that no patch is longer than ``max_patch_length`` (chunks counted from each patch's start).

    Vectorised: the start of the patch holding slot ``t`` is a running maximum of start indices.
    """
    if max_patch_length is None:
        return starts
    if isinstance(max_patch_length, bool) or not isinstance(max_patch_length, int) or max_patch_length < 1:
        raise ValueError(f"max_patch_length must be a positive int or None, got {max_patch_length!r}")
    batch, slots = starts.shape
    idx = torch.arange(slots, device=starts.device).unsqueeze(0).expand(batch, slots)
    last_start = torch.cummax(torch.where(starts, idx, torch.full_like(idx, -1)), dim=1).values
    # right padding after the next-byte slot never opens patches (it would only grow the padded patch count)
    valid = (last_start >= 0) & _inside_rows(attention_mask, _relative_positions(attention_mask, batch, slots, starts.device))
    offset = idx - last_start
    return starts | (valid & (offset % max_patch_length == 0))


def patch_starts(
    mode: str,
    input_ids: torch.Tensor,
    entropies: torch.Tensor | None = None,
    threshold: float | None = None,
    patch_size: int | None = None,
    max_patch_length: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch to one rule; returns the start mask ``[B, N + 1]``."""
    batch, length = input_ids.shape
    if mode == "entropy" or mode == "entropy_monotonic":
        if entropies is None:
            raise ValueError(f"patching mode {mode!r} needs entropies")
        return entropy_patch_starts(entropies, threshold, mode == "entropy_monotonic", attention_mask, max_patch_length)
    if mode == "space":
        return space_patch_starts(input_ids, attention_mask, max_patch_length)
    if mode == "static":
        starts = static_patch_starts(batch, length, patch_size, attention_mask, input_ids.device)
        return split_long_patches(starts, max_patch_length, attention_mask)
    if mode == "byte":
        return byte_patch_starts(batch, length, attention_mask, input_ids.device)
    raise ValueError(f"unknown patching mode {mode!r}; expected one of {PATCHING_MODES}")


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
        rel = _relative_positions(attention_mask, cols.shape[0], cols.shape[1], cols.device)
        counted = rel < attention_mask.long().sum(dim=1, keepdim=True) + int(include_next)
        ids = torch.where(counted, ids, torch.full_like(ids, -1))
    batch = cols.shape[0]
    num = int(ids.max().item()) + 1 if ids.numel() else 0
    lengths = torch.zeros(batch, max(num, 0) + 1, dtype=torch.long, device=starts.device)
    lengths.scatter_add_(1, (ids + 1).clamp(min=0), torch.ones_like(ids))
    return lengths[:, 1:]  # column 0 collected the padding


def starts_from_patch_lengths(
    patch_lengths: torch.Tensor, length: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Validate ``patch_lengths [B, P]`` and return the start mask ``[B, N + 1]``.

    Each row must sum to its number of real bytes ``n`` (Transformers' convention; a zero-length patch right after
    the last non-empty one then marks that the next byte opens a patch) or ``n + 1`` (Meta's ``include_next_token``
    convention, the last patch covers the next byte). Negative lengths are rejected.
    """
    if patch_lengths.dim() != 2:
        raise ValueError(f"patch_lengths must be [batch, num_patches], got shape {tuple(patch_lengths.shape)}")
    patch_lengths = patch_lengths.long()
    batch = patch_lengths.shape[0]
    if (patch_lengths < 0).any():
        raise ValueError("patch_lengths must be non-negative")
    real = (
        attention_mask.long().sum(dim=1)
        if attention_mask is not None
        else torch.full((batch,), length, device=patch_lengths.device)
    )
    leading = (
        (attention_mask.long().cumsum(dim=1) == 0).sum(dim=1, keepdim=True).to(patch_lengths.device)
        if attention_mask is not None
        else torch.zeros(batch, 1, dtype=torch.long, device=patch_lengths.device)
    )
    sums = patch_lengths.sum(dim=1)
    ok = (sums == real) | (sums == real + 1)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"patch_lengths of row {bad} sum to {int(sums[bad])} but the row has {int(real[bad])} bytes "
            f"(expected {int(real[bad])} or {int(real[bad]) + 1})"
        )
    begin = torch.cumsum(patch_lengths, dim=1) - patch_lengths  # relative start of each patch
    nonempty = patch_lengths > 0
    # Transformers convention: an empty patch directly after the last non-empty patch starts at n (the next byte).
    # Only for rows summing to n: with n + 1 the zeros after the last patch are padding of the lengths tensor, and
    # in a right-padded row slot n + 1 exists (it is padding, which must not open a patch).
    last_nonempty = torch.where(nonempty, torch.arange(patch_lengths.shape[1], device=patch_lengths.device), -1)
    last_nonempty = last_nonempty.max(dim=1, keepdim=True).values
    trailing_empty = (~nonempty) & (sums == real).unsqueeze(1) & (
        torch.arange(patch_lengths.shape[1], device=patch_lengths.device).unsqueeze(0) == last_nonempty + 1
    )
    keep = nonempty | trailing_empty
    slot = torch.where(keep, begin + leading, torch.full_like(begin, length + 1))
    starts = torch.zeros(batch, length + 2, dtype=torch.bool, device=patch_lengths.device)
    starts.scatter_(1, slot.clamp(max=length + 1), True)
    return starts[:, : length + 1]


__all__ = [
    "PATCHING_MODES",
    "entropy_patch_starts",
    "space_patch_starts",
    "static_patch_starts",
    "byte_patch_starts",
    "split_long_patches",
    "patch_starts",
    "patch_ids_from_starts",
    "patch_lengths_from_starts",
    "starts_from_patch_lengths",
]
