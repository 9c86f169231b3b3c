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

Memory: a dense mask is ``[batch, 1, q_len, kv_len]``, quadratic in the length. With sdpa the model builds it once
per forward as an additive mask shared by all layers (torch would otherwise turn a boolean mask into a float copy in
every layer and keep each copy for the backward pass); past :data:`DENSE_MASK_MAX_ELEMENTS` it passes an
:class:`AnchorAttentionMask` instead, whose rows each layer builds block by block from the per-token metadata (O(L)
memory, see ``modeling_anchor_llama.chunked_sdpa_attention``). Flex attention gets a block-sparse ``BlockMask``.

Only stdlib / torch / transformers imports: this file travels with checkpoints for ``trust_remote_code``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .configuration_anchor_llama import ANCHOR_ATTN_IMPLEMENTATIONS


# A dense sdpa mask of at most this many entries (batch x q_len x kv_len) is built once per forward; larger ones are
# built in blocks of about this many entries inside each layer (bool 1 MiB + torch's float copy 4 MiB per block).
DENSE_MASK_MAX_ELEMENTS = 1 << 20


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
    batch, length = is_anchor.shape
    if length == 1 and anchors_before is not None:
        # A decode step (few ops: this runs once per generated token): the token's sentence is the open one.
        segment = anchors_before[:, None]
    else:
        anchors = is_anchor.long()
        # Exclusive cumulative sum: an anchor keeps the id of the sentence it closes.
        segment = torch.cumsum(anchors, dim=1) - anchors
        if anchors_before is not None:
            segment = segment + anchors_before[:, None].to(segment.device)
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


def decode_step_mask(queries: AnchorTokenInfo, keys: AnchorTokenInfo, variant: str = "v1") -> torch.BoolTensor | None:
    """The AnSAN mask ``[batch, 1, 1, kv_len]`` of a one-token chunk, or ``None`` when the token sees every key.

    Built straight from the rule, without the generic builder (it runs at every decode step): the keys are the kept
    cache slots, all earlier than the query, then the query itself (AnchorLlama's layout), so causality holds by
    construction. After pruning the slots are anchors + the open sentence, so a non-anchor token in an unpadded
    batch sees them all: ``None``, and sdpa runs exactly as a plain Llama decode step does.
    """
    through_anchor = keys.is_anchor if variant == "v0" else keys.is_anchor & ~queries.is_anchor
    visible = keys.valid & ((keys.segment == queries.segment) | through_anchor)
    if bool(visible.all()):
        return None
    visible[:, -1] = True  # itself (also a padding token, so that no row is empty)
    return visible[:, None, None, :]


def causal_mask_function_from_info(queries: AnchorTokenInfo, keys: AnchorTokenInfo) -> Callable:
    """Plain causal + padding mask over the same metadata (the anchor-free reference used in tests/benchmarks)."""

    def plain_mask(batch_idx, head_idx, q_idx, kv_idx):
        q_index = queries.index[batch_idx, q_idx]
        kv_index = keys.index[batch_idx, kv_idx]
        return ((kv_index <= q_index) & keys.valid[batch_idx, kv_idx]) | (kv_index == q_index)

    return plain_mask


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
    lazy: bool = False,
):
    """The 4D mask a Transformers attention back-end expects, built by ``masking_utils``' own builders.

    Returns ``[batch, 1, q_len, kv_len]`` bool (sdpa), additive float of ``dtype`` (eager) or a flex ``BlockMask``.
    With ``lazy=True`` and sdpa, a mask over :data:`DENSE_MASK_MAX_ELEMENTS` entries comes back as an
    :class:`AnchorAttentionMask` (built block by block in the layers). Offsets are 0 because the metadata already
    carries every token's stream index.
    """
    name = check_attn_implementation(attn_implementation)
    if mask_function is None:
        mask_function = ansan_mask_function(queries, keys, variant)
    batch_size, q_length = queries.index.shape
    kv_length = keys.index.shape[1]
    if lazy and name == "sdpa" and batch_size * q_length * kv_length > DENSE_MASK_MAX_ELEMENTS:
        return AnchorAttentionMask(mask_function, batch_size, q_length, kv_length, queries.index.device)
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


class AnchorAttentionMask:
    """The AnSAN mask of one forward, never materialised whole: :meth:`rows` builds a block of query rows.

    Passed to the attention layers instead of a 4D tensor when the dense mask would exceed
    :data:`DENSE_MASK_MAX_ELEMENTS`; ``AnchorLlamaAttention`` then runs sdpa one block of queries at a time.

    Args:
        mask_function: a ``masking_utils`` mask function over the forward's metadata (absolute query rows).
        batch_size, q_length, kv_length: the mask's shape ``[batch, 1, q_length, kv_length]``.
        device: where the blocks are built.
        max_elements: the size of one block (``batch x rows x kv_length``); ``None`` = :data:`DENSE_MASK_MAX_ELEMENTS`.
    """

    def __init__(self, mask_function: Callable, batch_size: int, q_length: int, kv_length: int, device,
                 max_elements: int | None = None):
        self.mask_function = mask_function
        self.shape = (batch_size, 1, q_length, kv_length)
        self.device = device
        self.max_elements = DENSE_MASK_MAX_ELEMENTS if max_elements is None else max_elements

    def block_rows(self) -> int:
        """Query rows per block (at least 1)."""
        batch_size, _, _, kv_length = self.shape
        return max(1, self.max_elements // max(1, batch_size * kv_length))

    def rows(self, start: int, end: int, kv_end: int | None = None) -> torch.BoolTensor:
        """``[batch, 1, end - start, kv_end]`` bool: query rows ``start:end`` against the first ``kv_end`` keys."""
        batch_size, _, _, kv_length = self.shape
        return sdpa_mask(
            batch_size=batch_size,
            q_length=end - start,
            kv_length=kv_length if kv_end is None else kv_end,
            q_offset=start,
            mask_function=self.mask_function,
            attention_mask=None,
            allow_is_causal_skip=False,
            device=self.device,
        )

    def dense(self) -> torch.BoolTensor:
        """The whole ``[batch, 1, q_length, kv_length]`` mask (tests, small inputs)."""
        return self.rows(0, self.shape[2])


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
    "DENSE_MASK_MAX_ELEMENTS",
    "AnchorAttentionMask",
    "AnchorTokenInfo",
    "find_anchor_tokens",
    "chunk_token_info",
    "ansan_mask_function",
    "decode_step_mask",
    "causal_mask_function_from_info",
    "check_attn_implementation",
    "compact_position_ids",
    "build_anchor_attention_mask",
    "dense_ansan_reference",
]
