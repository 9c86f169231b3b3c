"""The reference row: Transformers' own LlamaForCausalLM must pass every check the families pass."""

from hf_efficient_lm.compat import CACHE_NAME
from hf_efficient_lm.testing_utils import TINY_LLAMA_KWARGS, make_tiny_llama
from tests.contract.common import PEFT_CACHE_NAME, ContractCase, random_ids

DROPS_A_PREFIX_PASSED_AS_PAST_KEY_VALUES = (
    "on Transformers 5.24+ LlamaForCausalLM.forward keeps generate()'s empty `cache` and drops the prefix PEFT before "
    "0.22 passes as `past_key_values` (upstream; the families keep it)"
)
SKIPS = {
    "mask_shape": "LlamaForCausalLM pads a narrower attention_mask with zeros without an error, and reads a one-row "
                  "mask of ones as no mask (upstream; every family refuses both)",
}
if CACHE_NAME == "cache":
    SKIPS["prefix_tuning_past_key_values"] = DROPS_A_PREFIX_PASSED_AS_PAST_KEY_VALUES
    if PEFT_CACHE_NAME == "past_key_values":  # the installed PEFT is older than 0.22
        SKIPS["prefix_tuning"] = DROPS_A_PREFIX_PASSED_AS_PAST_KEY_VALUES

CASES = [
    ContractCase(
        name="llama",
        make_model=lambda attn_implementation="sdpa": make_tiny_llama(attn_implementation=attn_implementation),
        make_input_ids=random_ids(TINY_LLAMA_KWARGS["vocab_size"]),
        trust_remote_code=False,
        invalid_config=("num_attention_heads", 7, "not a multiple of the number of attention heads"),
        skips=SKIPS,
    )
]
