"""The AnSAN mask: the rule's worked example, the loop oracle, padding, sdpa == eager builders."""

import pytest
import torch

from hf_efficient_lm.anchor.masking_anchor import (
    build_anchor_attention_mask,
    check_attn_implementation,
    chunk_token_info,
    find_anchor_tokens,
)
from hf_efficient_lm.tools.anchor_reference import dense_ansan_reference
from tests.anchor.helpers import ANCHOR_IDS, anchored_ids


def _sdpa_mask(input_ids, attention_mask=None, variant="v1"):
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    info = chunk_token_info(find_anchor_tokens(input_ids, ANCHOR_IDS), valid)
    return build_anchor_attention_mask("sdpa", info, info, variant=variant)[:, 0]


def test_figure2_worked_example():
    # w w w A0 w w A1 w  (the spec's 8-token example)
    ids = torch.tensor([[9, 9, 9, 5, 9, 9, 5, 9]])
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 0],
            [0, 0, 0, 1, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(_sdpa_mask(ids)[0], expected)
    v0 = expected.clone()
    v0[6, 3] = True  # v0: an anchor also sees earlier anchors
    assert torch.equal(_sdpa_mask(ids, variant="v0")[0], v0)


@pytest.mark.parametrize("variant", ["v1", "v0"])
def test_mask_matches_loop_oracle_with_padding(variant):
    ids = anchored_ids(3, 20, seed=1)
    attention_mask = torch.ones_like(ids)
    attention_mask[0, :4] = 0  # left padding
    attention_mask[1, -5:] = 0  # right padding
    mask = _sdpa_mask(ids, attention_mask, variant)
    assert torch.equal(mask, dense_ansan_reference(ids, ANCHOR_IDS, attention_mask, variant))
    # rows differ: anchors sit at different places
    assert not torch.equal(mask[1], mask[2])


def test_eager_mask_is_the_additive_form_of_sdpa():
    ids = anchored_ids(2, 12, seed=2)
    info = chunk_token_info(find_anchor_tokens(ids, ANCHOR_IDS), torch.ones_like(ids, dtype=torch.bool))
    boolean = build_anchor_attention_mask("sdpa", info, info)
    additive = build_anchor_attention_mask("eager", info, info, dtype=torch.float32)
    assert torch.equal(additive == 0, boolean)


def test_no_anchors_is_causal():
    ids = torch.randint(7, 100, (2, 10))
    assert torch.equal(_sdpa_mask(ids), torch.ones(10, 10, dtype=torch.bool).tril().expand(2, -1, -1))


def test_flash_attention_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="cannot apply the anchor"):
        check_attn_implementation("flash_attention_2")
