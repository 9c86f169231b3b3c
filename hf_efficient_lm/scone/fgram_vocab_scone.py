"""The f-gram vocabulary: exact integer keys, longest-suffix matching, save/load (carried by checkpoints).

Representation (mirrors the Apriori miner): level ``n`` (2..K) holds the frequent n-grams as sorted int64 keys
``parent * V + last_token`` where ``parent`` is the n-gram's (n-1)-prefix as a *local* index into level n-1's sorted
key array (level 1 = the token id itself). Because the selected set is closed under prefixes and suffixes (ties are
broken by count desc, length asc), the longest f-gram ending at every position is found with K-1 vectorised
passes: ``local_n[i] = index_of(level_n, local_{n-1}[i-1] * V + x[i])``. Each level-n entry also carries its global
row id (rank order: most frequent first), the row of the f-gram embedding table. Mining and the numpy matcher of
data pipelines live in ``hf_efficient_lm.tools.scone_mining`` (not carried).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .table_scone import CorruptTableError, read_header

INDEX_FILE = "fgram_index.safetensors"
VOCAB_FILE = "fgram_vocab.json"
FORMAT_VERSION = 1
MATCH_BLOCK_TOKENS = 1 << 18  # positions per matching block (see FgramVocab.match)
SCALAR_DICT_KEYS = 1 << 21  # decode-step matcher: dict levels up to this many f-grams (~200 MB), else bisect
# FgramVocab's lookup structures, None until built on first use (the state beside them is rebuilt with them)
_BUILT_ON_FIRST_USE = ("_row_level", "_hash_levels", "_barrier_tensor", "_python_levels")
# what FgramVocab.metadata() derives itself; any other key of a saved vocabulary is the miner's extra_metadata
_METADATA_KEYS = ("format_version", "num_fgrams", "max_len", "vocab_size", "barrier_ids", "tokenizer_fingerprint",
                  "num_per_length", "min_selected_count")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 over a tokenizer's token -> id map (added tokens included): the f-gram keys are only valid for it."""
    payload = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


class TokenizerMismatchError(ValueError):
    """The f-gram vocabulary was mined with a different tokenizer than the one it is used with."""


class KeyHashIndex:
    """Exact lookup of distinct non-negative int64 keys -> their position in ``keys``, in torch on any device.

    Open addressing with linear probing at load factor <= 1/2. On a CPU ``torch.searchsorted`` costs 60-90 ns
    per query (a cache miss per bisection step); here a probe is a gather and a compare and most queries end at the
    first one, so matching runs 1.6-2x faster -- and the same code runs on an accelerator.
    """

    EMPTY = -1

    def __init__(self, keys: torch.Tensor, query_bound: int | None = None):
        """``keys``: LongTensor ``[n]`` of distinct keys >= 0. ``query_bound``: if given, every later query is
        promised to be below it (f-gram queries are below ``|level n-1| * V``), which lets lookups skip half of
        the hash arithmetic when it is at most 2**31."""
        keys = keys.to(torch.int64).reshape(-1)
        if keys.numel() and int(keys.min()) < 0:
            raise ValueError("KeyHashIndex keys must be non-negative")
        self.num_keys, self.bits = keys.numel(), max(4, (2 * keys.numel() - 1).bit_length())
        if self.bits > 31:
            raise ValueError(f"KeyHashIndex holds at most 2**30 keys, got {keys.numel()}")
        self.small_queries = query_bound is not None and query_bound <= (1 << 31)
        home = self._home(keys, small=bool(keys.numel() == 0 or int(keys.max()) < (1 << 31)))
        # Linear probing with the keys inserted in order of their home slot, spilling past the end instead of
        # wrapping around: the i-th key lands in max(its home, the previous key's slot + 1) = i + running max of
        # (home - i). (This order also keeps the longest probe sequence short.)
        order = torch.argsort(home, stable=True)
        home = home.index_select(0, order)
        rank = torch.arange(keys.numel(), device=keys.device)
        slot = rank + torch.cummax(home - rank, dim=0).values if keys.numel() else rank
        size = max(1 << self.bits, int(slot[-1]) + 2 if keys.numel() else 0)  # (+1: the probe after the last key)
        self.slot_keys = torch.full((size,), self.EMPTY, dtype=torch.int64, device=keys.device)
        self.slot_values = torch.full((size,), -1, dtype=torch.int64, device=keys.device)
        self.slot_keys[slot], self.slot_values[slot] = keys.index_select(0, order), order
        # the longest probe sequence any stored key needs: a lookup never has to go further
        self.max_probes = int((slot - home).max()) + 1 if keys.numel() else 1

    def _home(self, keys: torch.Tensor, small: bool) -> torch.Tensor:
        # Fibonacci (multiplicative) hashing modulo 2**31, on 31-bit halves so that no product overflows int64
        # (well defined on every device): the top ``bits`` of ``(k * A) mod 2**31`` with A ~ 2**31 / golden ratio.
        # The high half contributes 0 for keys < 2**31 (``small``), so those take the short form: same slots.
        if small:
            return ((keys * 0x4F1BBCDD) & 0x7FFFFFFF) >> (31 - self.bits)
        low, high = keys & 0x7FFFFFFF, keys >> 31
        mixed = ((low * 0x4F1BBCDD) ^ (high * 0x5BD1E995)) & 0x7FFFFFFF
        return mixed >> (31 - self.bits)

    def __len__(self) -> int:
        return self.num_keys

    def to(self, device) -> "KeyHashIndex":
        moved = object.__new__(KeyHashIndex)
        moved.__dict__.update(self.__dict__)
        moved.slot_keys, moved.slot_values = self.slot_keys.to(device), self.slot_values.to(device)
        return moved

    def index_of(self, query: torch.Tensor) -> torch.Tensor:
        """Position of each query key in ``keys`` (LongTensor like ``query``), -1 where it is absent."""
        if self.num_keys == 0 or query.numel() == 0:
            return torch.full_like(query, -1)
        slot = self._home(query, small=self.small_queries)
        seen = self.slot_keys.index_select(0, slot)
        hit = seen == query
        found = torch.where(hit, self.slot_values.index_select(0, slot), -1)
        # keys that met another key go on probing; those that met an empty slot are absent
        active = ((~hit) & (seen != self.EMPTY)).nonzero().squeeze(1)
        act_query, act_slot = query.index_select(0, active), slot.index_select(0, active)
        for _ in range(self.max_probes - 1):
            if active.numel() == 0:
                break
            act_slot = act_slot + 1
            seen = self.slot_keys.index_select(0, act_slot)
            hit = seen == act_query
            done = hit.nonzero().squeeze(1)
            found.index_copy_(0, active.index_select(0, done),
                              self.slot_values.index_select(0, act_slot.index_select(0, done)))
            go_on = ((~hit) & (seen != self.EMPTY)).nonzero().squeeze(1)
            active = active.index_select(0, go_on)
            act_query, act_slot = act_query.index_select(0, go_on), act_slot.index_select(0, go_on)
        return found


class FgramVocab:
    """The set F of f-grams (token n-grams of length 2..K) with exact keys and the table row of each.

    Attributes:
        vocab_size: ``V``, the key multiplier (token ids must lie in ``[0, V)``).
        max_len: ``K``.
        level_keys: ``level_keys[n-2]`` sorted LongTensor of level-n keys.
        level_rows: ``level_rows[n-2]`` LongTensor of the global row of each level-n key.
        counts: LongTensor ``[S]`` corpus count of every row.
        barrier_ids: token ids no f-gram may contain (EOS/BOS/pad: document boundaries).
        tokenizer_fingerprint: see :func:`tokenizer_fingerprint`; ``None`` when mined without a tokenizer.
        extra_metadata: what the miner recorded (min_count, tokens mined, ...), saved with the vocabulary.
    """

    def __init__(self, *, vocab_size: int, max_len: int, level_keys: Sequence[torch.Tensor],
                 level_rows: Sequence[torch.Tensor], counts: torch.Tensor, barrier_ids: Sequence[int] = (),
                 tokenizer_fingerprint: str | None = None, extra_metadata: dict | None = None):
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (f-grams have length 2..K), got {max_len}")
        if len(level_keys) != max_len - 1 or len(level_rows) != max_len - 1:
            raise ValueError(f"expected {max_len - 1} levels (n = 2..{max_len}), got {len(level_keys)}")
        self.vocab_size, self.max_len = int(vocab_size), int(max_len)
        self.level_keys = [k.to("cpu", torch.int64).contiguous() for k in level_keys]
        self.level_rows = [r.to("cpu", torch.int64).contiguous() for r in level_rows]
        self.counts = counts.to("cpu", torch.int64)
        self.barrier_ids = tuple(int(b) for b in barrier_ids)
        self.tokenizer_fingerprint, self.extra_metadata = tokenizer_fingerprint, dict(extra_metadata or {})
        for n, (keys, rows) in enumerate(zip(self.level_keys, self.level_rows), start=2):
            if keys.shape != rows.shape:
                raise ValueError(f"level {n}: {keys.numel()} keys but {rows.numel()} rows")
        if self.counts.numel() != self.num_fgrams:
            raise ValueError(f"counts has {self.counts.numel()} entries for {self.num_fgrams} f-grams")
        self.__dict__.update(dict.fromkeys(_BUILT_ON_FIRST_USE))

    def __getstate__(self) -> dict:
        """deepcopy / pickle: the lookup structures built on first use (memoryviews among them) are rebuilt there."""
        return {**self.__dict__, **dict.fromkeys(_BUILT_ON_FIRST_USE)}

    @property
    def num_fgrams(self) -> int:
        """``S = |F|``."""
        return sum(int(k.numel()) for k in self.level_keys)

    def __len__(self) -> int:
        return self.num_fgrams

    def num_per_length(self) -> dict[int, int]:
        return {n: int(k.numel()) for n, k in enumerate(self.level_keys, start=2)}

    def __repr__(self) -> str:
        return (f"FgramVocab(num_fgrams={self.num_fgrams}, max_len={self.max_len}, vocab_size={self.vocab_size}, "
                f"per_length={self.num_per_length()}, barrier_ids={list(self.barrier_ids)})")

    # ------------------------------------------------------------------ matching
    def valid_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """BoolTensor like ``input_ids``: positions that may be part of an f-gram (no barrier, no padding)."""
        valid = (input_ids >= 0) & (input_ids < self.vocab_size)
        if self.barrier_ids:
            barriers = self._barrier_tensor  # (one read: a thread on another device may replace it)
            if barriers is None or barriers.device != input_ids.device:
                barriers = self._barrier_tensor = torch.tensor(self.barrier_ids, dtype=input_ids.dtype, device=input_ids.device)
            valid &= ~torch.isin(input_ids, barriers)
        if attention_mask is not None:
            _check_mask_shape(input_ids, attention_mask)
            valid &= attention_mask.to(input_ids.device).bool()
        return valid

    def match(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              document_ids: torch.Tensor | None = None) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Longest f-gram suffix ending at every position.

        Args:
            input_ids: LongTensor ``[B, T]`` (or ``[T]``), any device.
            attention_mask: optional ``[B, T]``; zeros (padding) act as barriers like ``barrier_ids``.
            document_ids: optional ``[B, T]`` (or ``[1, T]``) ids of the document each token belongs to (packed,
                padding-free rows); no f-gram spans two documents.
        Returns:
            ``(rows, lengths)``, both LongTensor ``[B, T]`` on ``input_ids.device``: the matched f-gram's table row
            and length (2..K), or ``-1`` / ``0`` where no f-gram ends at that position.
        """
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dtype.is_floating_point:
            raise TypeError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        squeeze = input_ids.ndim == 1
        if squeeze:
            input_ids = input_ids[None]
            attention_mask = attention_mask[None] if attention_mask is not None else None
            document_ids = document_ids[None] if document_ids is not None and document_ids.ndim == 1 else document_ids
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        device, ids = input_ids.device, input_ids.to(torch.int64)
        valid = self.valid_mask(ids, attention_mask)
        batch, length = ids.shape
        starts = torch.zeros_like(valid)  # first token of each document: the chain "i follows i-1" is cut there
        if document_ids is not None:
            document_ids = document_ids.to(device).expand(batch, length)
            starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        rows = torch.full((batch, length), -1, dtype=torch.int64, device=device)
        lengths = torch.zeros((batch, length), dtype=torch.int64, device=device)
        if length >= 2 and self.num_fgrams:
            levels = self._device_levels(device)
            # blocks of whole rows: the passes' temporaries stay in cache (~10x faster than one huge pass on CPU)
            block = max(1, MATCH_BLOCK_TOKENS // (length + 1))
            for start in range(0, batch, block):
                part = slice(start, start + block)
                self._match_rows(levels, ids[part], valid[part], starts[part], rows[part], lengths[part])
        return (rows[0], lengths[0]) if squeeze else (rows, lengths)

    def _device_levels(self, device: torch.device) -> list[tuple[KeyHashIndex, torch.Tensor]]:
        """Per level: a hash index over its keys and its rows, on ``device`` (built once, on the CPU)."""
        built = self._hash_levels  # (one read: another thread may be building it too)
        if built is None:
            cpu, previous_size = [], self.vocab_size
            for keys, level_rows in zip(self.level_keys, self.level_rows):
                cpu.append((KeyHashIndex(keys, query_bound=previous_size * self.vocab_size), level_rows))
                previous_size = max(1, keys.numel())
            built = self._hash_levels = {"cpu": cpu}
        key = str(device)
        if key not in built:
            built[key] = [(index.to(device), rows.to(device)) for index, rows in built["cpu"]]
        return built[key]

    def _match_rows(self, levels, ids, valid, starts, rows_out, lengths_out) -> None:
        """:meth:`match` for a block of rows ``[b, T]`` (``starts``: a document begins there), written into
        ``rows_out`` / ``lengths_out``."""
        b, length = ids.shape
        # a leading invalid column between rows: in the flat view "i follows i-1" then never crosses a row
        flat = torch.cat([ids.new_full((b, 1), -1), torch.where(valid, ids, -1)], dim=1).reshape(-1)
        flat_starts = torch.cat([starts.new_zeros((b, 1)), starts], dim=1).reshape(-1)
        cuts = bool(flat_starts.any())
        rows = torch.full_like(flat, -1)
        lengths = torch.zeros_like(flat)
        # only positions that still extend a match: (flat position, local id at the current level)
        pos = (flat >= 0).nonzero().squeeze(1)
        local = flat.index_select(0, pos)  # the level-1 "local id" is the token id itself
        for n, (index, level_rows) in enumerate(levels, start=2):
            if len(index) == 0 or pos.numel() < 2:
                break
            # an n-gram ends at i iff i-1 and i both end an (n-1)-gram of F
            adjacent = pos[1:] == pos[:-1] + 1
            if cuts:
                adjacent &= ~flat_starts.index_select(0, pos[1:])
            follows = adjacent.nonzero().squeeze(1)
            end = pos.index_select(0, follows + 1)
            found = index.index_of(local.index_select(0, follows) * self.vocab_size + flat.index_select(0, end))
            hit = (found >= 0).nonzero().squeeze(1)
            pos, local = end.index_select(0, hit), found.index_select(0, hit)
            if pos.numel() == 0:
                break  # suffix closure: no n-gram anywhere => no longer one either
            rows.index_copy_(0, pos, level_rows.index_select(0, local))
            lengths.index_fill_(0, pos, n)
        rows_out.copy_(rows.view(b, length + 1)[:, 1:])
        lengths_out.copy_(lengths.view(b, length + 1)[:, 1:])

    def match_last(self, input_ids: torch.Tensor, num_new: int = 1, attention_mask: torch.Tensor | None = None, *,
                   as_lists: bool = False) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Per-step path for generation: matches for the last ``num_new`` positions of ``input_ids [B, T]``.

        Only the last ``num_new + K - 1`` tokens can take part, so only those are scanned (cost independent of T).
        For a decode step (``num_new == 1``) of up to 128 rows a scalar walk (:meth:`_match_last_scalar`, a few
        microseconds per row) replaces the ~0.3-1 ms of tiny tensor ops of the vectorised passes. Returns ``(rows,
        lengths)`` ``[B, num_new]``; with ``as_lists=True`` the scalar walk returns nested python lists (``[B][1]``),
        which ``SconeLlama.forward`` accepts: on a CPU decode step, two tiny tensors cost more than the whole walk.
        """
        window = num_new + self.max_len - 1
        tail = input_ids[:, -window:]
        if attention_mask is not None:  # (before slicing: a mask of another width would be cut to fit)
            _check_mask_shape(input_ids, attention_mask)
        tail_mask = attention_mask[:, -window:] if attention_mask is not None else None
        if num_new == 1 and tail.shape[0] <= 128:
            rows, lengths = self._match_last_scalar(tail, tail_mask)
            if as_lists:
                return [[row] for row in rows], [[length] for length in lengths]
            return tuple(torch.tensor(out, dtype=torch.int64, device=tail.device)[:, None] for out in (rows, lengths))
        rows, lengths = self.match(tail, tail_mask)
        return rows[:, -num_new:], lengths[:, -num_new:]

    def _match_last_scalar(self, tail: torch.Tensor, tail_mask: torch.Tensor | None) -> tuple[list[int], list[int]]:
        """(rows, lengths) of the last position of every row of ``tail`` ``[B, <=K]``, as python lists."""
        # Decode steps carry a small memo from one step to the next: the "suffix chain" of each row's newest
        # position (local ids of the f-grams of length 1, 2, ... ending there; length 1 = the token itself), keyed
        # by the K-1 tokens it depends on (padding written as -1, an id that never matches). The next step finds its
        # row's previous chain by content, so extending it costs at most K-1 lookups, and a reordered, cropped or
        # new batch (beam search, another generate() call) simply misses and rebuilds the chain from the window.
        # A chain is a pure function of its key, so a hit can never be stale.
        if self._python_levels is None:
            # memoryviews share the tensors' memory: no copy, O(1) item access, usable by bisect. Levels small
            # enough also get a dict (key -> local id): one hash probe instead of ~17 bisection steps that each
            # box an int out of the memoryview (~100 bytes per key, so only up to SCALAR_DICT_KEYS keys in all).
            dict_ok = self.num_fgrams <= SCALAR_DICT_KEYS
            self._python_barriers, self._suffix_memo = frozenset(self.barrier_ids), {}
            self._python_levels = [  # (set last: threads sharing the vocabulary take a set value as built)
                (memoryview(k.numpy()), dict(zip(k.tolist(), range(k.numel()))) if dict_ok else None,
                 memoryview(r.numpy()))
                for k, r in zip(self.level_keys, self.level_rows)
            ]
        levels, barriers, vocab_size = self._python_levels, self._python_barriers, self.vocab_size

        def extend(chain, token):
            # chain of the position before `token` -> chain of `token` (suffix closure: stop at the first miss)
            if not 0 <= token < vocab_size or token in barriers:
                return ()
            out = [token]
            for (keys, index, _), local in zip(levels, chain):  # levels 2..K: at most K-1 extensions
                query = local * vocab_size + token
                if index is not None:
                    at = index.get(query)
                    if at is None:
                        break
                else:
                    at = bisect.bisect_left(keys, query)
                    if at == len(keys) or keys[at] != query:
                        break
                out.append(at)
            return tuple(out)

        ids = tail.tolist()
        if tail_mask is not None:  # (match_last checked its shape)
            for row, row_mask in zip(ids, tail_mask.tolist()):
                if 0 in row_mask:
                    row[:] = [token if keep else -1 for token, keep in zip(row, row_mask)]
        new_memo, out_rows, out_lengths = {}, [], []
        for row in ids:
            last = len(row) - 1
            chain = self._suffix_memo.get(tuple(row[:last]))
            if chain is None:  # rebuild it from the window, which holds exactly the K-1 tokens it may use
                chain = ()
                for token in row[:last]:
                    chain = extend(chain, token)
            chain = extend(chain, row[last])
            # keyed by tail[1:], the chain may only use those tokens (a short history has fewer than K-1); the next
            # position only extends f-grams of length <= K-1
            new_memo[tuple(row[1:])] = chain[:min(self.max_len - 1, last)]
            length = len(chain)
            out_rows.append(levels[length - 2][2][chain[-1]] if length >= 2 else -1)
            out_lengths.append(length if length >= 2 else 0)
        self._suffix_memo = new_memo
        return out_rows, out_lengths

    # ------------------------------------------------------------------ f-gram contents
    def fgram_tokens(self, rows: torch.Tensor) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Token ids of the f-grams ``rows`` (LongTensor ``[n]``).

        Returns ``(tokens, lengths)``: tokens LongTensor ``[n, K]`` left-aligned and right-padded with ``-1``,
        lengths LongTensor ``[n]``.
        """
        rows = torch.as_tensor(rows, dtype=torch.int64).cpu()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.num_fgrams):
            raise IndexError(f"f-gram rows must lie in [0, {self.num_fgrams})")
        if self._row_level is None:  # row -> (length, local id within its level)
            row_level = torch.empty(self.num_fgrams, dtype=torch.int8)
            row_local = torch.empty(self.num_fgrams, dtype=torch.int64)
            for n, level_rows in enumerate(self.level_rows, start=2):
                row_level[level_rows] = n
                row_local[level_rows] = torch.arange(level_rows.numel())
            self._row_local, self._row_level = row_local, row_level  # (filled first: threads never see it half-built)
        levels = self._row_level[rows].long()
        tokens = torch.full((rows.numel(), self.max_len), -1, dtype=torch.int64)
        for n in range(2, self.max_len + 1):
            sel = (levels == n).nonzero().squeeze(1)
            local = self._row_local[rows[sel]]
            for position in range(n - 1, 0, -1):  # walk the prefix chain back to level 1
                key = self.level_keys[position - 1][local]  # level (position + 1)
                tokens[sel, position] = key % self.vocab_size
                local = key // self.vocab_size
            tokens[sel, 0] = local
        return tokens, levels

    def row_of(self, ngram: Sequence[int]) -> int:
        """Row of one n-gram (tuple of token ids), or -1 if it is not an f-gram."""
        ngram = [int(t) for t in ngram]
        if not 2 <= len(ngram) <= self.max_len:
            return -1
        rows, lengths = self.match(torch.tensor([ngram]))
        return int(rows[0, -1]) if int(lengths[0, -1]) == len(ngram) else -1

    # ------------------------------------------------------------------ tokenizer check
    def check_tokenizer(self, tokenizer=None, *, fingerprint: str | None = None, where: str = "") -> None:
        """Raise :class:`TokenizerMismatchError` if ``tokenizer`` (or ``fingerprint``) is not the mining tokenizer."""
        where = f" for {where}" if where else ""
        if tokenizer is not None:
            fingerprint = tokenizer_fingerprint(tokenizer)
            if len(tokenizer) < self.vocab_size:
                raise TokenizerMismatchError(f"tokenizer/f-gram mismatch{where}: the f-gram vocabulary was mined over "
                                             f"token ids < {self.vocab_size} but the tokenizer has only "
                                             f"{len(tokenizer)} tokens")
        if fingerprint is None:
            return
        if self.tokenizer_fingerprint is None:
            # Mined from token ids without tokenizer=: nothing to compare, so say so instead of passing silently.
            warnings.warn(
                f"the f-gram vocabulary{where} was mined without tokenizer=, so it cannot be checked against "
                f"tokenizer {fingerprint}; if its ids come from another tokenizer the f-grams are wrong. Re-mine "
                "with mine_fgrams(..., tokenizer=...) to record the fingerprint.", UserWarning, stacklevel=2,
            )
        elif fingerprint != self.tokenizer_fingerprint:
            raise TokenizerMismatchError(f"tokenizer fingerprint mismatch{where}: the f-gram vocabulary was mined "
                                         f"with tokenizer {self.tokenizer_fingerprint} but is being used with "
                                         f"{fingerprint}; its n-gram keys are token ids of the mining tokenizer and "
                                         "mean nothing under another one. Re-mine the f-grams with this tokenizer.")

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION, "num_fgrams": self.num_fgrams, "max_len": self.max_len,
            "vocab_size": self.vocab_size, "barrier_ids": list(self.barrier_ids),
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "num_per_length": {str(n): c for n, c in self.num_per_length().items()},
            "min_selected_count": int(self.counts.min()) if self.num_fgrams else None,
            **self.extra_metadata,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``fgram_index.safetensors`` (keys, rows, counts) and ``fgram_vocab.json`` into ``directory``.

        Plain writes, like the rest of ``save_pretrained``'s folder: a folder that must appear whole is written
        through ``io_utils.atomic_dir`` by the caller (``hf_efficient_lm.scone.save_fgram_vocab`` does that).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"counts": self.counts}
        for n, (keys, rows) in enumerate(zip(self.level_keys, self.level_rows), start=2):
            tensors[f"keys_{n}"], tensors[f"rows_{n}"] = keys, rows
        meta = self.metadata()
        save_file(tensors, str(directory / INDEX_FILE), metadata={"fgram_vocab": json.dumps(meta)})
        (directory / VOCAB_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, tokenizer=None) -> "FgramVocab":
        """Load a vocabulary saved by :meth:`save`; with ``tokenizer`` its fingerprint is checked."""
        index_path = Path(directory) / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"no f-gram vocabulary in {directory}: {INDEX_FILE} is missing")
        _, raw_meta, _ = read_header(index_path)  # a truncated / corrupt file raises CorruptTableError here
        try:
            meta = json.loads(raw_meta["fgram_vocab"])
            tensors = load_file(str(index_path))
        except (KeyError, json.JSONDecodeError, SafetensorError) as err:
            raise CorruptTableError(f"{index_path}: unreadable f-gram index ({err!r}); the file is corrupt") from err
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{index_path}: unsupported f-gram index format {meta.get('format_version')}")
        max_len = int(meta["max_len"])
        try:
            level_keys = [tensors[f"keys_{n}"] for n in range(2, max_len + 1)]
            level_rows = [tensors[f"rows_{n}"] for n in range(2, max_len + 1)]
            counts = tensors["counts"]
        except KeyError as err:
            raise ValueError(f"{index_path}: tensor {err} is missing; the index is corrupt") from err
        vocab = cls(
            vocab_size=int(meta["vocab_size"]), max_len=max_len, level_keys=level_keys, level_rows=level_rows,
            counts=counts, barrier_ids=meta.get("barrier_ids", ()),
            tokenizer_fingerprint=meta.get("tokenizer_fingerprint"),
            extra_metadata={k: v for k, v in meta.items() if k not in _METADATA_KEYS},
        )
        if vocab.num_fgrams != int(meta["num_fgrams"]):
            raise ValueError(f"{index_path}: metadata says {meta['num_fgrams']} f-grams, arrays hold "
                             f"{vocab.num_fgrams}")
        for n, keys in enumerate(vocab.level_keys, start=2):
            if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
                raise ValueError(f"{index_path}: level-{n} keys are not strictly increasing; the index is corrupt")
        if tokenizer is not None:
            vocab.check_tokenizer(tokenizer, where=str(directory))
        return vocab


def _check_mask_shape(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                         f"{tuple(input_ids.shape)}")
