"""Patch boundaries for BLT: vectorised, batched, causal.

A patching of ``N`` byte slots is a boolean *start mask* ``starts[B, N + 1]`` (byte ``t`` opens a patch); column ``N``
is the decision for the byte that comes next (which patch the decoder reads at the last position; in generation,
whether the open patch is complete). Rules are causal (``starts[:, t]`` reads bytes and entropies ``< t``), so prefix
patches never change when bytes are appended. As in Transformers' ``Blt`` and Meta's code, the first two real bytes
open patches (the BOS patch); from ``t = 2`` the mode's rule on byte ``t - 1`` decides (:func:`boundary_rule`, also
used per byte by ``BLTCache``). Padding left and/or right of each row's one run of real bytes never opens a patch
(rules count from the first real byte), except the slot after a right-padded row's last byte, which holds its
next-byte decision: every real byte gets the patch it gets alone. Patch *lengths* ``[B, P]`` (right-padded with zeros,
the dataset / ``patch_lengths`` format) are validated and converted by :func:`starts_from_patch_lengths`.
"""

from __future__ import annotations

import math

import torch

PATCHING_MODES = ("entropy", "entropy_monotonic", "space", "static", "byte")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_patching(mode: str, threshold=None, patch_size=None, max_patch_length=None) -> None:
    """Raise a ``ValueError`` naming the bad patching setting (BLTConfig's and the patcher's one validation). The
    entropy modes need a finite threshold, ``static`` a positive patch size; given values are always checked."""
    if mode not in PATCHING_MODES:
        raise ValueError(f"unknown patching mode {mode!r}: patching_mode must be one of {PATCHING_MODES}")
    if threshold is not None or mode.startswith("entropy"):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(float(threshold)):
            raise ValueError(f"patching_threshold must be a finite number, got {threshold!r}")
    if (patch_size is not None or mode == "static") and not _positive_int(patch_size):
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if max_patch_length is not None and not _positive_int(max_patch_length):
        raise ValueError(f"max_patch_length must be a positive int or None, got {max_patch_length!r}")


def _relative_positions(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Position of each slot counted from the row's first real byte, ``[B, length]`` (left padding -> negative)."""
    ar = torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    if attention_mask is None:
        return ar
    return ar - (attention_mask.long().cumsum(dim=1) == 0).sum(dim=1, keepdim=True)


def _inside_rows(attention_mask: torch.Tensor | None, rel: torch.Tensor) -> torch.Tensor:
    """Slots from the row's first real byte up to its next-byte slot (relative position in ``[0, real bytes]``);
    the others are padding, ``[B, slots]``."""
    if attention_mask is None:
        return rel >= 0
    return (rel >= 0) & (rel <= attention_mask.long().sum(dim=1, keepdim=True))


def _shift_right(x: torch.Tensor, fill) -> torch.Tensor:
    """``out[:, t] = x[:, t - 1]``, ``out[:, 0] = fill``; one more column than ``x``."""
    return torch.cat([torch.full_like(x[:, :1], fill), x], dim=1)


def space_like(ids: torch.Tensor) -> torch.Tensor:
    """Space-like flag of each id: specials and ids beyond the bytes (added tokens), and bytes outside [0-9A-Za-z]
    that are no UTF-8 continuation byte."""
    table = torch.ones(260, dtype=torch.bool, device=ids.device)
    for lo, hi in ((ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("a"), ord("z")), (0x80, 0xBF)):
        table[lo + 4 : hi + 5] = False
    return torch.where(ids >= 260, torch.ones_like(ids, dtype=torch.bool), table[ids.clamp(min=0, max=259)])


def boundary_rule(mode: str, rel: torch.Tensor, *, entropy=None, prev_entropy=None, byte=None, prev_byte=None,
                  threshold: float | None = None, patch_size: int | None = None) -> torch.Tensor:
    """Does the byte at relative position ``rel`` open a patch? The one statement of every mode's rule, for any
    shape: the batched patcher passes ``[B, N + 1]`` columns, a generation step ``[B]`` (the slot after the newest
    byte). ``entropy`` / ``byte``: byte ``rel - 1``'s next-byte entropy and id; ``prev_entropy`` / ``prev_byte``:
    byte ``rel - 2``'s. Relative positions 0 and 1 always open one (the BOS patch); a maximum patch length is
    applied on top (:func:`split_long_patches`, or ``BLTCache.next_byte_opens_patch``)."""
    if mode == "entropy":
        fire = entropy > threshold
    elif mode == "entropy_monotonic":
        fire = (entropy - prev_entropy) > threshold
    elif mode == "space":  # only the first of a run of space-like bytes; byte rel - 2 must be a real byte to count
        fire = space_like(byte) & ~(space_like(prev_byte) & (rel >= 3))
    elif mode == "static":
        fire = (rel - 1) % patch_size == 0
    elif mode == "byte":
        fire = torch.ones_like(rel, dtype=torch.bool)
    else:
        raise ValueError(f"unknown patching mode {mode!r}; expected one of {PATCHING_MODES}")
    return (rel <= 1) | fire


def opens_by_length(offset: torch.Tensor, max_patch_length: int | None) -> torch.Tensor:
    """A slot ``offset`` bytes after its patch's start opens a new patch when the patch reached ``max_patch_length``."""
    if max_patch_length is None:
        return torch.zeros_like(offset, dtype=torch.bool)
    return offset % max_patch_length == 0


def patch_starts(mode: str, input_ids: torch.Tensor | None, entropies: torch.Tensor | None = None,
                 threshold: float | None = None, patch_size: int | None = None, max_patch_length: int | None = None,
                 attention_mask: torch.Tensor | None = None, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Start mask ``[B, N + 1]`` of ``mode`` over ``input_ids [B, N]`` (or ``shape = (B, N)`` for modes that read no
    ids), with next-byte ``entropies [B, N]`` for the entropy modes: :func:`boundary_rule` on every slot at once."""
    check_patching(mode, threshold if mode.startswith("entropy") else None, patch_size, max_patch_length)
    source = input_ids if input_ids is not None else entropies
    batch, length = shape if source is None else source.shape
    facts = {}
    if mode.startswith("entropy"):
        if entropies is None:
            raise ValueError(f"patching mode {mode!r} needs entropies")
        if entropies.dim() != 2:
            raise ValueError(f"entropies must be [batch, length], got shape {tuple(entropies.shape)}")
        previous = _shift_right(entropies, 0.0)  # previous[:, t] = H[t-1]
        facts = dict(entropy=previous, prev_entropy=_shift_right(previous[:, :-1], 0.0))
    elif mode == "space":
        previous = _shift_right(input_ids, 0)
        facts = dict(byte=previous, prev_byte=_shift_right(previous[:, :-1], 0))
    rel = _relative_positions(attention_mask, batch, length + 1, source.device if source is not None else None)
    fire = boundary_rule(mode, rel, threshold=threshold, patch_size=patch_size, **facts)
    # slots before the row's first real byte and after its next-byte slot (right padding) never open a patch
    starts = fire & _inside_rows(attention_mask, rel)
    return split_long_patches(starts, max_patch_length, attention_mask)


def split_long_patches(starts: torch.Tensor, max_patch_length: int | None, attention_mask=None) -> torch.Tensor:
    """Add starts so that no patch is longer than ``max_patch_length`` (chunks counted from each patch's start).
    Vectorised: the start of the patch holding slot ``t`` is a running maximum of start indices."""
    if max_patch_length is None:
        return starts
    check_patching("byte", max_patch_length=max_patch_length)
    batch, slots = starts.shape
    idx = torch.arange(slots, device=starts.device).unsqueeze(0).expand(batch, slots)
    last_start = torch.cummax(torch.where(starts, idx, torch.full_like(idx, -1)), dim=1).values
    # right padding after the next-byte slot never opens patches (it would only grow the padded patch count)
    valid = (last_start >= 0) & _inside_rows(attention_mask, _relative_positions(attention_mask, batch, slots, starts.device))
    return starts | (valid & opens_by_length(idx - last_start, max_patch_length))


def starts_from_patch_lengths(patch_lengths: torch.Tensor, length: int, attention_mask=None) -> torch.Tensor:
    """Validate ``patch_lengths [B, P]`` and return the start mask ``[B, N + 1]``.

    Each row must sum to its number of real bytes ``n`` (Transformers' convention; a zero-length patch right after
    the last non-empty one then marks that the next byte opens a patch) or ``n + 1`` (Meta's ``include_next_token``
    convention, the last patch covers the next byte). Negative lengths are rejected.
    """
    if patch_lengths.dim() != 2:
        raise ValueError(f"patch_lengths must be [batch, num_patches], got shape {tuple(patch_lengths.shape)}")
    patch_lengths, device = patch_lengths.long(), patch_lengths.device
    if (patch_lengths < 0).any():
        raise ValueError("patch_lengths must be non-negative")
    batch = patch_lengths.shape[0]
    mask = torch.ones(batch, length, dtype=torch.long, device=device) if attention_mask is None else attention_mask.long()
    real, leading = mask.sum(dim=1).to(device), (mask.cumsum(dim=1) == 0).sum(dim=1, keepdim=True).to(device)
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
    column = torch.arange(patch_lengths.shape[1], device=device)
    last_nonempty = torch.where(nonempty, column, -1).amax(dim=1, keepdim=True)
    keep = nonempty | (~nonempty & (sums == real).unsqueeze(1) & (column == last_nonempty + 1))
    slot = torch.where(keep, begin + leading, torch.full_like(begin, length + 1))
    starts = torch.zeros(batch, length + 2, dtype=torch.bool, device=device)
    return starts.scatter_(1, slot.clamp(max=length + 1), True)[:, : length + 1]


__all__ = [
    "PATCHING_MODES", "check_patching", "boundary_rule", "opens_by_length", "patch_starts", "split_long_patches",
    "starts_from_patch_lengths",
]
