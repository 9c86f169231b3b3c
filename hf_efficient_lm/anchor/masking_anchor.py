"""The AnSAN (anchor-based self-attention) mask, written as a ``transformers.masking_utils`` mask function.

Rule (AnLLM, official training code ``llama_sft_forward_thisversion_new.py``; the paper's Figure 2 agrees). With
``is_anchor[i]`` marking anchors and ``segment[i] = number of anchors strictly before i`` (an anchor carries the id
of the sentence it closes), query ``i`` may attend key ``j`` iff

    j <= i  and  j is not padding  and  ( segment[j] == segment[i]  or  (is_anchor[j] and not is_anchor[i]) )

variant ``"v0"`` (older file of the same repository) drops ``not is_anchor[i]``: anchors also see earlier anchors.

Tokens are described by per-row metadata (:class:`AnchorTokenInfo`), not column numbers, because the cache holds a
pruned, non-contiguous set of slots. A token always sees itself (padding too): no row is empty, so sdpa / eager /
flex agree. Past :data:`DENSE_MASK_MAX_ELEMENTS` sdpa gets a lazy :class:`AnchorAttentionMask` (O(L) memory).
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

    def map(self, fn: Callable) -> "AnchorTokenInfo":
        """The same fields, each passed through ``fn`` (a row selection, a gather, a clone, ...)."""
        return AnchorTokenInfo(*(fn(t) for t in vars(self).values()))

    @staticmethod
    def cat(first: "AnchorTokenInfo", second: "AnchorTokenInfo") -> "AnchorTokenInfo":
        return AnchorTokenInfo(*(torch.cat(pair, dim=1) for pair in zip(vars(first).values(), vars(second).values())))


def find_anchor_tokens(input_ids: torch.LongTensor, anchor_token_ids: list[int] | torch.Tensor) -> torch.BoolTensor:
    """``[batch, length]`` bool: which tokens of ``input_ids`` are anchors."""
    return torch.isin(input_ids, torch.as_tensor(anchor_token_ids, dtype=input_ids.dtype, device=input_ids.device))


def chunk_token_info(is_anchor: torch.BoolTensor, valid: torch.BoolTensor, first_index: int = 0,
                     anchors_before: torch.LongTensor | None = None) -> AnchorTokenInfo:
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


def _visible(queries: AnchorTokenInfo, keys: AnchorTokenInfo, variant: str) -> torch.BoolTensor:
    """The AnSAN rule on broadcastable metadata (queries' fields against keys' fields)."""
    through_anchor = keys.is_anchor if variant == "v0" else keys.is_anchor & ~queries.is_anchor
    visible = (keys.index <= queries.index) & keys.valid & ((keys.segment == queries.segment) | through_anchor)
    return visible | (keys.index == queries.index)  # itself (also a padding token, so that no row is empty)


def ansan_mask_function(queries: AnchorTokenInfo, keys: AnchorTokenInfo, variant: str = "v1") -> Callable:
    """A ``masking_utils`` mask function ``(batch_idx, head_idx, q_idx, kv_idx) -> bool`` for the AnSAN rule;
    ``q_idx`` / ``kv_idx`` index ``queries`` ``[batch, q_len]`` / ``keys`` ``[batch, kv_len]`` (broadcast or vmap)."""

    def anchor_mask(batch_idx, head_idx, q_idx, kv_idx):
        return _visible(queries.map(lambda t: t[batch_idx, q_idx]), keys.map(lambda t: t[batch_idx, kv_idx]), variant)

    return anchor_mask


def decode_step_mask(queries: AnchorTokenInfo, keys: AnchorTokenInfo, variant: str = "v1") -> torch.BoolTensor | None:
    """The AnSAN mask ``[batch, 1, 1, kv_len]`` of a one-token chunk (queries ``[batch, 1]``), without the generic
    builder (it runs every decode step); ``None`` when the token sees every key, as a non-anchor token of an
    unpadded batch does over a pruned cache: sdpa then runs as a plain Llama decode step does."""
    visible = _visible(queries, keys, variant)
    return None if bool(visible.all()) else visible[:, None, None, :]


def check_attn_implementation(attn_implementation: str | None) -> str:
    """Return the implementation name, or raise a clear error for back-ends that cannot take the AnSAN mask."""
    name = attn_implementation or "sdpa"
    if name not in ANCHOR_ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={name!r} cannot apply the anchor (AnSAN) attention mask: it only "
                         f"supports causal and padding masks. Use one of {ANCHOR_ATTN_IMPLEMENTATIONS}.")
    return name


def build_anchor_attention_mask(attn_implementation: str | None, queries: AnchorTokenInfo, keys: AnchorTokenInfo,
                                variant: str = "v1", dtype: torch.dtype = torch.float32,
                                mask_function: Callable | None = None, lazy: bool = False):
    """The 4D mask of a Transformers attention back-end, by ``masking_utils``' builders (``mask_function`` defaults to
    :func:`ansan_mask_function`): ``[batch, 1, q_len, kv_len]`` bool (sdpa), additive float of ``dtype`` (eager) or
    a flex ``BlockMask``; with ``lazy=True``, an sdpa mask over :data:`DENSE_MASK_MAX_ELEMENTS` entries is an
    :class:`AnchorAttentionMask`."""
    name = check_attn_implementation(attn_implementation)
    mask_function = mask_function or ansan_mask_function(queries, keys, variant)
    (batch_size, q_length), kv_length = queries.index.shape, keys.index.shape[1]
    if lazy and name == "sdpa" and batch_size * q_length * kv_length > DENSE_MASK_MAX_ELEMENTS:
        return AnchorAttentionMask(mask_function, batch_size, q_length, kv_length, queries.index.device)
    kwargs = {"sdpa": {"allow_is_causal_skip": False}, "eager": {"dtype": dtype}}.get(name, {})
    return ALL_MASK_ATTENTION_FUNCTIONS[name](batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                                              mask_function=mask_function, attention_mask=None,
                                              device=queries.index.device, **kwargs)


class AnchorAttentionMask:
    """The AnSAN mask ``[batch, 1, q_length, kv_length]`` of one forward, never materialised whole: :meth:`rows` builds
    a block of query rows (``mask_function`` over the forward's metadata, blocks of ``max_elements`` = batch x rows x
    kv_length entries); ``AnchorLlamaAttention`` runs sdpa one block at a time."""

    def __init__(self, mask_function: Callable, batch_size: int, q_length: int, kv_length: int, device,
                 max_elements: int | None = None):
        self.mask_function = mask_function
        self.shape = (batch_size, 1, q_length, kv_length)
        self.device = device
        self.max_elements = DENSE_MASK_MAX_ELEMENTS if max_elements is None else max_elements

    def block_rows(self) -> int:
        return max(1, self.max_elements // max(1, self.shape[0] * self.shape[3]))

    def rows(self, start: int, end: int, kv_end: int | None = None) -> torch.BoolTensor:
        """``[batch, 1, end - start, kv_end]`` bool: query rows ``start:end`` against the first ``kv_end`` keys."""
        batch_size, _, _, kv_length = self.shape
        return sdpa_mask(batch_size=batch_size, q_length=end - start, kv_length=kv_length if kv_end is None else kv_end,
                         q_offset=start, mask_function=self.mask_function, attention_mask=None,
                         allow_is_causal_skip=False, device=self.device)

    def dense(self) -> torch.BoolTensor:
        """The whole ``[batch, 1, q_length, kv_length]`` mask (tests, small inputs)."""
        return self.rows(0, self.shape[2])
