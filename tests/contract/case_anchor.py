"""AnchorLlama in the contract suite: tiny Llama weights with anchors at ids 5 and 6 (frequent in the inputs)."""

import torch

from hf_efficient_lm.anchor import AnchorLlamaConfig, AnchorLlamaForCausalLM
from hf_efficient_lm.testing_utils import TINY_LLAMA_KWARGS
from tests.contract.common import ContractCase

ANCHOR_IDS = [5, 6]


def make_anchor_model(attn_implementation: str = "sdpa") -> AnchorLlamaForCausalLM:
    torch.manual_seed(0)
    config = AnchorLlamaConfig(**TINY_LLAMA_KWARGS, anchor_token_ids=ANCHOR_IDS)
    config._attn_implementation = attn_implementation
    return AnchorLlamaForCausalLM(config).eval()


def make_anchor_input_ids(batch: int, length: int, generator: torch.Generator) -> torch.LongTensor:
    """Random ids with an anchor roughly every 4 tokens, so several sentences close inside every row."""
    ids = torch.randint(7, TINY_LLAMA_KWARGS["vocab_size"], (batch, length), generator=generator)
    is_anchor = torch.rand(batch, length, generator=generator) < 0.25
    anchors = torch.tensor(ANCHOR_IDS)[torch.randint(0, len(ANCHOR_IDS), (batch, length), generator=generator)]
    return torch.where(is_anchor, anchors, ids)


CASES = [
    ContractCase(
        name="anchor",
        make_model=make_anchor_model,
        make_input_ids=make_anchor_input_ids,
        assisted_decoding_error="AnchorLlama cannot do assisted decoding .*cannot be cropped out of an AnchorCache",
        invalid_config=("anchor_token_ids", [10_000], "anchor token id 10000 is outside the vocabulary"),
        # the prompt's anchors: embeddings carry no ids (later steps find theirs by id)
        inputs_embeds_kwargs=lambda model, ids: {"anchor_flags": torch.isin(ids, torch.tensor(ANCHOR_IDS))},
        continuous_batching_error="AnchorLlama needs an AnchorCache .*got a filled PagedAttentionCache",
        prefix_tuning_error="AnchorLlama needs an AnchorCache .*got a filled DynamicCache",
        # PEFT hands the forward embeddings with no anchor_flags (they carry no ids to find anchors by)
        prompt_tuning_error="pass anchor_flags .*PEFT prompt tuning / p-tuning pass none: not supported",
    )
]
