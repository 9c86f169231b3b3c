"""Mining: exact top-S f-grams vs a Counter reference, closure, barriers, chunking, input types, save/load."""

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_efficient_lm.scone import FgramVocab, TokenizerMismatchError, mine_fgrams, tokenizer_fingerprint
from hf_efficient_lm.tools import scone_mining as mining_scone
from tests.scone.conftest import make_word_tokenizer


def reference_fgrams(docs, num_fgrams, max_len, min_count, barrier_ids):
    """Literal Algorithm 3: count every n-gram (2..K) not containing a barrier, keep count >= min_count, rank by
    (count desc, length asc, tokens asc), take the top S."""
    counts = Counter()
    for doc in docs:
        for n in range(2, max_len + 1):
            for i in range(len(doc) - n + 1):
                gram = tuple(doc[i:i + n])
                if not set(gram) & set(barrier_ids):
                    counts[gram] += 1
    ranked = sorted((-c, len(g), g) for g, c in counts.items() if c >= min_count)[:num_fgrams]
    return [(g, -c) for c, _, g in ranked]


def vocab_contents(vocab: FgramVocab):
    tokens, lengths = vocab.fgram_tokens(torch.arange(vocab.num_fgrams))
    return [(tuple(tokens[i, :lengths[i]].tolist()), int(vocab.counts[i])) for i in range(vocab.num_fgrams)]


docs_strategy = st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=30), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(docs=docs_strategy, num_fgrams=st.integers(1, 40), max_len=st.integers(2, 5), min_count=st.integers(1, 4),
       chunk_tokens=st.sampled_from([5, 1 << 20]), block_tokens=st.sampled_from([3, 1 << 20]),
       num_threads=st.sampled_from([1, 3]))
def test_miner_equals_counter_reference(docs, num_fgrams, max_len, min_count, chunk_tokens, block_tokens,
                                        num_threads):
    """Also over the cache blocks and worker ranges every pass is cut into: none may drop or double an n-gram."""
    expected = reference_fgrams(docs, num_fgrams, max_len, min_count, barrier_ids=(0,))
    kwargs = dict(num_fgrams=num_fgrams, max_len=max_len, min_count=min_count, barrier_ids=(0,), vocab_size=6,
                  chunk_tokens=chunk_tokens, num_threads=num_threads, show_progress=False)
    saved_block, mining_scone.BLOCK_TOKENS = mining_scone.BLOCK_TOKENS, block_tokens
    try:
        if not expected:
            with pytest.raises(ValueError, match="min_count"):
                mine_fgrams(docs, **kwargs)
            return
        vocab = mine_fgrams(docs, **kwargs)
    finally:
        mining_scone.BLOCK_TOKENS = saved_block
    assert vocab_contents(vocab) == expected
    # closed under prefixes and suffixes (what the K-1 pass matcher relies on)
    selected = {g for g, _ in expected}
    for gram in selected:
        if len(gram) > 2:
            assert gram[:-1] in selected and gram[1:] in selected


def test_barriers_and_document_boundaries_are_never_crossed():
    docs = [[3, 4, 2, 3, 4]] * 6 + [[5, 6], [7, 8]] * 6
    vocab = mine_fgrams(docs, num_fgrams=100, max_len=3, min_count=1, barrier_ids=(2,), show_progress=False)
    grams = {g for g, _ in vocab_contents(vocab)}
    assert (3, 4) in grams and (5, 6) in grams and (7, 8) in grams
    assert not any(2 in g for g in grams)
    assert (6, 7) not in grams  # consecutive documents are not joined
    assert (4, 3) not in grams  # 4, <eos>, 3 is not the n-gram 4 3
    # the tokens mined: 54 in the documents, less the six barriers (never the separators between documents)
    assert vocab.extra_metadata["num_tokens_mined"] == 48


def test_input_types_agree(docs, vocab):
    from datasets import Dataset

    kwargs = dict(num_fgrams=150, max_len=4, min_count=3, barrier_ids=(0, 1, 2), vocab_size=128, show_progress=False)
    from_generator = mine_fgrams((np.array(d) for d in docs), **kwargs)
    from_dataset = mine_fgrams(Dataset.from_dict({"input_ids": docs}), **kwargs)
    from_tensors = mine_fgrams([torch.tensor(d) for d in docs], chunk_tokens=50, **kwargs)
    for other in (from_generator, from_dataset, from_tensors):
        assert vocab_contents(other) == vocab_contents(vocab)


def test_save_load_round_trip_and_files(tmp_path, vocab):
    from safetensors import safe_open

    vocab.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fgram_index.safetensors", "fgram_vocab.json"]
    loaded = FgramVocab.load(tmp_path)
    assert vocab_contents(loaded) == vocab_contents(vocab)
    assert loaded.barrier_ids == vocab.barrier_ids and loaded.vocab_size == vocab.vocab_size
    with safe_open(str(tmp_path / "fgram_index.safetensors"), "pt") as handle:  # plain safetensors on disk
        torch.testing.assert_close(handle.get_tensor("keys_2"), vocab.level_keys[0])


def test_tokenizer_fingerprint_is_stored_and_checked(tmp_path):
    tokenizer = make_word_tokenizer("a b c d".split())
    other = make_word_tokenizer("a b c e".split())
    assert tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(other)
    docs = [tokenizer("a b c d a b c d")["input_ids"]] * 5
    vocab = mine_fgrams(docs, num_fgrams=10, tokenizer=tokenizer, show_progress=False)
    assert vocab.vocab_size == len(tokenizer)
    vocab.save(tmp_path)
    FgramVocab.load(tmp_path, tokenizer=tokenizer)  # same tokenizer: fine
    with pytest.raises(TokenizerMismatchError, match="fingerprint mismatch"):
        FgramVocab.load(tmp_path, tokenizer=other)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_fgrams"):
        mine_fgrams([[3, 4]], num_fgrams=0, show_progress=False)
    with pytest.raises(ValueError, match="max_len"):
        mine_fgrams([[3, 4]], num_fgrams=3, max_len=1, show_progress=False)
    with pytest.raises(ValueError, match="max_len must be in 2..127"):  # (was an OverflowError at match time)
        mine_fgrams([[3, 4]], num_fgrams=3, max_len=128, show_progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        mine_fgrams([[3, 40]] * 6, num_fgrams=3, vocab_size=10, show_progress=False)
    with pytest.raises(TypeError, match="iterable"):
        mine_fgrams(42, num_fgrams=3, show_progress=False)


def test_large_vocabulary_uses_hash_levels_and_agrees(docs):
    """V*V above the dense limit: bigrams go through the hash path; results and matching are unchanged."""
    from hf_efficient_lm.scone import match_flat
    from hf_efficient_lm.tools.scone_mining import DENSE_LIMIT

    vocab_size = 7000
    assert vocab_size * vocab_size > DENSE_LIMIT
    shifted = [[t + 6000 for t in d] for d in docs]
    vocab = mine_fgrams(shifted, num_fgrams=80, max_len=4, min_count=3, vocab_size=vocab_size, show_progress=False)
    assert vocab_contents(vocab) == reference_fgrams(shifted, 80, 4, 3, barrier_ids=())
    flat = np.concatenate([np.append(np.array(d), -1) for d in shifted[:10]])
    rows, lengths = match_flat(vocab, flat)
    torch_rows, torch_lengths = vocab.match(torch.from_numpy(flat)[None].clamp(min=0), (torch.from_numpy(flat) >= 0)[None])
    assert rows.tolist() == torch_rows[0].tolist() and lengths.tolist() == torch_lengths[0].tolist()


def test_precomputed_columns_treat_masked_padding_like_the_model():
    """Left-padded rows whose pad id is an ordinary token: the columns stop matches at the padding, as
    ``FgramVocab.match(ids, attention_mask)`` (the model's own matching) does."""
    import datasets

    from hf_efficient_lm.tools.scone_mining import add_fgram_columns

    vocab = mine_fgrams([[5, 6, 7, 8]] * 5, num_fgrams=100, max_len=3, min_count=2, vocab_size=10,
                        show_progress=False)
    rows = [{"input_ids": [5, 6, 7, 8], "attention_mask": [0, 1, 1, 1]},
            {"input_ids": [5, 5, 6, 7], "attention_mask": [0, 0, 1, 1]},
            {"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 1]}]
    columns = add_fgram_columns(datasets.Dataset.from_list(rows), vocab)
    expected_rows, expected_lengths = vocab.match(torch.tensor([r["input_ids"] for r in rows]),
                                                  torch.tensor([r["attention_mask"] for r in rows]))
    assert columns["fgram_len"] == expected_lengths.tolist() == [[0, 0, 2, 3], [0, 0, 0, 2], [0, 2, 3, 3]]
    assert columns["fgram_row"] == expected_rows.tolist()
