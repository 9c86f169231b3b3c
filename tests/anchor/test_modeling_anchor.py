"""AnchorLlama wraps unmodified Llama weights; its AnSAN forward is exact through the pruned AnchorCache."""

import os

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

from hf_efficient_lm import AnchorCache, AnchorLlamaConfig, AnchorLlamaForCausalLM
from hf_efficient_lm.compat import cache_of
from tests.anchor.helpers import ANCHOR_IDS, anchored_ids

ATOL = 2e-5


@pytest.fixture(scope="module")
def model(anchor_llama_dir):
    return AnchorLlamaForCausalLM.from_pretrained(anchor_llama_dir, anchor_token_ids=ANCHOR_IDS).eval()


@pytest.fixture(scope="module")
def llama(anchor_llama_dir):
    return LlamaForCausalLM.from_pretrained(anchor_llama_dir).eval()


def _open_sentence_lengths(ids, attention_mask=None):
    """Expected kept slots per row: anchors + tokens after the last anchor (padding excluded)."""
    kept = []
    for row in range(ids.shape[0]):
        tokens = [
            int(t) for t, m in zip(ids[row], attention_mask[row] if attention_mask is not None else [1] * ids.shape[1])
            if m
        ]
        anchors = [i for i, t in enumerate(tokens) if t in ANCHOR_IDS]
        tail = len(tokens) - (anchors[-1] + 1) if anchors else len(tokens)
        kept.append(len(anchors) + tail)
    return kept


def test_same_parameters_as_llama(model, llama):
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in llama.named_parameters()]
    for (_, a), (_, b) in zip(model.named_parameters(), llama.named_parameters()):
        assert torch.equal(a, b)
    assert isinstance(model.config, AnchorLlamaConfig)
    assert model.config.anchor_token_ids == ANCHOR_IDS


@torch.no_grad()
def test_without_anchors_equals_llama(model, llama):
    ids = torch.randint(7, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids).logits, llama(ids).logits, atol=ATOL, rtol=0)
    assert cache_of(model(ids, use_cache=True)).cached_tokens() == 2 * 16  # no anchor: full cache kept
    # ... and with anchors the mask really changes the logits after the first anchor
    ids = anchored_ids(1, 16, seed=3)
    first = int((torch.isin(ids[0], torch.tensor(ANCHOR_IDS))).nonzero()[0])
    diff = (model(ids).logits - llama(ids).logits).abs().amax(-1)[0]
    assert diff[: first + 1].max() < ATOL and diff[first + 2 :].max() > 1e-3


@pytest.mark.parametrize("variant", ["v1", "v0"])
@torch.no_grad()
def test_token_by_token_pruned_decode_equals_full_masked_forward(model, variant):
    model.config.anchor_mask_variant = variant
    ids = anchored_ids(3, 30, seed=4)
    try:
        _check_token_by_token(model, ids)
        if variant == "v0":  # the variant really changes the attention (anchors see earlier anchors)
            v0_logits = model(ids).logits
            model.config.anchor_mask_variant = "v1"
            assert (v0_logits - model(ids).logits).abs().max() > 1e-4
    finally:
        model.config.anchor_mask_variant = "v1"


def _check_token_by_token(model, ids):
    full = model(ids).logits
    cache, steps, kept_history = None, [], []
    for t in range(ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = cache_of(out)
        steps.append(out.logits)
        kept_history.append(cache.cached_tokens_per_row())
    assert isinstance(cache, AnchorCache)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=0)
    assert cache.get_seq_length() == 30  # seen, not kept
    assert cache.cached_tokens_per_row() == _open_sentence_lengths(ids)
    assert cache.cached_tokens() == sum(_open_sentence_lengths(ids)) < 3 * 30
    for layer in cache.layers:  # every layer holds the same slots
        assert layer.keys.shape[2] == max(_open_sentence_lengths(ids))


@torch.no_grad()
def test_chunked_prefill_against_partial_cache_equals_full_forward(model):
    ids = anchored_ids(2, 32, seed=5)
    full = model(ids).logits
    cache, outs = None, []
    for start, stop in [(0, 7), (7, 8), (8, 19), (19, 32)]:  # chunks end mid-sentence and span anchors
        out = model(ids[:, start:stop], past_key_values=cache, use_cache=True)
        cache = cache_of(out)
        outs.append(out.logits)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=0)
    assert cache.cached_tokens_per_row() == _open_sentence_lengths(ids)
    # generate's own chunked prefill (pruning between chunks bounds peak prefill memory) gives the same tokens
    one = model.generate(ids[:1, :23], max_new_tokens=6, do_sample=False)
    chunked = model.generate(ids[:1, :23], max_new_tokens=6, do_sample=False, prefill_chunk_size=5)
    assert torch.equal(one, chunked)


@torch.no_grad()
def test_padding_left_and_right_equals_rows_alone(model):
    ids = anchored_ids(2, 14, seed=6)
    pad = 0
    left = torch.cat([torch.full((1, 4), pad), ids[:1]], 1)
    right = torch.cat([ids[1:], torch.full((1, 4), pad)], 1)
    batch = torch.cat([left, right])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    mask[1, -4:] = 0
    logits = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(logits[0, 4:], model(ids[:1]).logits[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1, :-4], model(ids[1:]).logits[0], atol=ATOL, rtol=0)
    # the cache drops padding: kept slots match each row alone
    cache = cache_of(model(batch, attention_mask=mask, use_cache=True))
    assert cache.cached_tokens_per_row() == _open_sentence_lengths(batch, mask)


@torch.no_grad()
def test_sdpa_equals_eager_with_padding(anchor_llama_dir, model):
    eager = AnchorLlamaForCausalLM.from_pretrained(
        anchor_llama_dir, anchor_token_ids=ANCHOR_IDS, attn_implementation="eager"
    ).eval()
    ids = anchored_ids(2, 18, seed=7)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    torch.testing.assert_close(
        eager(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits, atol=ATOL, rtol=0
    )


def _prompt_batch():
    ids = anchored_ids(2, 12, seed=8)
    ids[1, :3] = 0  # left padding of row 1
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(do_sample=False),
        dict(do_sample=True, top_k=0, temperature=1.0),
        dict(do_sample=False, num_beams=3, num_return_sequences=2),
    ],
    ids=["greedy", "sampling", "beam"],
)
def test_generate_with_anchor_cache_equals_no_cache(model, kwargs):
    ids, mask = _prompt_batch()
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        outputs.append(
            model.generate(ids, attention_mask=mask, max_new_tokens=14, use_cache=use_cache, pad_token_id=0, **kwargs)
        )
    assert torch.equal(outputs[0], outputs[1])


@torch.no_grad()
def test_beams_that_close_sentences_at_different_steps_decode_exactly(anchor_llama_dir):
    """Beams of one prompt that emit anchors at different steps keep different slots; every beam step reorders the
    rows, and each row's slot metadata (sentence ids, anchor flags, open sentence) must move with its keys. Id 95
    is made an anchor: this tiny model emits it mid-generation in some beams and not in others."""
    ids, mask = _prompt_batch()
    model = AnchorLlamaForCausalLM.from_pretrained(anchor_llama_dir, anchor_token_ids=[*ANCHOR_IDS, 95]).eval()
    common = dict(attention_mask=mask, max_new_tokens=14, pad_token_id=0, do_sample=False, num_beams=3,
                  num_return_sequences=3)
    cached = model.generate(ids, **common)
    assert torch.equal(cached, model.generate(ids, use_cache=False, **common))
    # the state is not degenerate: the returned beams of prompt 0 close sentences at different steps
    anchor_steps = {tuple((row == 95).nonzero().flatten().tolist()) for row in cached[:3, ids.shape[1]:]}
    assert len(anchor_steps) > 1, anchor_steps


@torch.no_grad()
def test_batch_select_indices_keeps_each_selected_rows_slots(model):
    """``Cache.batch_select_indices`` (a public cache method) keeps the chosen rows, with their own kept slots and
    slot metadata: a step after it equals the full masked forward of those rows."""
    ids = anchored_ids(3, 12, seed=5)
    cache = cache_of(model(ids, use_cache=True))
    kept = cache.cached_tokens_per_row()
    assert kept[0] != kept[2], kept  # the state is not degenerate: the rows keep different slots
    cache.batch_select_indices(torch.tensor([2, 0]))
    assert cache.cached_tokens_per_row() == [kept[2], kept[0]]
    step = torch.tensor([[9], [11]])
    expected = model(torch.cat([ids[[2, 0]], step], dim=1)).logits[:, -1:]
    torch.testing.assert_close(model(step, past_key_values=cache).logits, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_generate_prunes_generated_anchors(anchor_llama_dir, llama):
    # A random tiny model rarely emits ids 5/6; pick as anchor the token it generates most (a probe run with Llama),
    # so generated anchors trigger pruning during decoding.
    ids = anchored_ids(1, 10, seed=9, every=0.0)
    probe = llama.generate(ids, max_new_tokens=20, do_sample=False)[0, 10:]
    anchor = int(torch.mode(probe).values)
    model = AnchorLlamaForCausalLM.from_pretrained(anchor_llama_dir, anchor_token_ids=[anchor]).eval()
    cached = model.generate(ids, max_new_tokens=20, do_sample=False, return_dict_in_generate=True)
    uncached = model.generate(ids, max_new_tokens=20, do_sample=False, use_cache=False)
    assert torch.equal(cached.sequences, uncached)
    cache = cache_of(cached)
    assert isinstance(cache, AnchorCache)
    fed = cached.sequences[:, :-1]  # the last generated token was never fed back
    n_anchor = int((fed == anchor).sum())
    assert n_anchor > 0, f"the test model generated no anchor: {cached.sequences[0, 10:].tolist()}"
    anchors = (fed[0] == anchor).nonzero().flatten().tolist()
    assert cache.cached_tokens() == len(anchors) + fed.shape[1] - anchors[-1] - 1
    assert cache.cached_tokens() < cache.get_seq_length() == fed.shape[1]


@torch.no_grad()
@pytest.mark.parametrize(
    "search", [dict(do_sample=False), dict(do_sample=False, num_beams=3, num_return_sequences=2)], ids=["greedy", "beam"]
)
def test_generate_from_inputs_embeds_equals_from_ids(anchor_llama_dir, search):
    """``generate(inputs_embeds=..., anchor_flags=...)`` == ``generate(ids)``: prompt anchors come as flags, generated
    ones are found by id. Id 95 is made an anchor too: of the ids 7..127 it is the one this tiny model, with it as an
    anchor, emits at least 4 times in both searches (a scan), so sentences close mid-generation."""
    ids, mask = _prompt_batch()
    model = AnchorLlamaForCausalLM.from_pretrained(anchor_llama_dir, anchor_token_ids=[*ANCHOR_IDS, 95]).eval()
    anchor_ids = torch.tensor(model.config.anchor_token_ids)
    flags = torch.isin(ids, anchor_ids) & mask.bool()
    embeds = model.get_input_embeddings()(ids)
    common = dict(attention_mask=mask, max_new_tokens=14, pad_token_id=0, **search)
    from_ids = model.generate(ids, **common)[:, ids.shape[1]:]
    from_embeds = model.generate(inputs_embeds=embeds, anchor_flags=flags, **common)
    assert torch.equal(from_embeds, from_ids)
    # the state is not degenerate: anchors in every prompt row and among the generated tokens, and the flags matter
    assert (flags.sum(dim=1) > 0).all() and int(torch.isin(from_ids, anchor_ids).sum()) >= 3
    unflagged = model.generate(inputs_embeds=embeds, anchor_flags=torch.zeros_like(flags), **common)
    assert not torch.equal(unflagged, from_ids)
    with pytest.raises(ValueError, match="pass anchor_flags"):
        model.generate(inputs_embeds=embeds, **common)


def test_bad_input_errors(anchor_llama_dir, model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        AnchorLlamaForCausalLM.from_pretrained(anchor_llama_dir, anchor_token_ids=[5, 500])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        AnchorLlamaConfig(vocab_size=10, hidden_size=32, num_attention_heads=4, anchor_token_ids=[10])
    with pytest.raises(ValueError, match="anchor_mode"):
        AnchorLlamaConfig(vocab_size=10, hidden_size=32, num_attention_heads=4, anchor_mode="xx")
    with pytest.raises(ValueError, match="[Ff]lash"):
        AnchorLlamaForCausalLM.from_pretrained(
            anchor_llama_dir, anchor_token_ids=ANCHOR_IDS, attn_implementation="flash_attention_2"
        )
    ids = anchored_ids(1, 6)
    with pytest.raises(ValueError, match="2D padding mask"):
        model(ids, attention_mask=torch.ones(1, 1, 6, 6))
    filled = DynamicCache(config=model.config)
    filled.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), 0)
    with pytest.raises(TypeError, match="AnchorCache"):
        model(ids, past_key_values=filled)
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache_of(model(ids, use_cache=True)).crop(-1)
    # flags of one row, or 1-D, broadcast over the batch and silently gave every row the first row's anchors
    two = anchored_ids(2, 8, seed=4)
    for flags in (torch.ones(1, 8, dtype=torch.bool), torch.ones(8, dtype=torch.bool), torch.ones(2, 8)):
        with pytest.raises(ValueError, match=r"anchor_flags must be a bool tensor of shape \[batch, q_len\] = \[2, 8\]"):
            model(two, anchor_flags=flags)
    # a mask wider than the input was read from its right (Llama reads its left), and generate(input_ids) dropped flags
    with pytest.raises(ValueError, match=r"\[batch, seen \+ q_len\] = \[2, 8\], got shape \(2, 10\)"):
        model(two, attention_mask=torch.ones(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="anchor_flags with inputs_embeds only"):
        model.generate(two, anchor_flags=torch.zeros(2, 8, dtype=torch.bool), max_new_tokens=2, pad_token_id=0)


@pytest.mark.skipif(not os.environ.get("HFELM_SLOW"), reason="flex attention compiles for ~1 min on CPU; HFELM_SLOW=1")
@torch.no_grad()
def test_flex_attention_equals_sdpa(anchor_llama_dir, model):
    flex = AnchorLlamaForCausalLM.from_pretrained(
        anchor_llama_dir, anchor_token_ids=ANCHOR_IDS, attn_implementation="flex_attention"
    ).eval()
    ids = anchored_ids(1, 160, seed=13)  # > one 128-token block, so some blocks are skipped / partial
    torch.testing.assert_close(flex(ids).logits, model(ids).logits, atol=1e-4, rtol=0)
