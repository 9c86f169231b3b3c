"""BLTForCausalLM in the contract suite: a tiny BLT (entropy patching with a sharpened random entropy model, so
patches have mixed sizes) over random bytes after BOS. LoRA targets the latent transformer's attention."""

from __future__ import annotations

import torch

from hf_efficient_lm.blt import BLTTokenizer
from hf_efficient_lm.tools.blt_testing import make_tiny_blt, random_bytes
from tests.contract.common import ContractCase


def make_blt_model(attn_implementation: str = "sdpa"):
    return make_tiny_blt(seed=0, attn_implementation=attn_implementation)


def make_blt_input_ids(batch: int, length: int, generator: torch.Generator) -> torch.LongTensor:
    return random_bytes(batch, length, generator)


CASES = [
    ContractCase(
        name="blt",
        make_model=make_blt_model,
        make_input_ids=make_blt_input_ids,
        make_tokenizer=lambda model: BLTTokenizer(padding_side="left"),
        assisted_decoding_error="BLTForCausalLM.generate cannot do assisted decoding .*cannot be rolled back",
        invalid_config=("patching_mode", "words", "patching_mode must be one of"),
        # bytes are read as ids (patching, hash n-grams): Transformers refuses embeddings for a class that takes none
        inputs_embeds_error="You passed `inputs_embeds` to `.generate\\(\\)`, but the model class BLTForCausalLM",
        # its sizes live in four sub-configs: Transformers cannot size a paged cache for BLT and refuses up front
        continuous_batching_error="num_key_value_heads or num_attention_heads could not be found in the config",
        lora_target_modules=["global_transformer.layers.0.self_attn.q_proj", "global_transformer.layers.1.self_attn.v_proj"],
        # PEFT cannot read the latent transformer's sizes from a BLTConfig: they are given, to reach BLT's own refusal
        prompt_learning_config={"num_layers": 2, "token_dim": 32, "num_attention_heads": 2},
        prefix_tuning_error="the cache must be a BLTCache, got DynamicCache",
        prompt_tuning_error="BLT needs input_ids \\(byte ids\\); inputs_embeds is not supported",
        skips={
            "outputs": "hidden states come per stage (encoder bytes, latent patches, decoder bytes) and only from the "
            "full forward; cached steps refuse output_hidden_states with a clear error "
            "(tests/blt/test_modeling_blt.py::test_output_hidden_states_return_dict_and_flags)",
        },
    )
]
