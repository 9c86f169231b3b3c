"""Patch boundaries for BLT: vectorised, batched, causal.

A patching of ``N`` byte slots is a boolean *start mask* ``starts[B, N + 1]`` (byte ``t`` opens a patch); column ``N``
decides for the byte that comes next. Rules are causal (``starts[:, t]`` reads bytes and entropies ``< t``). As in
Transformers' ``Blt`` and Meta's code, the first two real bytes open patches (the BOS patch); from ``t = 2`` the mode's
rule on byte ``t - 1`` decides (:func:`boundary_rule`, also used per byte by ``BLTCache``). Rules count from each row's
first real byte (from each document's with document masking); padding never opens a patch, except the slot after a
right-padded row's last byte (its next-byte decision): every real byte gets the patch it gets alone."""

from __future__ import annotations

import math

import torch

PATCHING_MODES = ("entropy", "entropy_monotonic", "entropy_combined", "space", "static", "byte")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_patching(mode: str, threshold=None, patch_size=None, max_patch_length=None, threshold_add=None) -> None:
    """Raise a ``ValueError`` naming the bad patching setting (BLTConfig's and the patcher's one validation): entropy
    modes need a finite threshold (``entropy_combined`` also ``threshold_add``), ``static`` a positive patch size."""
    if mode not in PATCHING_MODES:
        raise ValueError(f"unknown patching mode {mode!r}: patching_mode must be one of {PATCHING_MODES}")
    for name, value, needed in (("patching_threshold", threshold, mode.startswith("entropy")),
                                ("patching_threshold_add", threshold_add, mode == "entropy_combined")):
        if (value is not None or needed) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                              or not math.isfinite(float(value))):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (patch_size is not None or mode == "static") and not _positive_int(patch_size):
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if max_patch_length is not None and not _positive_int(max_patch_length):
        raise ValueError(f"max_patch_length must be a positive int or None, got {max_patch_length!r}")


def rule_settings(config) -> dict:
    """The :func:`boundary_rule` keywords a ``BLTConfig`` sets."""
    return dict(threshold=config.patching_threshold, patch_size=config.patch_size,
                threshold_add=config.patching_threshold_add, meta_start=config.patching_meta_start)


def relative_positions(attention_mask, batch: int, length: int, device=None, ids=None, eos_id=None) -> torch.Tensor:
    """Position of each of ``length`` slots from the row's first real byte ``[B, length]`` (left padding: negative), or
    with ``eos_id`` from its document's first byte (the slot after each real EOS of ``ids [B, >= length - 1]``)."""
    ar = torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    first = 0 if attention_mask is None else (attention_mask.long().cumsum(dim=1) == 0).sum(dim=1, keepdim=True)
    if eos_id is None:
        return ar - first
    eos = ids == eos_id if attention_mask is None else (ids == eos_id) & attention_mask.bool()
    opens = _shift_right(eos, False)[:, :length]
    return ar - torch.cummax(torch.where(opens, ar, torch.zeros_like(ar) + first), dim=1).values


def _inside_rows(attention_mask: torch.Tensor | None, rel: torch.Tensor) -> torch.Tensor:
    """Slots from the row's first real byte up to its next-byte slot (row-relative position in ``[0, real bytes]``);
    the others are padding, ``[B, slots]``."""
    inside = rel >= 0
    return inside if attention_mask is None else inside & (rel <= attention_mask.long().sum(dim=1, keepdim=True))


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
                  threshold: float | None = None, patch_size: int | None = None, threshold_add: float | None = None,
                  meta_start: bool = True) -> torch.Tensor:
    """Does the byte at relative position ``rel`` open a patch? The one statement of every mode's rule, for any
    shape: the batched patcher passes ``[B, N + 1]`` columns, a generation step ``[B]``. ``entropy`` / ``byte``: byte
    ``rel - 1``'s next-byte entropy and id; ``prev_entropy`` / ``prev_byte``: byte ``rel - 2``'s. Relative positions
    0 and 1 always open one (the BOS patch); a maximum patch length is applied on top. ``meta_start``: the difference
    rules start as in Meta's patcher, which drops H[0] (after BOS): byte 2 always opens a patch."""
    if mode == "entropy":
        fire = entropy > threshold
    elif mode == "entropy_monotonic":
        fire = ((entropy - prev_entropy) > threshold) | ((rel == 2) & meta_start)
    elif mode == "entropy_combined":  # Meta's global + monotonic rule; its `~mask[:, :-1]` term keeps byte 3 closed
        fire = (entropy > threshold) & ((entropy - prev_entropy) > threshold_add) & ~((rel == 3) & meta_start)
        fire = fire | ((rel == 2) & meta_start)
    elif mode == "space":  # only the first of a run of space-like bytes; byte rel - 2 must be a real byte to count
        fire = space_like(byte) & ~(space_like(prev_byte) & (rel >= 3))
    elif mode == "static":
        fire = (rel - 1) % patch_size == 0
    elif mode == "byte":
        fire = torch.ones_like(rel, dtype=torch.bool)
    else:
        raise ValueError(f"unknown patching mode {mode!r}; expected one of {PATCHING_MODES}")
    return (rel <= 1) | fire


def patch_starts(mode: str, input_ids: torch.Tensor | None, entropies: torch.Tensor | None = None,
                 threshold: float | None = None, patch_size: int | None = None, max_patch_length: int | None = None,
                 attention_mask: torch.Tensor | None = None, shape: tuple[int, int] | None = None,
                 threshold_add: float | None = None, meta_start: bool = True, eos_id: int | None = None,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
    """Start mask ``[B, N + 1]`` of ``mode`` over ``input_ids [B, N]`` (or ``shape = (B, N)`` for modes that read no
    ids), with next-byte ``entropies [B, N]`` for the entropy modes: :func:`boundary_rule` on every slot at once;
    ``eos_id`` (document masking, ids needed): each document is patched as if alone. So with ``positions [B, N]``
    (padding-free rows), except that a document's first slot holds the previous one's next-byte decision (callers open it)."""
    check_patching(mode, threshold if mode.startswith("entropy") else None, patch_size, max_patch_length,
                   threshold_add if mode == "entropy_combined" else None)
    source = input_ids if input_ids is not None else entropies
    batch, length = shape if source is None else source.shape
    device = source.device if source is not None else getattr(attention_mask, "device", None)
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):  # ([1, N] would broadcast)
        raise ValueError(f"attention_mask must be [batch, length] = {[batch, length]}, got {list(attention_mask.shape)}")
    facts = {}
    if mode.startswith("entropy"):
        if entropies is None or entropies.dim() != 2:
            raise ValueError(f"patching mode {mode!r} needs entropies [batch, length], got {getattr(entropies, 'shape', None)}")
        previous = _shift_right(entropies, 0.0)  # previous[:, t] = H[t-1]
        facts = dict(entropy=previous, prev_entropy=_shift_right(previous[:, :-1], 0.0))
    elif mode == "space":
        previous = _shift_right(input_ids, 0)
        facts = dict(byte=previous, prev_byte=_shift_right(previous[:, :-1], 0))
    rel = relative_positions(attention_mask, batch, length + 1, device, input_ids, eos_id) if positions is None else \
        _shift_right(positions + 1, 0)
    fire = boundary_rule(mode, rel, threshold=threshold, patch_size=patch_size, threshold_add=threshold_add,
                         meta_start=meta_start, **facts)
    # slots before the row's first real byte and after its next-byte slot (right padding) never open a patch
    starts = fire & _inside_rows(attention_mask, relative_positions(attention_mask, batch, length + 1, device))
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
    valid = (last_start >= 0) & _inside_rows(attention_mask, relative_positions(attention_mask, batch, slots, starts.device))
    return starts | (valid & ((idx - last_start) % max_patch_length == 0))


def starts_from_patch_lengths(patch_lengths: torch.Tensor, length: int, attention_mask=None) -> torch.Tensor:
    """Validate ``patch_lengths [B, P]`` (non-negative) and return the start mask ``[B, N + 1]``. Each row must sum
    to its number of real bytes ``n`` (Transformers' convention; a zero-length patch right after the last non-empty one
    marks that the next byte opens a patch) or ``n + 1`` (Meta's ``include_next_token``: the last patch covers it)."""
    if patch_lengths.dim() != 2:
        raise ValueError(f"patch_lengths must be [batch, num_patches], got shape {tuple(patch_lengths.shape)}")
    if patch_lengths.is_floating_point() or bool((patch_lengths < 0).any()):  # (.long() would read 2.7 as 2)
        raise ValueError(f"patch_lengths must be non-negative integers, got dtype {patch_lengths.dtype}")
    patch_lengths, device, batch = patch_lengths.long(), patch_lengths.device, patch_lengths.shape[0]
    mask = torch.ones(batch, length, dtype=torch.long, device=device) if attention_mask is None else attention_mask.long()
    real, leading = mask.sum(dim=1).to(device), (mask.cumsum(dim=1) == 0).sum(dim=1, keepdim=True).to(device)
    sums = patch_lengths.sum(dim=1)
    ok = (sums == real) | (sums == real + 1)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        raise ValueError(f"patch_lengths of row {bad} sum to {int(sums[bad])} but the row has {int(real[bad])} bytes "
                         f"(expected {int(real[bad])} or {int(real[bad]) + 1})")
    begin = torch.cumsum(patch_lengths, dim=1) - patch_lengths  # relative start of each patch
    nonempty = patch_lengths > 0
    # Transformers convention: an empty patch directly after the last non-empty one starts at n (the next byte); only
    # for rows summing to n (with n + 1, trailing zeros pad the lengths tensor, and slot n + 1 is padding).
    column = torch.arange(patch_lengths.shape[1], device=device)
    last_nonempty = torch.where(nonempty, column, -1).amax(dim=1, keepdim=True)
    keep = nonempty | (~nonempty & (sums == real).unsqueeze(1) & (column == last_nonempty + 1))
    slot = torch.where(keep, begin + leading, torch.full_like(begin, length + 1))
    starts = torch.zeros(batch, length + 2, dtype=torch.bool, device=device)
    return starts.scatter_(1, slot.clamp(max=length + 1), True)[:, : length + 1]


__all__ = ["PATCHING_MODES", "check_patching", "boundary_rule", "patch_starts", "split_long_patches", "starts_from_patch_lengths"]
