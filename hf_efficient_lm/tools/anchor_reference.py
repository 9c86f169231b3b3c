"""AnchorLlama reference definitions (not carried by checkpoints): what the fast carried paths are checked against.

* :func:`dense_ansan_reference`: the AnSAN mask built by loops straight from the rule's words (a slow test oracle
  for ``masking_anchor.build_anchor_attention_mask`` and the decode-step mask).
* :func:`compact_position_ids`: the positions ``position_mode="compact"`` gives a text fed in chunks, so one full
  masked forward reproduces compact cached decoding.
"""

from __future__ import annotations

import torch


def dense_ansan_reference(input_ids: torch.LongTensor, anchor_token_ids, attention_mask=None, variant="v1"):
    """A loop-based ``[batch, L, L]`` bool AnSAN mask straight from the rule's words (a test oracle, slow)."""
    batch, length = input_ids.shape
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    anchor_set = {int(a) for a in anchor_token_ids}
    out = torch.zeros(batch, length, length, dtype=torch.bool)
    for b in range(batch):
        segment, seg, anchor = [], 0, []
        for i in range(length):
            is_anc = bool(valid[b, i]) and int(input_ids[b, i]) in anchor_set
            segment.append(seg)
            anchor.append(is_anc)
            seg += int(is_anc)
        for i in range(length):
            for j in range(i + 1):
                if j == i:
                    out[b, i, j] = True
                    continue
                if not valid[b, j]:
                    continue
                if segment[i] == segment[j]:
                    out[b, i, j] = True
                elif anchor[j] and (variant == "v0" or not anchor[i]):
                    out[b, i, j] = True
    return out


def compact_position_ids(is_anchor: torch.BoolTensor, chunk_sizes: list[int]) -> torch.LongTensor:
    """``[batch, length]`` positions that ``position_mode="compact"`` gives a padding-free text fed through the
    :class:`AnchorCache` in chunks of ``chunk_sizes`` (summing to ``length``; e.g. ``[prompt_len, 1, 1, ...]`` for
    prefill + decoding, the official real-time inference).

    The first chunk is numbered ``0, 1, ...``; every later chunk starts at the number of entries the cache kept
    before it (anchors so far + tokens of the open sentence). A full masked forward with these ``position_ids``
    reproduces compact cached decoding (the definition its tests recompute).
    """
    batch, length = is_anchor.shape
    if sum(chunk_sizes) != length or any(size <= 0 for size in chunk_sizes):
        raise ValueError(f"chunk_sizes {chunk_sizes} must be positive and sum to the length {length}")
    is_anchor = is_anchor.bool()
    order = torch.arange(length, device=is_anchor.device)
    positions, start = [], 0
    for size in chunk_sizes:
        if start == 0:
            kept = torch.zeros(batch, dtype=torch.long, device=is_anchor.device)
        else:
            seen = is_anchor[:, :start]
            last_anchor = torch.where(seen, order[:start], -1).amax(dim=1)
            kept = seen.sum(dim=1) + (start - 1 - last_anchor)
        positions.append(kept[:, None] + order[:size])
        start += size
    return torch.cat(positions, dim=1)

