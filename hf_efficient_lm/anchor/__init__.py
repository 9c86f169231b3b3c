"""AnchorLlama (AnLLM): anchor-based self-attention and an anchor-pruned KV cache on any Llama checkpoint."""

from ..registration import lazy_attributes, register_causal_lm
from .cache_anchor import AnchorCache
from .configuration_anchor_llama import AnchorLlamaConfig
from .masking_anchor import ansan_mask_function, build_anchor_attention_mask
from .modeling_anchor_llama import AnchorLlamaForCausalLM, AnchorLlamaModel, AnchorLlamaPreTrainedModel
from .tokens_anchor import add_anchor_token, find_endpoint_token_ids, require_anchor_token

# tools (training data, prefix compression / ICL), imported on first use
__getattr__ = lazy_attributes(__name__, {
    **dict.fromkeys(["AnchorDataCollator", "encode_with_anchors", "split_sentences", "tokenize_function"],
                    "..tools.anchor_data"),
    **dict.fromkeys(["CompressedPrefix", "compress_prefix", "continuation_logits", "generate_with_prefix"],
                    "..tools.anchor_icl"),
    **dict.fromkeys(["compact_position_ids", "dense_ansan_reference"], "..tools.anchor_reference"),
})

register_causal_lm(AnchorLlamaConfig, AnchorLlamaForCausalLM, AnchorLlamaModel)

__all__ = [
    "AnchorCache",
    "AnchorLlamaConfig",
    "AnchorLlamaForCausalLM",
    "AnchorLlamaModel",
    "AnchorLlamaPreTrainedModel",
    "ansan_mask_function",
    "build_anchor_attention_mask",
    "AnchorDataCollator",
    "encode_with_anchors",
    "split_sentences",
    "tokenize_function",
    "CompressedPrefix",
    "compress_prefix",
    "continuation_logits",
    "generate_with_prefix",
    "compact_position_ids",
    "dense_ansan_reference",
    "add_anchor_token",
    "find_endpoint_token_ids",
    "require_anchor_token",
]
