"""BLT (Byte Latent Transformer): a tokenizer-free byte LM with entropy patching, exact incremental generation and
loading of Transformers' own ``blt`` checkpoints. Importing this module registers the classes with the Auto classes
(``hfelm_blt``, ``hfelm_blt_entropy`` and ``AutoTokenizer`` -> :class:`BLTTokenizer`)."""

from transformers import AutoTokenizer

from ..registration import register_causal_lm
from .configuration_blt_lm import (
    BLTConfig, BLTEntropyConfig, BLTGlobalConfig, BLTLocalConfig, BLTLocalDecoderConfig, BLTLocalEncoderConfig,
)
from .convert_blt import blt_config_from_transformers, export_to_transformers_blt
from .modeling_blt_entropy import BLTEntropyModel, next_byte_entropy
from .modeling_blt_lm import BLTCache, BLTForCausalLM, BLTModel, byte_ngram_hash_ids
from .patcher_blt import (
    entropy_patch_starts,
    patch_lengths_from_starts,
    patch_starts,
    space_patch_starts,
    split_long_patches,
    starts_from_patch_lengths,
    static_patch_starts,
)
from .tokenization_blt_lm import BLTTokenizer

register_causal_lm(BLTConfig, BLTForCausalLM, BLTModel)
register_causal_lm(BLTEntropyConfig, BLTEntropyModel)
AutoTokenizer.register(BLTConfig, slow_tokenizer_class=BLTTokenizer, exist_ok=True)
AutoTokenizer.register(BLTEntropyConfig, slow_tokenizer_class=BLTTokenizer, exist_ok=True)
BLTTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = [
    "BLTConfig", "BLTEntropyConfig", "BLTLocalConfig", "BLTLocalEncoderConfig", "BLTLocalDecoderConfig", "BLTGlobalConfig",
    "BLTForCausalLM", "BLTModel", "BLTCache", "BLTEntropyModel", "BLTTokenizer",
    "byte_ngram_hash_ids", "next_byte_entropy", "blt_config_from_transformers", "export_to_transformers_blt",
    "entropy_patch_starts", "space_patch_starts", "static_patch_starts", "split_long_patches", "patch_starts",
    "patch_lengths_from_starts", "starts_from_patch_lengths",
]
