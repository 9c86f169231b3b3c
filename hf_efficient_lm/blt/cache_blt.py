"""``BLTCache``: the state incremental BLT generation keeps between steps, and its updates (rows advance together).

Byte-level and latent DynamicCaches, plus per-row state (a row that did not close a patch at a step leaves a masked
latent hole). The model calls :meth:`~BLTCache.prefill` after the prompt's full forward, then per byte
:meth:`~BLTCache.add_byte`, :meth:`~BLTCache.next_byte_opens_patch` (:func:`boundary_rule`), :meth:`~BLTCache.close_patch`."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from .configuration_blt_lm import BLTConfig
from .patcher_blt import boundary_rule, rule_settings


class BLTCache:
    """Byte- and patch-level caches of one batch plus each row's patch state (see the module docstring)."""

    is_compileable = False
    # Per-row tensors: beam search and batch surgery move each with the KV caches (or a row keeps another's patches).
    ROW_FIELDS = ("byte_ids", "byte_mask", "encoder_states", "next_position", "open_start", "last_entropy",
                  "latent_mask", "latent_next_position", "decoder_patch")

    def __init__(self, config: BLTConfig):
        self.config = config
        self.entropy, self.encoder, self.decoder, self.latent = (DynamicCache(config=sub) for sub in (
            config.entropy_config, config.encoder_config, config.decoder_config, config.global_config))
        self.num_bytes = 0  # slots seen, padding included
        self.byte_ids = None  # [B, T] ids (padding zeroed)
        self.byte_mask = None  # [B, T]
        self.encoder_states = None  # [B, T, D_E]
        self.next_position = None  # [B] position of the next byte = real bytes seen (of its document)
        self.open_start = None  # [B] slot where the open patch starts
        self.last_entropy = None  # [B] next-byte entropy after the newest byte
        self.latent_mask = None  # [B, S] valid latent slots
        self.latent_next_position = None  # [B] closed patches (of the document)
        self.decoder_patch = None  # [B, D_G] latent output the decoder reads

    def prefill(self, ids, attention_mask, encoder_states, starts, entropies, latent, decoder_patch_ids,
                next_position) -> None:
        """Take over the state of the prompt's full forward: ids / attention_mask ``[B, N]`` (left padding only),
        encoder_states ``[B, N, D_E]``, start mask ``[B, N + 1]``, entropies ``[B, N]`` or None, latent ``[B, P, D_G]``,
        the patch each byte's decoder reads ``[B, N]`` and the next byte's position ``[B]``. Latent slots of patches not
        yet complete are masked until :meth:`close_patch`, those of earlier documents (document masking) for good."""
        batch, length = ids.shape
        self.num_bytes, self.byte_ids, self.encoder_states, self.next_position = length, ids, encoder_states, next_position
        slot = torch.arange(length + 1, device=ids.device).expand(batch, -1)
        doc_start = (length - next_position).unsqueeze(1)  # slot of the next byte's document (else the first real)
        self.byte_mask = attention_mask * (slot[:, :length] >= doc_start)
        self.open_start = torch.where(starts, slot, torch.full_like(slot, -1)).amax(dim=1)
        self.last_entropy = entropies[:, -1] if entropies is not None else None
        # Patches that can no longer change: every patch that ends before the open one.
        completed = starts.long().sum(dim=1) - 1
        before = (starts & (slot < doc_start)).long().sum(dim=1, keepdim=True)  # patches of earlier documents
        latent_slot = torch.arange(latent.shape[1], device=ids.device)
        self.latent_mask = ((latent_slot < completed.unsqueeze(1)) & (latent_slot >= before)).long()
        self.latent_next_position = completed - before[:, 0]
        last = decoder_patch_ids[:, -1].clamp(min=0).view(batch, 1, 1).expand(batch, 1, latent.shape[-1])
        self.decoder_patch = latent.gather(1, last).squeeze(1)

    def add_byte(self, new_ids: torch.LongTensor) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Append one byte per row (``[B]``); returns its positions ``[B, 1]`` and the 2-D attention mask over all
        slots ``[B, T]`` for the KV-cache steps (None without padding). A row whose new byte opens a document
        (position 0, document masking) stops seeing every earlier slot, byte and latent."""
        position = self.next_position.view(-1, 1)
        slot = torch.arange(self.num_bytes, device=position.device)
        self.byte_mask = torch.cat([self.byte_mask * (slot >= self.num_bytes - position), torch.ones_like(position)], 1)
        self.byte_ids = torch.cat([self.byte_ids, new_ids.view(-1, 1)], dim=1)
        fresh = self.next_position == 0
        self.latent_mask = self.latent_mask * ~fresh.view(-1, 1)
        self.latent_next_position = torch.where(fresh, 0, self.latent_next_position)
        ends = new_ids == self.config.eos_token_id if self.config.document_mask else torch.zeros_like(fresh)
        self.next_position = torch.where(ends, 0, self.next_position + 1)
        self.num_bytes += 1
        return position, (self.byte_mask if bool((self.byte_mask == 0).any()) else None)

    def next_byte_opens_patch(self, entropy: torch.Tensor | None) -> torch.BoolTensor:
        """Does the byte after the newest one open a patch, i.e. does each row's open patch end with the newest byte?
        ``entropy [B]``: the entropy model's next-byte entropy after the newest byte (entropy modes). ``[B]`` bool."""
        c = self.config
        previous = self.last_entropy if self.last_entropy is not None or entropy is None else torch.zeros_like(entropy)
        opens = boundary_rule(c.patching_mode, self.next_position, entropy=entropy, prev_entropy=previous,
                              byte=self.byte_ids[:, -1], prev_byte=self.byte_ids[:, -2], **rule_settings(c))
        if entropy is not None:
            self.last_entropy = entropy
        long = c.max_patch_length is not None and (self.num_bytes - self.open_start) % c.max_patch_length == 0
        return opens | long

    def add_encoder_state(self, state: torch.Tensor) -> None:
        """The newest byte's encoder output ``[B, 1, D_E]``."""
        self.encoder_states = torch.cat([self.encoder_states, state], dim=1)

    def close_patch(self, closing: torch.BoolTensor):
        """Rows ``closing [B]`` close their open patch with the newest byte and take one latent step (the others write
        a masked hole). Returns the patch's byte slots and validity ``[B, 1, L]`` into :attr:`encoder_states`, the
        latent positions ``[B, 1]`` and the latent slot mask ``[B, S + 1]``; then the next byte opens the new patch."""
        batch = closing.shape[0]
        low = int(self.open_start[closing].min())
        slots = torch.arange(low, self.num_bytes, device=closing.device)
        index = slots.view(1, 1, -1).expand(batch, 1, -1)
        valid = (slots.view(1, -1) >= self.open_start.view(batch, 1)).view(batch, 1, -1)
        self.latent_mask = torch.cat([self.latent_mask, closing.long().view(batch, 1)], dim=1)
        position = self.latent_next_position.view(batch, 1)
        self.latent_next_position = self.latent_next_position + closing.long()
        self.open_start = torch.where(closing, torch.full_like(self.open_start, self.num_bytes), self.open_start)
        return index, valid, position, self.latent_mask

    def read_latent(self, closing: torch.BoolTensor, latent: torch.Tensor) -> None:
        """Rows ``closing`` decode from the latent state ``[B, D_G]`` of the patch they just closed."""
        self.decoder_patch = torch.where(closing.view(-1, 1), latent, self.decoder_patch)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.num_bytes  # bytes seen so far (slots, padding included)

    def _map_rows(self, kv_method: str, arg, fn) -> None:
        for cache in (self.entropy, self.encoder, self.decoder, self.latent):
            getattr(cache, kv_method)(arg)
        for name in self.ROW_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row ``i`` becomes old row ``beam_idx[i]`` (``beam_idx [B]``) in every cache and per-row state."""
        self._map_rows("reorder_cache", beam_idx, lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each row ``repeats`` times in place (``[B, ...] -> [B * repeats, ...]``)."""
        self._map_rows("batch_repeat_interleave", repeats, lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only rows ``indices`` (``[B']`` long, or ``[B]`` bool) in place."""
        self._map_rows("batch_select_indices", indices, lambda t: t[indices.to(t.device)])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError("BLTCache cannot be cropped: closed patches are already folded into the latent cache "
                             "(assisted / speculative decoding needs a croppable cache)")


__all__ = ["BLTCache"]
