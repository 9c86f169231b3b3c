"""Training-mode ("model") SconeLlama decodes exactly with a KV cache when f-grams start in the cached history.

A small alphabet makes almost every 2..4-gram an f-gram, and generation is confined to that alphabet, so nearly every
decode step's new token ends a multi-token f-gram whose other tokens are only in the cache (issue 11, item 1).
"""

import numpy as np
import pytest
import torch

from hf_efficient_lm.compat import cache_of
from hf_efficient_lm.scone import mine_fgrams
from hf_efficient_lm.testing_utils import save_tiny_llama
from tests.scone.conftest import scone_model

ALPHABET = list(range(3, 9))
VOCAB_SIZE = 128
PROMPT_LEN = 10
NEW = 12


def _docs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.choice(ALPHABET, size=40).tolist() for _ in range(60)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    docs = _docs()
    llama_dir = save_tiny_llama(tmp_path_factory.mktemp("history") / "llama")
    vocabs = {
        4: mine_fgrams(docs, num_fgrams=400, max_len=4, min_count=2, barrier_ids=(0, 1, 2), vocab_size=VOCAB_SIZE,
                       show_progress=False),
        2: mine_fgrams(docs, num_fgrams=36, max_len=2, min_count=2, barrier_ids=(0, 1, 2), vocab_size=VOCAB_SIZE,
                       show_progress=False),
    }
    models = {}
    for max_len, vocab in vocabs.items():
        for fusion in ("replace", "gated"):
            models[max_len, fusion] = scone_model(llama_dir, vocab, fusion)
    prompts = torch.tensor([d[:PROMPT_LEN] for d in docs[:2]])
    return models, prompts


def _common(**extra):
    suppress = [i for i in range(VOCAB_SIZE) if i not in ALPHABET]  # generate inside the f-gram-dense alphabet
    return dict(max_new_tokens=NEW, pad_token_id=0, eos_token_id=None, suppress_tokens=suppress, **extra)


def _history_steps(model, sequences, prompt_len):
    """(decode steps, steps whose new token ends an f-gram of length >= 2 / >= 3, i.e. reaching into the cache)."""
    lengths = model.match_fgrams(sequences)[1][:, prompt_len:]
    return lengths.numel(), int((lengths >= 2).sum()), int((lengths >= 3).sum())


@pytest.mark.parametrize("fusion", ["replace", "gated"])
@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
@torch.no_grad()
def test_model_mode_generate_with_cache_equals_recompute(setup, fusion, mode):
    models, prompts = setup
    model = models[4, fusion]
    extra = {"greedy": dict(do_sample=False), "sample": dict(do_sample=True, top_k=0, top_p=1.0),
             "beam": dict(do_sample=False, num_beams=3, num_return_sequences=3)}[mode]
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(1)
        runs.append(model.generate(prompts, use_cache=use_cache, **_common(**extra)))
    assert torch.equal(runs[0], runs[1])
    steps, into_history, three_plus = _history_steps(model, runs[0], PROMPT_LEN)
    print(f"{fusion}/{mode}: {into_history}/{steps} decode steps matched an f-gram reaching into the cache "
          f"({three_plus} of length >= 3)")
    assert into_history >= 0.8 * steps and three_plus >= 0.5 * steps


@pytest.mark.parametrize("fusion", ["replace", "gated"])
@torch.no_grad()
def test_model_mode_left_padded_generate_equals_recompute_and_rows_alone(setup, fusion):
    models, prompts = setup
    model = models[4, fusion]
    padded = prompts.clone()
    padded[1, :4] = 0
    mask = (torch.arange(PROMPT_LEN) >= torch.tensor([[0], [4]])).long()
    kwargs = _common(do_sample=False, attention_mask=mask)
    cached = model.generate(padded, use_cache=True, **kwargs)
    assert torch.equal(cached, model.generate(padded, use_cache=False, **kwargs))
    for row, alone in enumerate((prompts[0], prompts[1, 4:])):
        expected = model.generate(alone[None], **_common(do_sample=False))[0, alone.numel():]
        assert torch.equal(cached[row, PROMPT_LEN:], expected)
    steps, into_history, _ = _history_steps(model, cached, PROMPT_LEN)
    assert into_history >= 0.8 * steps


@pytest.mark.parametrize("max_len", [4, 2])
@pytest.mark.parametrize("fusion", ["replace", "gated"])
@torch.no_grad()
def test_model_mode_decode_step_logits_equal_full_forward(setup, fusion, max_len):
    """Step by step with a KV cache (one new token per step) == one forward over the whole sequence. With K=2 the
    old code silently ran A_f on [x_t, x_t] instead of [x_{t-1}, x_t]; with K=4 it raised IndexError."""
    models, prompts = setup
    model = models[max_len, fusion]
    full_ids = model.generate(prompts[:1], use_cache=False, **_common(do_sample=False))
    rows, lengths = model.match_fgrams(full_ids)
    reference = model(full_ids).logits
    out = model(full_ids[:, :PROMPT_LEN], use_cache=True)
    cache, worst, reaching = cache_of(out), 0.0, 0
    for t in range(PROMPT_LEN, full_ids.shape[1]):
        step = model(full_ids[:, t:t + 1], past_key_values=cache, fgram_row=rows[:, t:t + 1],
                     fgram_len=lengths[:, t:t + 1], use_cache=True)
        cache = cache_of(step)
        worst = max(worst, float((step.logits[0, -1] - reference[0, t]).abs().max()))
        reaching += int(lengths[0, t] >= 2)
    print(f"K={max_len} {fusion}: {reaching}/{full_ids.shape[1] - PROMPT_LEN} steps reach into the cache, "
          f"max |step logits - full logits| = {worst:.2e}")
    assert reaching >= 0.8 * (full_ids.shape[1] - PROMPT_LEN)
    assert worst < 1e-5


@torch.no_grad()
def test_history_fgrams_without_vocabulary_are_rejected(setup):
    models, prompts = setup
    model = models[4, "replace"]
    rows, lengths = model.match_fgrams(prompts[:1])
    t = int((lengths[0] >= 3).nonzero()[-1])
    out = model(prompts[:1, :t], use_cache=True)
    vocab = model.model.fgram_vocab
    model.model.fgram_vocab = None
    try:
        with pytest.raises(ValueError, match="start before input_ids"):
            model(prompts[:1, t:t + 1], past_key_values=cache_of(out), fgram_row=rows[:, t:t + 1],
                  fgram_len=lengths[:, t:t + 1])
    finally:
        model.model.fgram_vocab = vocab


@pytest.mark.parametrize("fusion", ["replace", "gated"])
@pytest.mark.parametrize("chunk", [3, 4])
@torch.no_grad()
def test_chunked_prefill_matches_fgrams_across_chunk_boundaries(setup, fusion, chunk):
    """generate(prefill_chunk_size=c) hands prepare_inputs_for_generation each chunk's ids alone: f-grams that begin
    in the previous chunk must still match (the old code matched each chunk alone: logits off by up to 6.7)."""
    models, prompts = setup
    model = models[4, fusion]
    padded, mask = prompts.clone(), torch.ones_like(prompts)
    padded[1, :2], mask[1, :2] = 0, 0  # left padding: the mask then spans the whole history in every chunk
    for ids, attention_mask in ((prompts, None), (padded, mask)):
        kwargs = _common(do_sample=False, attention_mask=attention_mask, return_dict_in_generate=True,
                         output_logits=True)
        out = model.generate(ids, prefill_chunk_size=chunk, **kwargs)
        reference = model(out.sequences, attention_mask=None if attention_mask is None else torch.cat(
            [attention_mask, torch.ones(2, NEW, dtype=torch.long)], dim=1)).logits[:, PROMPT_LEN - 1:-1]
        assert (torch.stack(out.logits, dim=1) - reference).abs().max() < 1e-4
        assert torch.equal(out.sequences, model.generate(ids, **kwargs).sequences)
    lengths = model.match_fgrams(prompts)[1]
    positions = torch.arange(PROMPT_LEN)
    begins_before_its_chunk = (lengths >= 2) & (positions - lengths + 1 < positions // chunk * chunk)
    assert int(begins_before_its_chunk.sum()) >= 4  # the state that failed: here 12 (chunk 3) and 10 (chunk 4) of 20 prompt positions


@torch.no_grad()
def test_new_tokens_alone_over_a_cache_the_model_did_not_fill_are_refused(setup):
    models, prompts = setup
    model = models[4, "replace"]
    cache = cache_of(model(prompts[:, :6], use_cache=True))  # filled outside generate(): no tail recorded
    with pytest.raises(ValueError, match="f-grams may begin in the cached tokens"):
        model.prepare_inputs_for_generation(prompts[:, 6:], past_key_values=cache)
