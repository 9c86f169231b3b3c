"""Longest-suffix matching: vectorised torch / numpy paths vs a literal per-position implementation."""

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_efficient_lm.scone import CorruptTableError, FgramVocab, match_flat, mine_fgrams
from tests.helpers import forced_thread_switches


def brute_force_match(vocab: FgramVocab, ids: list[int], mask: list[int]):
    """Algorithm 1 literally: for each i, the longest (x_j..x_i) in F with no barrier/padding inside."""
    tokens, lengths = vocab.fgram_tokens(torch.arange(vocab.num_fgrams))
    table = {tuple(tokens[r, :lengths[r]].tolist()): r for r in range(vocab.num_fgrams)}
    rows, lens = [], []
    for i in range(len(ids)):
        best = (-1, 0)
        for n in range(2, vocab.max_len + 1):
            j = i - n + 1
            if j < 0:
                break
            window = ids[j:i + 1]
            if not all(mask[j:i + 1]) or set(window) & set(vocab.barrier_ids):
                break
            if tuple(window) in table:
                best = (table[tuple(window)], n)
        rows.append(best[0])
        lens.append(best[1])
    return rows, lens


@st.composite
def vocab_and_batch(draw):
    docs = draw(st.lists(st.lists(st.integers(0, 4), max_size=25), min_size=1, max_size=12))
    docs.append([1, 2, 3, 1, 2, 3, 1, 2, 3])  # guarantees some frequent n-grams
    vocab = mine_fgrams(docs, num_fgrams=draw(st.integers(1, 30)), max_len=draw(st.integers(2, 5)),
                        min_count=draw(st.integers(1, 3)), barrier_ids=(0,), vocab_size=5, show_progress=False)
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, 16))
    ids = draw(st.lists(st.lists(st.integers(0, 4), min_size=length, max_size=length), min_size=batch,
                        max_size=batch))
    pads = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    mask = [[int(t >= p) for t in range(length)] for p in pads]  # left padding
    return vocab, ids, mask


@settings(max_examples=60, deadline=None)
@given(vocab_and_batch())
def test_vectorised_match_equals_brute_force(case):
    vocab, ids, mask = case
    rows, lengths = vocab.match(torch.tensor(ids), torch.tensor(mask))
    for b in range(len(ids)):
        expected_rows, expected_lengths = brute_force_match(vocab, ids[b], mask[b])
        assert rows[b].tolist() == expected_rows
        assert lengths[b].tolist() == expected_lengths
        # numpy data-pipeline twin (padding expressed as separators)
        masked = [t if m else -1 for t, m in zip(ids[b], mask[b])]
        np_rows, np_lengths = match_flat(vocab, np.array(masked))
        assert np_rows.tolist() == expected_rows and np_lengths.tolist() == expected_lengths
        # cut into blocks overlapping by K-1 tokens and matched on several threads: the same
        for block_tokens in (1, 2, 5):
            np_rows, np_lengths = match_flat(vocab, np.array(masked), block_tokens=block_tokens, num_threads=2)
            assert np_rows.tolist() == expected_rows and np_lengths.tolist() == expected_lengths
        # per-step generation path: only the tail is scanned
        for new in (1, 2):
            if new <= len(ids[b]):
                tail_rows, tail_lengths = vocab.match_last(torch.tensor([ids[b]]), new, torch.tensor([mask[b]]))
                assert tail_rows[0].tolist() == expected_rows[-new:]
                assert tail_lengths[0].tolist() == expected_lengths[-new:]


def test_match_shapes_devices_and_lookup(vocab, docs):
    ids = torch.tensor(docs[0][:20])
    rows, lengths = vocab.match(ids)
    assert rows.shape == lengths.shape == ids.shape and rows.dtype == torch.long
    assert (lengths > 0).float().mean() > 0.5  # pattern data is mostly covered
    for i in torch.nonzero(lengths).squeeze(1).tolist():
        n = int(lengths[i])
        assert vocab.row_of(ids[i - n + 1:i + 1].tolist()) == int(rows[i])
    with pytest.raises(TypeError, match="integer"):
        vocab.match(torch.zeros(2, 3))


def test_corrupt_index_is_reported(tmp_path, vocab):
    vocab.save(tmp_path)
    path = tmp_path / "fgram_index.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-16])
    with pytest.raises(CorruptTableError, match="truncated"):
        FgramVocab.load(tmp_path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:])
    with pytest.raises(CorruptTableError, match="corrupt"):
        FgramVocab.load(tmp_path)


def _keys_homed_at_the_end(generator, count=200):
    """``count`` keys whose home slot is one of the last two of their table (512 slots): they spill past its end."""
    pool = torch.randint(0, 1 << 31, (count * 600,), generator=generator)
    return pool[(((pool * 0x4F1BBCDD) & 0x7FFFFFFF) >> 22) >= 510][:count]


@pytest.mark.parametrize("kind", ["random", "sequential", "same_low_bits", "empty", "one", "homed_at_the_end"])
def test_key_hash_index_equals_sorted_search(kind):
    """The hash index behind FgramVocab.match answers exactly like a binary search over the sorted keys."""
    from hf_efficient_lm.scone.fgram_vocab_scone import KeyHashIndex

    generator = torch.Generator().manual_seed(0)
    keys = {
        "homed_at_the_end": _keys_homed_at_the_end(generator),
        "random": torch.randint(0, 1 << 40, (5000,), generator=generator),
        "sequential": torch.arange(3000) * 4096 + 7,  # n-gram keys: parent * V + token
        "same_low_bits": torch.arange(1, 2000) << 31,  # only the high half differs
        "empty": torch.empty(0, dtype=torch.long),
        "one": torch.tensor([12345]),
    }[kind]
    keys = torch.unique(keys)  # sorted, distinct
    index = KeyHashIndex(keys)
    if kind == "homed_at_the_end":  # (the case the spill area exists for)
        assert keys.numel() == 200 and index.bits == 9 and index.slot_keys.numel() > 512 and index.max_probes >= 100
    absent = torch.randint(0, 1 << 40, (4000,), generator=generator)
    query = torch.cat([keys, absent, keys + 1, (keys - 1).clamp(min=0)])
    query = query[torch.randperm(query.numel(), generator=generator)]
    at = torch.searchsorted(keys, query).clamp(max=max(keys.numel() - 1, 0))
    expected = torch.where(keys[at] == query, at, -1) if keys.numel() else torch.full_like(query, -1)
    assert torch.equal(index.index_of(query), expected)
    assert len(index) == keys.numel()
    # the short hash for queries promised below 2**31 lands on the same slots
    small = query < (1 << 31)
    bounded = KeyHashIndex(keys, query_bound=1 << 31)
    assert torch.equal(bounded.index_of(query[small]), expected[small])
    with pytest.raises(ValueError, match="non-negative"):
        KeyHashIndex(torch.tensor([-3]))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_packed_documents_match_like_each_document_alone(data):
    """Padding-free rows (issue 11): with ``document_ids`` no f-gram crosses a boundary, so each document's matches
    equal matching it alone — including f-grams that would run across the boundary without the ids."""
    docs = [[1, 2, 3, 1, 2, 3, 1, 2, 3, 4]] * 3
    vocab = mine_fgrams(docs, num_fgrams=20, max_len=4, min_count=1, vocab_size=5, show_progress=False)
    lengths = data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=4))
    pieces = [data.draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)) for n in lengths]
    packed = torch.tensor([sum(pieces, [])])
    document_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    rows, lens = vocab.match(packed, document_ids=document_ids)
    start = 0
    for piece in pieces:
        alone_rows, alone_lens = vocab.match(torch.tensor([piece]))
        assert rows[0, start : start + len(piece)].tolist() == alone_rows[0].tolist()
        assert lens[0, start : start + len(piece)].tolist() == alone_lens[0].tolist()
        start += len(piece)


def test_packed_documents_cut_an_fgram_that_spans_the_boundary():
    vocab = mine_fgrams([[1, 2, 3, 1, 2, 3]], num_fgrams=10, max_len=3, min_count=1, vocab_size=5,
                        show_progress=False)
    ids = torch.tensor([[1, 2, 3, 1, 2, 3]])
    _, joined = vocab.match(ids)
    _, cut = vocab.match(ids, document_ids=torch.tensor([[0, 0, 1, 1, 1, 1]]))
    assert joined[0, 2] == 3 and cut[0, 2] == 0  # "1 2 3" ran across the boundary; "3" alone starts document 1
    assert cut[0, 3:].tolist() == [2, 3, 3]


def test_threads_racing_to_build_the_lookup_structures_get_the_sequential_answers(vocab, docs):
    """Threads sharing a vocabulary whose lookup structures are not built yet (a fresh load or copy) race to build
    them on first use; each must find them whole. (The row -> tokens map was once published before it was filled:
    16 of 1,200 ``fgram_tokens`` calls in 300 rounds of 4 threads returned wrong tokens, silently.)"""
    rows, flat = torch.arange(vocab.num_fgrams), sum(docs, [])
    ids = torch.tensor([flat[:30], flat[30:60]])

    def lookups(shared):
        return shared.fgram_tokens(rows), shared.match(ids), shared.match_last(ids, 1, as_lists=True)

    alone = lookups(copy.deepcopy(vocab))  # (a copy drops the built structures: __getstate__)
    for _ in range(150):
        shared = copy.deepcopy(vocab)
        with forced_thread_switches(), ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda _: lookups(shared), range(4)))
        for tokens, matches, last in together:
            assert all(map(torch.equal, tokens + matches, alone[0] + alone[1]))
            assert last == alone[2]
