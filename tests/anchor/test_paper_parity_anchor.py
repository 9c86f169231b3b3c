"""Paper-parity switches (EP anchors = the exact '.', compact positions) and the decode-step mask."""

import json

import pytest
import torch

from hf_efficient_lm import AnchorCache, AnchorLlamaConfig, AnchorLlamaForCausalLM
from hf_efficient_lm.anchor import find_endpoint_token_ids
from hf_efficient_lm.anchor.masking_anchor import (
    build_anchor_attention_mask,
    chunk_token_info,
    decode_step_mask,
)
from hf_efficient_lm.compat import cache_of
from hf_efficient_lm.tools.anchor_reference import compact_position_ids
from hf_efficient_lm.testing_utils import make_tiny_llama, tiny_llama_config
from tests.anchor.helpers import ANCHOR_IDS, anchored_ids

ATOL = 2e-5


def _anchor_model(**config_kwargs):
    llama = make_tiny_llama(0)
    config = AnchorLlamaConfig(**llama.config.to_dict(), anchor_token_ids=ANCHOR_IDS, **config_kwargs)
    model = AnchorLlamaForCausalLM(config).eval()
    model.load_state_dict(llama.state_dict())
    return model


# ------------------------------------------------------------------------------------------------ EP anchor choice
def test_ep_default_is_the_exact_period_token_and_suffix_is_the_broad_option(tiny_bpe_tokenizer):
    tok = tiny_bpe_tokenizer
    paper = find_endpoint_token_ids(tok)
    assert [tok.decode([i]) for i in paper] == ["."]  # the paper / official script: only the bare "." piece
    assert find_endpoint_token_ids(tok, match="exact") == paper
    broad = find_endpoint_token_ids(tok, match="suffix")
    texts = {tok.decode([i]) for i in broad}
    assert {".", "!", "?", "\n"} <= texts  # . ! ? and newline (and BPE merges ending in them: none in this vocab)
    assert all(t.rstrip(" ").endswith((".", "!", "?", "\n")) for t in texts)
    assert find_endpoint_token_ids(tok, match="endswith") == broad  # the old name stays an alias
    with pytest.raises(ValueError, match="match must be one of .*'prefix'"):
        find_endpoint_token_ids(tok, match="prefix")


# ------------------------------------------------------------------------------------------------ position mode
def test_position_mode_is_validated_and_old_configs_load_as_absolute(tmp_path):
    with pytest.raises(ValueError, match="position_mode must be one of .*'relative'"):
        AnchorLlamaConfig(**tiny_llama_config().to_dict(), anchor_token_ids=ANCHOR_IDS, position_mode="relative")
    config = AnchorLlamaConfig(**tiny_llama_config().to_dict(), anchor_token_ids=ANCHOR_IDS, position_mode="compact")
    config.save_pretrained(tmp_path)
    assert AnchorLlamaConfig.from_pretrained(tmp_path).position_mode == "compact"
    data = json.loads((tmp_path / "config.json").read_text())
    del data["position_mode"]  # a config saved before the field existed
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert AnchorLlamaConfig.from_pretrained(tmp_path).position_mode == "absolute"


def test_compact_position_ids_count_the_kept_entries():
    #                 w  w  A  w  w  A  w | w  A  w  w
    is_anchor = torch.tensor([[0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0]]).bool()
    positions = compact_position_ids(is_anchor, [7, 1, 1, 1, 1])
    # prompt 0..6; then kept = 2 anchors + open sentence (1, 2 tokens), then 3 anchors + 0, 1 open tokens
    assert positions.tolist() == [[0, 1, 2, 3, 4, 5, 6, 3, 4, 3, 4]]
    with pytest.raises(ValueError, match="chunk_sizes"):
        compact_position_ids(is_anchor, [7, 1])


@torch.no_grad()
def test_compact_cached_decode_equals_its_recompute_definition():
    """Prefill + token-by-token decoding (the official real-time inference) in compact mode == one masked forward
    with the compacted positions; anchors in the prompt and in the continuation prune across the steps."""
    model = _anchor_model(position_mode="compact")
    ids = anchored_ids(2, 40, seed=35)
    prompt = 17
    is_anchor = torch.isin(ids, torch.tensor(ANCHOR_IDS))
    assert is_anchor[:, :prompt].sum(1).min() >= 2 and is_anchor[:, prompt:].sum(1).min() >= 3
    out = model(ids[:, :prompt], use_cache=True)
    cache, steps = cache_of(out), [out.logits]
    for t in range(prompt, ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
    cached = torch.cat(steps, 1)
    positions = compact_position_ids(is_anchor, [prompt] + [1] * (ids.shape[1] - prompt))
    # an all-ones mask: the positions fall back after each anchor and must not be read as packed documents
    recomputed = model(ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits
    torch.testing.assert_close(cached, recomputed, atol=ATOL, rtol=0)
    # compact really differs from absolute: smaller positions, other logits after the prompt
    assert (positions[:, prompt:] < torch.arange(prompt, ids.shape[1])).all()
    absolute = model(ids).logits
    torch.testing.assert_close(cached[:, :prompt], absolute[:, :prompt], atol=ATOL, rtol=0)
    assert (cached[:, prompt + 1 :] - absolute[:, prompt + 1 :]).abs().amax() > 1e-3
    # and the absolute mode still decodes to the full forward
    absolute_model = _anchor_model()
    out = absolute_model(ids[:, :prompt], use_cache=True)
    cache, steps = cache_of(out), [out.logits]
    for t in range(prompt, ids.shape[1]):
        steps.append(absolute_model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, 1), absolute, atol=ATOL, rtol=0)


@torch.no_grad()
def test_compact_greedy_generate_equals_recomputed_greedy():
    model = _anchor_model(position_mode="compact")
    # make the anchors likely continuations, so that generation itself prunes the cache
    model.lm_head.weight[ANCHOR_IDS] *= 4
    prompt = anchored_ids(1, 15, seed=32)
    generated = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    seq = prompt
    for _ in range(20):
        is_anchor = torch.isin(seq, torch.tensor(ANCHOR_IDS))
        positions = compact_position_ids(is_anchor, [15] + [1] * (seq.shape[1] - 15))
        logits = model(seq, attention_mask=torch.ones_like(seq), position_ids=positions).logits[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, seq)
    assert torch.isin(seq[0, 15:-1], torch.tensor(ANCHOR_IDS)).sum() >= 2  # generated anchors pruned the cache


# ------------------------------------------------------------------------------------------------ decode-step mask
@pytest.mark.parametrize("variant", ["v1", "v0"])
def test_decode_step_mask_equals_the_generic_mask(variant):
    """The per-step shortcut gives the builder's mask bit for bit, including None only when all keys are visible:
    ragged rows (left padding) and anchor queries need a mask, a plain batch-1 step does not."""
    generator = torch.Generator().manual_seed(33)
    outcomes = {"none": 0, "mask": 0}
    for batch, pad in [(3, 6), (1, 0)]:
        cache = AnchorCache(num_hidden_layers=1)
        valid = torch.ones(batch, 20, dtype=torch.bool)
        valid[0, :pad] = False
        cache.begin_chunk(chunk_token_info(torch.rand(batch, 20, generator=generator) < 0.3, valid))
        for _ in range(15):
            query = chunk_token_info(
                torch.rand(batch, 1, generator=generator) < 0.3,
                torch.ones(batch, 1, dtype=torch.bool),
                cache.seen_tokens,
                cache.anchors_seen,
            )
            keys = cache.begin_chunk(query)
            expected = build_anchor_attention_mask("sdpa", query, keys, variant=variant)
            got = decode_step_mask(query, keys, variant)
            if got is None:
                assert expected.all()
                outcomes["none"] += 1
            else:
                assert torch.equal(got, expected)
                outcomes["mask"] += 1
    assert outcomes["none"] >= 3 and outcomes["mask"] >= 3
