"""Prefix compression: demonstrations compressed once, reused for many queries, exactly."""

import torch

from hf_efficient_lm import AnchorLlamaForCausalLM
from hf_efficient_lm.anchor import compress_prefix, continuation_logits, generate_with_prefix
from tests.anchor.helpers import ANCHOR_IDS, anchored_ids


@torch.no_grad()
def test_compressed_prefix_reused_for_many_queries_is_exact(anchor_llama_dir):
    model = AnchorLlamaForCausalLM.from_pretrained(anchor_llama_dir, anchor_token_ids=ANCHOR_IDS).eval()
    prefix_ids = anchored_ids(1, 40, seed=11)
    prefix_ids[0, -1] = ANCHOR_IDS[0]  # demonstrations end with an anchor
    prefix = compress_prefix(model, prefix_ids)
    n_anchors = int(torch.isin(prefix_ids, torch.tensor(ANCHOR_IDS)).sum())
    assert prefix.cached_tokens() == n_anchors < 40 and prefix.seen_tokens == 40
    before = [layer.keys.clone() for layer in prefix.cache.layers]

    queries = anchored_ids(3, 9, seed=12)
    mask = torch.ones_like(queries)
    mask[2, -3:] = 0  # a shorter, right-padded query
    logits, _ = continuation_logits(model, prefix, queries, attention_mask=mask)
    for row in range(3):
        length = int(mask[row].sum())
        full = model(torch.cat([prefix_ids, queries[row : row + 1, :length]], 1)).logits[0, 40:]
        torch.testing.assert_close(logits[row, :length], full, atol=2e-5, rtol=0)
    # the stored prefix was not modified by the queries
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, prefix.cache.layers))

    query = queries[:1]
    reused = generate_with_prefix(model, prefix, query, max_new_tokens=8, do_sample=False)
    recomputed = model.generate(torch.cat([prefix_ids, query], 1), max_new_tokens=8, do_sample=False)
    assert torch.equal(reused, recomputed)
    beams = generate_with_prefix(model, prefix, query, max_new_tokens=6, num_beams=2, do_sample=False)
    recomputed = model.generate(torch.cat([prefix_ids, query], 1), max_new_tokens=6, num_beams=2, do_sample=False)
    assert torch.equal(beams, recomputed)


def test_answer_from_compressed_prefix_reports_every_query_and_prunes_the_demonstrations():
    """The example's package call: each query answered from the compressed prefix; the demonstrations keep only
    their anchors; the built-in recompute check passes (it raises if the cached answer differs)."""
    from hf_efficient_lm.tools.anchor_icl import DEMONSTRATIONS, QUERIES, answer_from_compressed_prefix, tiny_anchor_model

    torch.manual_seed(0)
    model, tokenizer = tiny_anchor_model([text for text, _ in DEMONSTRATIONS] + list(QUERIES))
    report = answer_from_compressed_prefix(model, tokenizer, queries=QUERIES[:2], max_new_tokens=3)
    assert list(report["answers"]) == list(QUERIES[:2])
    assert 0 < report["cached_tokens"] < report["seen_tokens"] / 2  # one anchor per demonstration sentence, roughly
    assert report["kv_bytes"] > 0
