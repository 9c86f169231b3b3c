"""AnchorLlama (AnLLM): anchor-based self-attention and an anchor-pruned KV cache on any Llama checkpoint."""

from ..registration import register_causal_lm
from .cache_anchor import AnchorCache
from .configuration_anchor_llama import AnchorLlamaConfig
from .masking_anchor import ansan_mask_function, build_anchor_attention_mask
from .modeling_anchor_llama import AnchorLlamaForCausalLM, AnchorLlamaModel, AnchorLlamaPreTrainedModel

register_causal_lm(AnchorLlamaConfig, AnchorLlamaForCausalLM, AnchorLlamaModel)

__all__ = [
    "AnchorCache",
    "AnchorLlamaConfig",
    "AnchorLlamaForCausalLM",
    "AnchorLlamaModel",
    "AnchorLlamaPreTrainedModel",
    "ansan_mask_function",
    "build_anchor_attention_mask",
]
