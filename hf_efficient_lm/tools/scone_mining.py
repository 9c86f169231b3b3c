"""Mining the f-gram set from a tokenized corpus, and fast numpy matching for data pipelines.

Not a modeling file: it may use numpy / pandas / datasets / tqdm. Everything it produces is an
:class:`~hf_efficient_lm.scone.fgram_vocab_scone.FgramVocab`, which the model files read with torch only.

Algorithm (spec §1.3, §5.1): K-1 passes, one per n-gram length. Each n-gram ending at position i is the exact
int64 key ``id_{n-1}[i-1] * V + x[i]`` where ``id_{n-1}`` is the local index of the (n-1)-gram ending at i-1 among
the level-(n-1) n-grams that reached ``min_count`` (level 1: the token id). It is a candidate only if that prefix
*and* the (n-1)-suffix ending at i reached ``min_count`` (Apriori: an n-gram is never more frequent than either).
Counting is ``np.unique`` per chunk, merged across chunks, so the corpus never has to fit in RAM (only the distinct
keys do). The top ``num_fgrams`` of all levels together are kept, ranked by (count desc, length asc, tokens asc), so
the kept set is closed under prefixes and suffixes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..scone.fgram_vocab_scone import FgramVocab, tokenizer_fingerprint

SEPARATOR = -1  # document boundary / barrier marker inside flattened chunks


# ---------------------------------------------------------------------------------------------------- input handling
def _is_dataset(obj) -> bool:
    return type(obj).__name__ in ("Dataset", "IterableDataset") and hasattr(obj, "column_names")


def _flatten_docs(docs: list, barrier_ids: np.ndarray) -> np.ndarray:
    """Concatenate token-id documents into one int64 array with SEPARATOR between them; barriers -> SEPARATOR."""
    arrays = [np.asarray(doc).ravel() for doc in docs]
    if not arrays:
        return np.empty(0, dtype=np.int64)
    values = np.concatenate(arrays).astype(np.int64, copy=False)
    _check_non_negative(values)
    ends = np.cumsum([a.size for a in arrays])
    flat = np.insert(values, ends, SEPARATOR)  # a separator after every document
    if barrier_ids.size:
        flat[np.isin(flat, barrier_ids)] = SEPARATOR
    return flat


def _check_non_negative(values: np.ndarray) -> None:
    """Token ids are >= 0 (-1 marks document boundaries inside a chunk): a negative id is an error, not a barrier."""
    if values.size and int(values.min()) < 0:
        raise ValueError(f"token ids must be non-negative, got {int(values.min())}")


def _arrow_chunks(dataset, column: str, chunk_tokens: int, barrier_ids: np.ndarray) -> Iterator[np.ndarray]:
    """Flattened chunks from a ``datasets.Dataset`` via Arrow (no per-token Python objects)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column not in dataset.column_names:
        raise ValueError(f"dataset has no column {column!r} (columns: {dataset.column_names})")
    rows_per_batch = 1024
    buffer, buffered = [], 0
    for batch in dataset.with_format("arrow").iter(batch_size=rows_per_batch):
        col = batch.column(column)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        _check_non_negative(values)
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
        ends = np.cumsum(lengths)
        flat = np.insert(values, ends, SEPARATOR)  # a separator after every document
        if barrier_ids.size:
            flat[np.isin(flat, barrier_ids)] = SEPARATOR
        buffer.append(flat)
        buffered += flat.size
        if buffered >= chunk_tokens:
            yield np.concatenate(buffer)
            buffer, buffered = [], 0
    if buffer:
        yield np.concatenate(buffer)


def _iter_chunks(source, chunk_tokens: int, barrier_ids: np.ndarray, column: str) -> Iterator[np.ndarray]:
    if _is_dataset(source):
        yield from _arrow_chunks(source, column, chunk_tokens, barrier_ids)
        return
    docs, buffered = [], 0
    for doc in source:
        if isinstance(doc, dict):
            doc = doc[column]
        if torch.is_tensor(doc):
            doc = doc.cpu().numpy()
        docs.append(doc)
        buffered += len(doc) + 1
        if buffered >= chunk_tokens:
            yield _flatten_docs(docs, barrier_ids)
            docs, buffered = [], 0
    if docs:
        yield _flatten_docs(docs, barrier_ids)


class _ChunkSource:
    """Re-iterable chunk stream: datasets / lists are re-read each pass, one-shot iterators are materialised once."""

    def __init__(self, sequences, chunk_tokens: int, barrier_ids: np.ndarray, column: str):
        self.args = (chunk_tokens, barrier_ids, column)
        if _is_dataset(sequences) or isinstance(sequences, (list, tuple)):
            self.source, self.cached = sequences, None
        elif isinstance(sequences, Iterable):
            self.source, self.cached = None, list(_iter_chunks(sequences, *self.args))
        else:
            raise TypeError(f"sequences must be an iterable of token-id sequences or a datasets.Dataset, "
                            f"got {type(sequences).__name__}")

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.cached is not None:
            return iter(self.cached)
        return _iter_chunks(self.source, *self.args)


# ---------------------------------------------------------------------------------------------------- counting
DENSE_LIMIT = 1 << 25  # look up bigrams in a dense V*V array when it has at most this many cells
# Full-length numpy passes run over blocks of this many positions: their temporaries then stay in the CPU cache
# and skip page faults, which makes the elementwise work ~10x faster than one pass over a 16M-token chunk.
BLOCK_TOKENS = 1 << 20


def default_num_threads() -> int:
    """Worker threads for mining and matching: the CPUs this process may use (numpy and pandas release the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pieces(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``[1, size)`` (position 0 never ends an n-gram of length >= 2)."""
    bounds = np.linspace(1, max(1, size), parts + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _blocks(lo: int, hi: int, block: int | None = None) -> Iterator[tuple[int, int]]:
    block = block or BLOCK_TOKENS
    for start in range(lo, hi, block):
        yield start, min(hi, start + block)


class _LevelLookup:
    """Key -> local index among a level's frequent keys (-1 if absent).

    ``key_space`` bounds every key (and query) of the level: a dense array when it is small (bigrams of a small
    vocabulary), else a pandas hash index on uint32 keys when they fit (about 1.6x faster than int64), else int64.
    """

    def __init__(self, keys: np.ndarray, key_space: int, dense: bool = False):
        self.keys = keys
        self.dense = self.index = None
        self.query_dtype = np.int64
        if dense and key_space <= DENSE_LIMIT:
            self.dense = np.full(key_space, -1, dtype=np.int32)
            self.dense[keys] = np.arange(keys.size, dtype=np.int32)
        else:
            if key_space <= (1 << 32):
                self.query_dtype = np.uint32
            self.index = pd.Index(keys.astype(self.query_dtype))

    def __len__(self) -> int:
        return self.keys.size

    def __call__(self, query: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return self.dense[query]
        return self.index.get_indexer(query.astype(self.query_dtype, copy=False))

    def extend_into(self, out: np.ndarray, prev: np.ndarray, ids: np.ndarray, vocab_size: int, lo: int, hi: int):
        """``out[i]`` for ``i`` in ``[lo, hi)``: local id of the n-gram ending at ``i`` given the (n-1)-level ids
        ``prev`` (-1 = none), or -1 where its prefix or suffix is missing or it is not in this level."""
        for start, stop in _blocks(lo, hi):
            at, keys = _candidate_keys(prev, ids, vocab_size, start, stop)
            out[start:stop] = -1
            if keys.size:
                out[start + at] = self(keys)


def _candidate_keys(prev: np.ndarray, ids: np.ndarray, vocab_size: int, start: int, stop: int):
    """Positions ``start + at`` in ``[start, stop)`` (``start >= 1``) where an n-gram can end, and its int64 key:
    the (n-1)-gram ending at ``i-1`` (prefix) and the one ending at ``i`` (suffix) are both frequent."""
    before = prev[start - 1:stop - 1]
    at = np.flatnonzero((before >= 0) & (prev[start:stop] >= 0))
    keys = before[at].astype(np.int64, copy=False) * vocab_size
    keys += ids[start:stop][at]
    return at, keys


def _count_range(prev: np.ndarray, ids: np.ndarray, vocab_size: int, lo: int, hi: int):
    """``(unique keys, counts)`` of the candidate n-grams ending in ``[lo, hi)``."""
    keys = [_candidate_keys(prev, ids, vocab_size, start, stop)[1] for start, stop in _blocks(lo, hi)]
    keys = np.concatenate(keys) if keys else np.empty(0, dtype=np.int64)
    return _count_keys(keys)


def _count_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_counts=True)``, sorting as uint32 when the keys fit (about 4x faster)."""
    if keys.size and int(keys.max()) < (1 << 32) and int(keys.min()) >= 0:
        ordered = np.sort(keys.astype(np.uint32))
    else:
        ordered = np.sort(keys)
    starts = np.empty(ordered.size, dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    first = np.flatnonzero(starts)
    counts = np.diff(np.append(first, ordered.size))
    return ordered[first].astype(np.int64), counts.astype(np.int64)


def _merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum counts of (unique keys, counts) pairs from several chunks."""
    parts = [p for p in parts if p[0].size]
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if len(parts) == 1:
        return parts[0]
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(counts, starts).astype(np.int64)


def _extend(pool: ThreadPoolExecutor, workers: int, lookup: _LevelLookup, prev: np.ndarray, ids: np.ndarray,
            vocab_size: int) -> np.ndarray:
    """Full-length next-level local ids of a chunk (see :meth:`_LevelLookup.extend_into`), ranges in parallel."""
    out = np.empty(ids.shape, dtype=np.int64)  # every position is written: [0] here, the rest by the workers
    out[:1] = -1
    list(pool.map(lambda r: lookup.extend_into(out, prev, ids, vocab_size, *r), _pieces(ids.size, workers)))
    return out


def mine_fgrams(
    sequences,
    *,
    num_fgrams: int,
    max_len: int = 5,
    min_count: int = 5,
    barrier_ids: Iterable[int] = (),
    tokenizer: Any = None,
    vocab_size: int | None = None,
    column: str = "input_ids",
    chunk_tokens: int = 1 << 24,
    show_progress: bool = True,
    num_threads: int | None = None,
) -> FgramVocab:
    """Mine the ``num_fgrams`` most frequent token n-grams of length 2..``max_len``.

    Args:
        sequences: an iterable of token-id lists/arrays/tensors (one per document), or a ``datasets.Dataset``
            with an ``input_ids`` column (``column``). Documents are never crossed.
        num_fgrams: ``S``, how many f-grams to keep (fewer if fewer n-grams reach ``min_count``).
        max_len: ``K``, the longest f-gram.
        min_count: n-grams seen fewer times are never kept (Apriori pruning threshold).
        barrier_ids: token ids (EOS/BOS/pad) that split documents and are never part of an f-gram.
        tokenizer: if given, its fingerprint is stored (checked when the vocabulary is used) and ``vocab_size``
            defaults to ``len(tokenizer)``.
        vocab_size: ``V``; defaults to ``len(tokenizer)`` or ``max id + 1``.
        chunk_tokens: tokens per counting chunk (memory bound for corpora larger than RAM). Chunks of an
            in-memory source keep their per-level match state between passes; a ``datasets.Dataset`` is re-read
            (and its chains recomputed) every pass, so only the distinct n-gram counts must fit in RAM.
        num_threads: worker threads (default: the CPUs this process may use); the result does not depend on it.
    Returns:
        An :class:`FgramVocab` whose rows are ranked by (count desc, length asc, tokens asc).
    """
    if num_fgrams < 1:
        raise ValueError(f"num_fgrams must be >= 1, got {num_fgrams}")
    if not 2 <= max_len <= 127:  # (match lengths are stored as int8; the paper's K is 3)
        raise ValueError(f"max_len must be in 2..127, got {max_len}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    barriers = np.asarray(sorted({int(b) for b in barrier_ids}), dtype=np.int64)
    if barriers.size and int(barriers[0]) < 0:
        raise ValueError(f"barrier_ids must be non-negative token ids, got {int(barriers[0])}")
    if vocab_size is not None and (isinstance(vocab_size, bool) or int(vocab_size) < 1):
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    source = _ChunkSource(sequences, int(chunk_tokens), barriers, column)
    if vocab_size is None and tokenizer is not None:
        vocab_size = len(tokenizer)
    if vocab_size is None:
        vocab_size = max(max((int(c.max()) for c in source if c.size), default=-1), int(barriers.max(initial=-1))) + 1
    vocab_size = int(vocab_size)
    if vocab_size <= 0:
        raise ValueError("no tokens to mine: every sequence is empty")
    keep_state = not _is_dataset(sequences)
    if keep_state and source.cached is None:
        source.cached = list(_iter_chunks(source.source, *source.args))
    states: list[np.ndarray] = []  # per chunk: full-length local ids of the last level (-1 = none)
    workers = max(1, int(num_threads or default_num_threads()))

    lookups: list[_LevelLookup] = []  # frequent keys of levels 2..n
    level_counts: list[np.ndarray] = []
    num_tokens = 0
    with ThreadPoolExecutor(workers) as pool:
        for n in range(2, max_len + 1):
            parts = []
            for c, chunk in enumerate(tqdm(source, desc=f"mining {n}-grams", unit="chunk",
                                           disable=not show_progress, leave=False)):
                if n == 2:
                    num_tokens += int((chunk >= 0).sum())
                    if chunk.size and int(chunk.max()) >= vocab_size:
                        raise ValueError(f"token id {int(chunk.max())} >= vocab_size {vocab_size}")
                    prev = chunk  # level-1 ids are the tokens (separators are -1)
                    if keep_state:
                        states.append(chunk)
                elif keep_state:
                    prev = states[c]
                else:  # a re-read dataset chunk: walk its chain up to level n-1 again
                    prev = chunk
                    for lookup in lookups:
                        prev = _extend(pool, workers, lookup, prev, chunk, vocab_size)
                parts.extend(pool.map(lambda r: _count_range(prev, chunk, vocab_size, *r),
                                      _pieces(chunk.size, workers)))
            keys, counts = _merge_counts(parts)
            keep = counts >= min_count
            keys, counts = keys[keep], counts[keep]
            del parts
            if keys.size == 0:
                break
            previous_size = vocab_size if n == 2 else len(lookups[-1])
            lookup = _LevelLookup(keys, previous_size * vocab_size, dense=(n == 2))
            lookups.append(lookup)
            level_counts.append(counts.astype(np.int64))
            if keep_state and n < max_len:  # advance every chunk's state to this level
                for c, chunk in enumerate(source):
                    states[c] = _extend(pool, workers, lookup, states[c], chunk, vocab_size)
    levels = [lookup.keys for lookup in lookups]

    # --- rank all levels together: count desc, length asc, tokens asc (key order == lexicographic token order)
    if not levels:
        raise ValueError(f"no n-gram of length >= 2 occurs at least min_count={min_count} times")
    cand_level = np.concatenate([np.full(keys.size, n, dtype=np.int64) for n, keys in enumerate(levels, start=2)])
    cand_local = np.concatenate([np.arange(keys.size, dtype=np.int64) for keys in levels])
    cand_count = np.concatenate(level_counts)
    order = np.lexsort((cand_local, cand_level, -cand_count))[:num_fgrams]
    rank = np.empty(order.size, dtype=np.int64)
    rank[:] = np.arange(order.size)

    level_keys, level_rows = [], []
    remap_prev = None  # old local id at level n-1 -> new local id (-1 if not kept)
    counts_by_row = cand_count[order]
    for n, level_keys_old in enumerate(levels, start=2):
        sel = cand_level[order] == n
        old_local = cand_local[order][sel]
        rows = rank[sel]
        sort = np.argsort(old_local, kind="stable")
        old_local, rows = old_local[sort], rows[sort]
        old_keys = level_keys_old[old_local]
        if n == 2:
            new_keys = old_keys
        else:
            parent = remap_prev[old_keys // vocab_size]
            if (parent < 0).any():  # cannot happen with the tie-break; guards the invariant matching relies on
                raise AssertionError("selected f-gram set is not prefix-closed")
            new_keys = parent * vocab_size + old_keys % vocab_size
        remap = np.full(level_keys_old.size, -1, dtype=np.int64)
        remap[old_local] = np.arange(old_local.size)
        remap_prev = remap
        level_keys.append(torch.from_numpy(np.ascontiguousarray(new_keys)))
        level_rows.append(torch.from_numpy(np.ascontiguousarray(rows)))
    for n in range(len(levels) + 2, max_len + 1):  # lengths that had no frequent n-gram at all
        level_keys.append(torch.empty(0, dtype=torch.int64))
        level_rows.append(torch.empty(0, dtype=torch.int64))

    return FgramVocab(
        vocab_size=vocab_size,
        max_len=max_len,
        level_keys=level_keys,
        level_rows=level_rows,
        counts=torch.from_numpy(counts_by_row.copy()),
        barrier_ids=barriers.tolist(),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        extra_metadata={"min_count": int(min_count), "num_tokens_mined": int(num_tokens),
                        "requested_num_fgrams": int(num_fgrams)},
    )


# ---------------------------------------------------------------------------------------------------- fast matching
def _vocab_lookups(vocab: FgramVocab) -> list[tuple[_LevelLookup, np.ndarray]]:
    cached = getattr(vocab, "_numpy_lookups", None)
    if cached is None:
        cached, previous_size = [], vocab.vocab_size
        for n, (keys, rows) in enumerate(zip(vocab.level_keys, vocab.level_rows), start=2):
            cached.append((_LevelLookup(keys.numpy(), previous_size * vocab.vocab_size, dense=(n == 2)), rows.numpy()))
            previous_size = max(1, keys.numel())
        vocab._numpy_lookups = cached
    return cached


def _match_block(vocab: FgramVocab, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`match_flat` on one cache-sized block (every position's context lies inside the block)."""
    valid = (ids >= 0) & (ids < vocab.vocab_size)
    if vocab.barrier_ids:
        valid &= ~np.isin(ids, np.asarray(vocab.barrier_ids, dtype=np.int64))
    rows = np.full(ids.shape, -1, dtype=np.int64)
    lengths = np.zeros(ids.shape, dtype=np.int8)
    ids = np.where(valid, ids, -1)
    local, following = ids, np.empty(ids.shape, dtype=np.int64)
    for n, (lookup, level_rows) in enumerate(_vocab_lookups(vocab), start=2):
        if len(lookup) == 0 or ids.size < 2:
            break
        following[0] = -1
        lookup.extend_into(following, local, ids, vocab.vocab_size, 1, ids.size)
        hit = np.flatnonzero(following >= 0)
        if hit.size == 0:
            break  # suffix closure: nothing longer can match
        rows[hit] = level_rows[following[hit]]
        lengths[hit] = n
        local, following = following, (local if n > 2 else np.empty(ids.shape, dtype=np.int64))
    return rows, lengths


def match_flat(vocab: FgramVocab, flat_ids: np.ndarray, *, num_threads: int | None = None,
               block_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Longest f-gram suffix match over a 1-D id array (negative ids = separators) with numpy/pandas lookups.

    The data-pipeline twin of :meth:`FgramVocab.match` (same result, faster on CPU). The array is cut into blocks
    of ``block_tokens`` (default ``BLOCK_TOKENS``) that overlap by ``K-1`` tokens (a match never reaches further back), matched on
    ``num_threads`` threads (default: the CPUs this process may use) with K-1 passes each.
    Returns ``(rows int64, lengths int8)`` of the same length.
    """
    ids = np.asarray(flat_ids, dtype=np.int64).ravel()
    rows = np.full(ids.shape, -1, dtype=np.int64)
    lengths = np.zeros(ids.shape, dtype=np.int8)
    _vocab_lookups(vocab)  # build the indexes once, before the threads share them
    context = vocab.max_len - 1

    def run(block):
        start, stop = block
        begin = max(0, start - context)
        block_rows, block_lengths = _match_block(vocab, ids[begin:stop])
        rows[start:stop] = block_rows[start - begin:]
        lengths[start:stop] = block_lengths[start - begin:]

    blocks = list(_blocks(0, ids.size, max(1, int(block_tokens or BLOCK_TOKENS))))
    workers = min(len(blocks), max(1, int(num_threads or default_num_threads())))
    if workers <= 1:
        for block in blocks:
            run(block)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, blocks))
    return rows, lengths


def add_fgram_columns(dataset, vocab: FgramVocab, *, column: str = "input_ids", batch_size: int = 1000,
                      num_proc: int | None = None):
    """Add ``fgram_row`` (int64, -1 = none) and ``fgram_len`` (int8, 0 = none) columns to a tokenized dataset.

    This is the pre-scan the paper does for training (spec §1.5): the forward pass then only gathers windows.
    Rows must be whole documents or packed blocks; barrier ids inside a block (EOS) stop matches, and so do the
    padding positions of an ``attention_mask`` column (zeros), as in the model's own matching.
    """

    def tag(batch):
        docs = batch[column]
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        flat = _flatten_docs(docs, np.empty(0, dtype=np.int64))
        if "attention_mask" in batch:  # padding becomes a separator (the model's matching masks it the same way)
            keep = _flatten_docs(batch["attention_mask"], np.empty(0, dtype=np.int64))
            flat[keep == 0] = SEPARATOR
        rows, lens = match_flat(vocab, flat)
        starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
        return {
            "fgram_row": [rows[s:s + n].tolist() for s, n in zip(starts, lengths)],
            "fgram_len": [lens[s:s + n].tolist() for s, n in zip(starts, lengths)],
        }

    return dataset.map(tag, batched=True, batch_size=batch_size, num_proc=num_proc, desc="matching f-grams")
