"""The AnSAN (anchor-based self-attention) mask, written as a ``transformers.masking_utils`` mask function.

Rule (AnLLM, official training code ``llama_sft_forward_thisversion_new.py``; the paper's Figure 2 agrees). With
``is_anchor[i]`` marking anchors and ``segment[i] = number of anchors strictly before i`` (an anchor carries the id
of the sentence it closes), query ``i`` may attend key ``j`` iff

    j <= i  and  j is not padding  and  ( segment[j] == segment[i]  or  (is_anchor[j] and not is_anchor[i]) )

variant ``"v0"`` (older file of the same repository) drops ``not is_anchor[i]``: anchors also see earlier anchors.

Every token (query and key) is described by per-row metadata instead of its column number, because the anchor
cache holds a pruned, non-contiguous set of slots: ``index`` (its position in the stream of tokens fed so far,
used for causality), ``segment``, ``is_anchor`` and ``valid``. The same function therefore builds the training mask
(keys = queries), the prefill mask, and the mask of a chunk fed against a pruned cache. A token may always attend
itself (also a padding token), so no row of the mask is empty: padding rows give finite garbage that is never used,
and sdpa / eager / flex all return the same numbers.

Only stdlib / torch / transformers imports: this file travels with checkpoints for ``trust_remote_code``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from .configuration_anchor_llama import ANCHOR_ATTN_IMPLEMENTATIONS


@dataclass
class AnchorTokenInfo:
    """Per-token metadata of a set of tokens (queries of a chunk, or cache slots + chunk as keys).

    All tensors are ``[batch, length]``.
        index: position of the token in the stream of tokens fed so far (``-1`` for empty cache slots).
        segment: sentence id (number of anchors before the token in its row).
        is_anchor: the token is an anchor (never true for padding).
        valid: the token is real (not padding, not an empty cache slot).
    """

    index: torch.LongTensor
    segment: torch.LongTensor
    is_anchor: torch.BoolTensor
    valid: torch.BoolTensor

    @staticmethod
    def cat(first: "AnchorTokenInfo", second: "AnchorTokenInfo") -> "AnchorTokenInfo":
        return AnchorTokenInfo(
            index=torch.cat([first.index, second.index], dim=1),
            segment=torch.cat([first.segment, second.segment], dim=1),
            is_anchor=torch.cat([first.is_anchor, second.is_anchor], dim=1),
            valid=torch.cat([first.valid, second.valid], dim=1),
        )


def find_anchor_tokens(input_ids: torch.LongTensor, anchor_token_ids: list[int] | torch.Tensor) -> torch.BoolTensor:
    """``[batch, length]`` bool: which tokens of ``input_ids`` are anchors."""
    if isinstance(anchor_token_ids, torch.Tensor):
        anchor_ids = anchor_token_ids.to(input_ids.device)
    else:
        if len(anchor_token_ids) == 0:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        anchor_ids = torch.tensor(list(anchor_token_ids), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, anchor_ids)


def chunk_token_info(
    is_anchor: torch.BoolTensor,
    valid: torch.BoolTensor,
    first_index: int = 0,
    anchors_before: torch.LongTensor | None = None,
) -> AnchorTokenInfo:
    """Metadata of a chunk of ``length`` new tokens.

    Args:
        is_anchor: ``[batch, length]`` anchor flags (padding is never an anchor; it is masked out here).
        valid: ``[batch, length]`` ``True`` for real tokens.
        first_index: how many tokens the stream held before this chunk (the cache's seen-token count).
        anchors_before: ``[batch]`` anchors already seen in each row (``None`` = 0), i.e. the open sentence's id.
    """
    is_anchor = is_anchor & valid
    anchors = is_anchor.long()
    # Exclusive cumulative sum: an anchor keeps the id of the sentence it closes.
    segment = torch.cumsum(anchors, dim=1) - anchors
    if anchors_before is not None:
        segment = segment + anchors_before[:, None].to(segment.device)
    batch, length = is_anchor.shape
    index = torch.arange(first_index, first_index + length, device=is_anchor.device).expand(batch, length)
    return AnchorTokenInfo(index=index, segment=segment, is_anchor=is_anchor, valid=valid)


def ansan_mask_function(queries: AnchorTokenInfo, keys: AnchorTokenInfo, variant: str = "v1") -> Callable:
    """A ``masking_utils`` mask function ``(batch_idx, head_idx, q_idx, kv_idx) -> bool`` for the AnSAN rule.

    ``q_idx`` / ``kv_idx`` index the rows of ``queries`` / ``keys`` (``[batch, q_len]`` / ``[batch, kv_len]``), so
    it works both with the broadcast (non-vmap) path of ``sdpa_mask`` and with scalar indices (vmap, flex).
    """
    anchors_see_anchors = variant == "v0"

    def anchor_mask(batch_idx, head_idx, q_idx, kv_idx):
        q_index = queries.index[batch_idx, q_idx]
        kv_index = keys.index[batch_idx, kv_idx]
        same_sentence = queries.segment[batch_idx, q_idx] == keys.segment[batch_idx, kv_idx]
        through_anchor = keys.is_anchor[batch_idx, kv_idx]
        if not anchors_see_anchors:
            through_anchor = through_anchor & ~queries.is_anchor[batch_idx, q_idx]
        visible = (kv_index <= q_index) & keys.valid[batch_idx, kv_idx] & (same_sentence | through_anchor)
        return visible | (kv_index == q_index)

    return anchor_mask


def causal_mask_function_from_info(queries: AnchorTokenInfo, keys: AnchorTokenInfo) -> Callable:
    """Plain causal + padding mask over the same metadata (the anchor-free reference used in tests/benchmarks)."""

    def plain_mask(batch_idx, head_idx, q_idx, kv_idx):
        q_index = queries.index[batch_idx, q_idx]
        kv_index = keys.index[batch_idx, kv_idx]
        return ((kv_index <= q_index) & keys.valid[batch_idx, kv_idx]) | (kv_index == q_index)

    return plain_mask


def check_attn_implementation(attn_implementation: str | None) -> str:
    """Return the implementation name, or raise a clear error for back-ends that cannot take the AnSAN mask."""
    name = attn_implementation or "sdpa"
    if name not in ANCHOR_ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={name!r} cannot apply the anchor (AnSAN) attention mask: it only supports causal "
            f"and padding masks. Use one of {ANCHOR_ATTN_IMPLEMENTATIONS}."
        )
    return name


def build_anchor_attention_mask(
    attn_implementation: str | None,
    queries: AnchorTokenInfo,
    keys: AnchorTokenInfo,
    variant: str = "v1",
    dtype: torch.dtype = torch.float32,
    mask_function: Callable | None = None,
):
    """The 4D mask a Transformers attention back-end expects, built by ``masking_utils``' own builders.

    Returns ``[batch, 1, q_len, kv_len]`` bool (sdpa), additive float of ``dtype`` (eager) or a flex ``BlockMask``.
    Offsets are 0 because the metadata already carries every token's stream index.
    """
    name = check_attn_implementation(attn_implementation)
    if mask_function is None:
        mask_function = ansan_mask_function(queries, keys, variant)
    batch_size, q_length = queries.index.shape
    kv_length = keys.index.shape[1]
    builder = ALL_MASK_ATTENTION_FUNCTIONS[name]
    kwargs = dict(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        mask_function=mask_function,
        attention_mask=None,
        device=queries.index.device,
    )
    if name == "sdpa":
        kwargs["allow_is_causal_skip"] = False
    elif name == "eager":
        kwargs["dtype"] = dtype
    return builder(**kwargs)


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


__all__ = [
    "AnchorTokenInfo",
    "find_anchor_tokens",
    "chunk_token_info",
    "ansan_mask_function",
    "causal_mask_function_from_info",
    "check_attn_implementation",
    "build_anchor_attention_mask",
    "dense_ansan_reference",
]
