"""Long inputs: the AnSAN mask built block by block (sdpa) gives the dense mask's logits and gradients; flex guard."""

import pytest
import torch

from hf_efficient_lm import AnchorLlamaConfig, AnchorLlamaForCausalLM
from hf_efficient_lm.anchor import masking_anchor, modeling_anchor_llama
from hf_efficient_lm.anchor.masking_anchor import AnchorAttentionMask, ansan_mask_function, chunk_token_info
from hf_efficient_lm.compat import cache_of
from hf_efficient_lm.testing_utils import make_tiny_llama
from tests.anchor.helpers import ANCHOR_IDS, anchored_ids

ATOL = 2e-5


def _anchor_model(attn="sdpa", seed=0):
    llama = make_tiny_llama(seed)
    config = AnchorLlamaConfig(**llama.config.to_dict(), anchor_token_ids=ANCHOR_IDS)
    config._attn_implementation = attn
    model = AnchorLlamaForCausalLM(config)
    model.load_state_dict(llama.state_dict())
    return model


@pytest.fixture
def block_calls(monkeypatch):
    """Makes every mask over 60 entries go block by block (blocks of 60 // (batch * kv_len) rows, >= 1) and counts
    the attention calls that took that path."""
    monkeypatch.setattr(masking_anchor, "DENSE_MASK_MAX_ELEMENTS", 60)
    calls = []
    original = modeling_anchor_llama.chunked_sdpa_attention

    def counting(module, query, *args, **kwargs):
        calls.append(query.shape[2])
        return original(module, query, *args, **kwargs)

    monkeypatch.setattr(modeling_anchor_llama, "chunked_sdpa_attention", counting)
    return calls


def _batch():
    ids = anchored_ids(2, 48, seed=21)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in row 1
    ids[1, :5] = 0
    n_anchors = int(torch.isin(ids, torch.tensor(ANCHOR_IDS)).sum())
    assert n_anchors >= 16  # many sentences per row, so the mask is far from causal
    return ids, mask


def _logits_and_grads(model, ids, mask):
    model.zero_grad(set_to_none=True)
    out = model(ids, attention_mask=mask, labels=torch.where(mask.bool(), ids, -100))
    out.loss.backward()
    return out.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_mask_blocks_equal_the_dense_mask():
    generator = torch.Generator().manual_seed(3)
    is_anchor = torch.rand(2, 37, generator=generator) < 0.3
    valid = torch.ones(2, 37, dtype=torch.bool)
    valid[0, :4] = False
    info = chunk_token_info(is_anchor, valid)
    dense = masking_anchor.build_anchor_attention_mask("sdpa", info, info)
    lazy = AnchorAttentionMask(ansan_mask_function(info, info), 2, 37, 37, "cpu", max_elements=2 * 37 * 5)
    assert lazy.block_rows() == 5
    assert torch.equal(lazy.dense(), dense)
    assert torch.equal(lazy.rows(10, 15, kv_end=15), dense[:, :, 10:15, :15])
    assert not dense[:, :, 10:15, 15:].any()  # what a block skips is invisible (causal)
    assert 0.1 < dense.float().mean() < 0.45  # not causal (0.5+), not diagonal


@pytest.mark.parametrize("checkpointing", [None, False, True], ids=["plain", "checkpointing", "reentrant-checkpointing"])
def test_blockwise_sdpa_equals_dense_logits_and_gradients(block_calls, monkeypatch, checkpointing):
    ids, mask = _batch()
    model = _anchor_model().train()
    if checkpointing is not None:  # the blocks' own checkpoints nest inside the layers'
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": checkpointing})
    blocked_logits, blocked_grads = _logits_and_grads(model, ids, mask)
    assert block_calls and all(q == 48 for q in block_calls)  # the block path really ran, in every layer
    monkeypatch.setattr(masking_anchor, "DENSE_MASK_MAX_ELEMENTS", 1 << 22)  # dense, shared additive mask
    block_calls.clear()
    dense_logits, dense_grads = _logits_and_grads(model, ids, mask)
    eager = _anchor_model("eager").train()
    eager_logits, eager_grads = _logits_and_grads(eager, ids, mask)
    assert not block_calls
    real = mask.bool()
    torch.testing.assert_close(blocked_logits[real], dense_logits[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(blocked_logits[real], eager_logits[real], atol=ATOL, rtol=0)
    for name, grad in dense_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(blocked_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
        torch.testing.assert_close(blocked_grads[name], eager_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    # the logits vary (non-degenerate state) and the anchors matter: a causal model differs
    assert dense_logits.std() > 0.05
    plain = make_tiny_llama(0).train()
    assert (plain(ids, attention_mask=mask).logits.detach()[real] - dense_logits[real]).abs().max() > 1e-3


@torch.no_grad()
def test_blockwise_prefill_against_a_pruned_cache_equals_full_forward(block_calls):
    """Keys = kept cache slots + the chunk: each block of rows reads the slots and the chunk up to its last row."""
    model = _anchor_model().eval()
    ids = anchored_ids(2, 64, seed=22)
    full = model(ids).logits
    first = model(ids[:, :29], use_cache=True)
    cache = cache_of(first)
    kept = cache.cached_tokens_per_row()
    assert 0 < min(kept) and max(kept) < 29  # pruned, and the open sentence crosses the chunk boundary
    block_calls.clear()
    second = model(ids[:, 29:], past_key_values=cache, use_cache=True)
    assert block_calls == [35, 35]  # both layers took the block path for the second chunk
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, atol=ATOL, rtol=0)


@torch.no_grad()
def test_blockwise_padding_free_rows_equal_documents_alone(block_calls):
    model = _anchor_model().eval()
    docs = [anchored_ids(1, 30, seed=23), anchored_ids(1, 26, seed=24)]
    packed = torch.cat(docs, 1)
    position_ids = torch.cat([torch.arange(30), torch.arange(26)])[None]
    logits = model(packed, position_ids=position_ids).logits
    assert block_calls
    torch.testing.assert_close(logits[:, :30], model(docs[0]).logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[:, 30:], model(docs[1]).logits, atol=ATOL, rtol=0)


def test_sdpa_layers_share_one_additive_mask():
    """Short inputs: one float mask for all layers (a bool mask would make torch copy it to float in every layer)."""
    model = _anchor_model().eval()
    seen = []
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
        )
        for layer in model.model.layers
    ]
    try:
        model(anchored_ids(1, 20, seed=25))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 2 and seen[0] is seen[1]
    assert seen[0].dtype == torch.float32 and seen[0].shape == (1, 1, 20, 20)
    assert torch.isinf(seen[0]).any() and (seen[0] == 0).any()


def test_flex_training_on_cpu_is_refused_clearly():
    model = _anchor_model("flex_attention").train()
    with pytest.raises(ValueError, match="flex_attention.*cannot train on CPU"):
        model(anchored_ids(1, 8, seed=26))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention has a backward pass only on CUDA")
def test_flex_training_equals_sdpa_on_cuda():
    ids, mask = _batch()
    ids, mask = ids.cuda(), mask.cuda()
    flex = _anchor_model("flex_attention").cuda().train()
    sdpa = _anchor_model("sdpa").cuda().train()
    flex_logits, flex_grads = _logits_and_grads(flex, ids, mask)
    sdpa_logits, sdpa_grads = _logits_and_grads(sdpa, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(flex_logits[real], sdpa_logits[real], atol=1e-4, rtol=0)
    for name, grad in sdpa_grads.items():
        torch.testing.assert_close(flex_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)
