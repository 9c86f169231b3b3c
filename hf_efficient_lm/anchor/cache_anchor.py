"""``AnchorCache``: a Transformers ``Cache`` that drops finished sentences' non-anchor keys/values (exact under AnSAN)."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .masking_anchor import AnchorTokenInfo


class AnchorCacheLayer(DynamicLayer):
    """One layer's keys/values ``[batch, kv_heads, slots, head_dim]``; returns the full set, stores the kept slots."""

    is_croppable = False

    def update(self, key_states, value_states, *args, keep_index: torch.LongTensor | None = None, **kwargs):
        """Append ``key_states``/``value_states`` ``[batch, kv_heads, q_len, head_dim]``; return all slots + new
        tokens (what this step attends), then keep only the slots listed in ``keep_index`` ``[batch, kept]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys = key_states[:, :, :0]  # no slots yet: [batch, kv_heads, 0, head_dim]
            self.values = value_states[:, :, :0]
        full_keys = torch.cat([self.keys, key_states], dim=-2)
        full_values = torch.cat([self.values, value_states], dim=-2)
        if keep_index is None:
            self.keys, self.values = full_keys, full_values
        else:
            index = keep_index.to(full_keys.device)[:, None, :, None]
            self.keys = full_keys.gather(2, index.expand(-1, full_keys.shape[1], -1, full_keys.shape[3]))
            self.values = full_values.gather(2, index.expand(-1, full_values.shape[1], -1, full_values.shape[3]))
        return full_keys, full_values

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError("AnchorCache cannot be cropped: pruned sentences cannot be restored (assisted / "
                             "speculative decoding needs a croppable cache).")


class AnchorCache(Cache):
    """KV cache for AnchorLlama: after every chunk each row keeps its anchors and its open sentence (the tokens after
    its last anchor) and drops the rest, padding too. No later token can attend anything else under the AnSAN mask,
    so decoding through it gives the logits of the full masked forward.

    Keys keep the rotary phase of their absolute position and ``get_seq_length()`` counts tokens *seen*, not kept:
    generate's position ids and input slicing stay absolute, as in training. Rows keep different numbers of slots,
    left-aligned, the unused tail marked invalid in ``slot_info`` (the model's mask hides it). The model calls
    :meth:`begin_chunk` once per forward (slot metadata is shared by all layers); the layers call ``update``.

    Args:
        config: the model config (``num_hidden_layers`` is read).
        prune: ``False`` keeps every token (still exact under the AnSAN mask; a reference for tests/benchmarks).

    Attributes:
        seen_tokens (`int`): tokens fed so far (the padded width of all chunks) = next absolute position.
        slot_info (`AnchorTokenInfo`): metadata ``[batch, slots]`` of the kept slots.
        anchors_seen (`torch.LongTensor`): ``[batch]`` anchors seen per row = id of the open sentence.
    """
    max_cache_len = -1  # unbounded, as a DynamicCache (PEFT's prefix tuning reads it; the model then refuses a prefix)

    def __init__(self, config=None, num_hidden_layers: int | None = None, prune: bool = True):
        if num_hidden_layers is None:
            if config is None:
                raise ValueError("AnchorCache needs a config or num_hidden_layers")
            num_hidden_layers = config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[AnchorCacheLayer() for _ in range(num_hidden_layers)])
        self.prune = prune
        self.reset()

    def begin_chunk(self, chunk: AnchorTokenInfo) -> AnchorTokenInfo:
        """Register a chunk's metadata ``[batch, q_len]`` (built with ``first_index=seen_tokens``, ``anchors_before=
        anchors_seen``) before the layers run. Returns the metadata of every key they attend this step (kept slots,
        then the chunk) and plans which to keep afterwards (each layer's ``update`` applies the plan)."""
        batch = chunk.index.shape[0]
        if self.slot_info is None:
            self.slot_info = chunk.map(lambda t: t[:, :0])  # no slots yet
            self.anchors_seen = torch.zeros(batch, dtype=torch.long, device=chunk.index.device)
        elif self.slot_info.index.shape[0] != batch:
            raise ValueError(f"AnchorCache holds a batch of {self.slot_info.index.shape[0]} rows but the input has "
                             f"{batch}; repeat its rows (batch_repeat_interleave) to reuse it for several.")
        keys = AnchorTokenInfo.cat(self.slot_info, chunk)
        anchors_seen = self.anchors_seen + chunk.is_anchor.sum(dim=1)
        keep = keys.valid & (keys.is_anchor | (keys.segment == anchors_seen[:, None])) if self.prune else keys.valid
        if bool(keep.all()):
            self._keep_index = None
            self.slot_info = keys
        else:
            kept_per_row = keep.sum(dim=1)
            width = int(kept_per_row.max()) if batch > 0 else 0
            # Left-align the kept slots of each row, in their original order (a stable sort: kept before dropped).
            self._keep_index = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :width]
            slot_valid = torch.arange(width, device=keep.device)[None, :] < kept_per_row[:, None]
            kept = keys.map(lambda t: t.gather(1, self._keep_index))
            self.slot_info = AnchorTokenInfo(index=torch.where(slot_valid, kept.index, -1), segment=kept.segment,
                                             is_anchor=kept.is_anchor & slot_valid, valid=slot_valid)
        self.anchors_seen = anchors_seen
        self.seen_tokens += chunk.index.shape[1]
        return keys

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        return self.layers[layer_idx].update(key_states, value_states, keep_index=self._keep_index)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen so far (= next absolute position), *not* the number kept; see :meth:`cached_tokens`."""
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        held = 0 if self.slot_info is None else self.slot_info.index.shape[1]
        return held + query_length, 0

    def cached_tokens(self) -> int:
        """Token positions each layer holds (summed over the batch rows; alignment padding not counted)."""
        return sum(self.cached_tokens_per_row())

    def cached_tokens_per_row(self) -> list[int]:
        return [] if self.slot_info is None else self.slot_info.valid.sum(dim=1).tolist()

    def kv_bytes(self) -> int:
        """Bytes of the key/value tensors actually allocated, all layers (includes per-row alignment padding)."""
        tensors = [t for layer in self.layers if layer.is_initialized for t in (layer.keys, layer.values)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _map_rows(self, fn) -> None:
        if self.slot_info is not None:
            self.slot_info = self.slot_info.map(fn)
            self.anchors_seen = fn(self.anchors_seen)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self._map_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self._map_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self._map_rows(lambda t: t[indices.to(t.device)])

    def reset(self):
        super().reset()
        self.seen_tokens = 0
        self.slot_info: AnchorTokenInfo | None = None
        self.anchors_seen: torch.LongTensor | None = None  # [batch]
        self._keep_index: torch.LongTensor | None = None  # [batch, kept]: the slots each layer's update keeps
