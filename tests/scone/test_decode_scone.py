"""Decode-step paths: the per-step matcher's suffix memo and the few-position table fusion equal the general paths."""

import random

import pytest
import torch

from hf_efficient_lm.scone import SconeLlamaForCausalLM, export_fgram_table, mine_fgrams
from hf_efficient_lm.scone import fgram_vocab_scone, modeling_scone_llama
from hf_efficient_lm.testing_utils import save_tiny_llama
from tests.scone.conftest import pattern_docs, scone_model


def _decode_like_steps(vocab, docs, seed, steps=30):
    """Yield ``(ids, mask)`` growing by one column per step like generate(): left-padded prompts, tokens from the
    pattern documents (so long f-grams occur) with some barriers and random ids, rows reordered/duplicated like
    beam search, and now and then unrelated calls in between (another generate() call, short sequences)."""
    rng = random.Random(seed)
    batch, width = rng.randint(1, 6), rng.randint(1, 7)
    sources = [rng.choice(docs) for _ in range(batch)]
    # the padding holds real pattern tokens, so only the mask stops f-grams from reaching into it
    ids = torch.tensor([source[:width] for source in sources])
    mask = (torch.arange(width) >= torch.tensor([[rng.randint(0, width - 1)] for _ in range(batch)])).long()
    for step in range(width, width + steps):
        new = []
        for source in sources:
            roll = rng.random()
            new.append(rng.choice(vocab.barrier_ids) if roll < 0.05 else rng.randrange(vocab.vocab_size)
                       if roll < 0.15 else source[step % len(source)])
        ids = torch.cat([ids, torch.tensor(new)[:, None]], 1)
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.long)], 1)
        if rng.random() < 0.25:  # beam search keeps some beams twice and drops others
            order = torch.tensor([rng.randrange(batch) for _ in range(batch)])
            ids, mask = ids[order], mask[order]
        yield ids, mask
        if rng.random() < 0.1:
            yield torch.tensor([rng.choice(docs)[:9] for _ in range(2)]), None
        if rng.random() < 0.2:  # sequences shorter than K, then the same text shifted by one token
            doc, start = rng.choice(docs), rng.randint(0, 4)
            size = rng.randint(2, vocab.max_len)
            yield torch.tensor([doc[start:start + size]]), None
            yield torch.tensor([doc[start + 1:start + 1 + size]]), None


@pytest.mark.parametrize("max_len", [2, 4, 5])
@pytest.mark.parametrize("level_lookup", ["dict", "bisect"])
def test_step_matcher_equals_full_match_over_generation(max_len, level_lookup, monkeypatch):
    if level_lookup == "bisect":  # the path of vocabularies too large for per-level dicts
        monkeypatch.setattr(fgram_vocab_scone, "SCALAR_DICT_KEYS", 0)
    docs = pattern_docs(num_docs=60, seed=max_len)
    vocab = mine_fgrams(docs, num_fgrams=120, max_len=max_len, min_count=2, barrier_ids=(0, 1, 2), vocab_size=128,
                        show_progress=False)
    long_docs = [d for d in docs if len(d) >= 9]
    checked = matched = 0
    for seed in range(12):
        for ids, mask in _decode_like_steps(vocab, long_docs, seed):
            rows, lengths = vocab.match_last(ids, 1, mask)
            full_rows, full_lengths = vocab.match(ids, mask)
            assert torch.equal(rows, full_rows[:, -1:]) and torch.equal(lengths, full_lengths[:, -1:])
            checked += lengths.numel()
            matched += int((lengths >= 2).sum())
    assert matched > checked // 4  # the walk really extends chains (and rebuilds them after reorders)


@pytest.fixture(scope="module")
def models(tmp_path_factory, vocab):
    root = tmp_path_factory.mktemp("decode")
    llama_dir = save_tiny_llama(root / "llama")
    out = {}
    for fusion in ("gated", "replace"):
        model = scone_model(llama_dir, vocab, fusion)
        table_dir = export_fgram_table(model, root / fusion, show_progress=False)
        out[fusion] = SconeLlamaForCausalLM.from_pretrained(table_dir).eval()
    return out


@pytest.mark.parametrize("fusion", ["gated", "replace"])
@torch.no_grad()
def test_few_position_table_fusion_is_bitwise_the_general_path(models, docs, fusion, monkeypatch):
    table = models[fusion]
    ids = torch.tensor([d[:6] for d in docs if len(d) >= 6][:4])
    rows, lengths = table.match_fgrams(ids)
    assert (lengths >= 2).any() and (lengths < 2).any()
    b, t = (lengths >= 2).nonzero()[0].tolist()  # one matched position: what a batch-1 decode step sees
    cases = [(ids, rows, lengths), (ids[b:b + 1, t:t + 1], rows[b:b + 1, t:t + 1], lengths[b:b + 1, t:t + 1])]
    few = [table.model.scone_embeddings(*case) for case in cases]
    as_lists = [table.model.scone_embeddings(i, r.tolist(), n.tolist()) for i, r, n in cases]
    monkeypatch.setattr(modeling_scone_llama, "_FEW_POSITIONS", 0)
    general = [table.model.scone_embeddings(*case) for case in cases]
    for a, b, c in zip(few, as_lists, general):
        assert torch.equal(a, c) and torch.equal(b, c)
    assert torch.equal(table.model.scone_embeddings(ids, rows, torch.zeros_like(lengths)), table.model.embed_tokens(ids))
    with pytest.raises(ValueError, match="shape of input_ids"):
        table.model.scone_embeddings(ids, rows.tolist(), lengths[:, :-1].tolist())


@torch.no_grad()
def test_beam_search_with_cache_equals_recompute(models, docs):
    table = models["gated"]
    long_docs = [d for d in docs if len(d) >= 8]
    padded = torch.zeros(2, 8, dtype=torch.long)
    padded[0], padded[1, 3:] = torch.tensor(long_docs[0][:8]), torch.tensor(long_docs[1][:5])
    mask = (torch.arange(8) >= torch.tensor([[0], [3]])).long()
    common = dict(max_new_tokens=10, num_beams=3, num_return_sequences=3, do_sample=False, pad_token_id=0,
                  eos_token_id=None, attention_mask=mask)
    cached = table.generate(padded, use_cache=True, **common)
    assert torch.equal(cached, table.generate(padded, use_cache=False, **common))
    assert (table.match_fgrams(cached)[1][:, 8:] >= 2).any()  # generated tokens do use f-grams
    # the per-step "not remote code" answer is confined to prepare_inputs_for_generation (code export still works)
    assert "is_remote_code" not in table.__dict__ and table.is_remote_code()
