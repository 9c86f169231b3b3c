"""BLT (Byte Latent Transformer): a tokenizer-free byte LM with entropy patching, exact incremental generation and
loading of Transformers' own ``blt`` checkpoints. Importing this module registers the classes with the Auto classes
(``hfelm_blt``, ``hfelm_blt_entropy`` and ``AutoTokenizer`` -> :class:`BLTTokenizer`) and installs the converter of
Transformers' ``blt`` checkpoints (``hf_efficient_lm.tools.blt_convert``, not carried by checkpoints). The data
pipeline, FLOPs accounting and test helpers live in ``hf_efficient_lm.tools.blt_*`` and load on first use."""

from transformers import AutoTokenizer

from ..registration import lazy_attributes, register_causal_lm
from ..tools import blt_convert
from ..tools.blt_convert import blt_config_from_transformers, export_to_transformers_blt
from .cache_blt import BLTCache
from .configuration_blt_lm import (
    BLTConfig, BLTEntropyConfig, BLTGlobalConfig, BLTLocalConfig, BLTLocalDecoderConfig, BLTLocalEncoderConfig,
)
from .modeling_blt_entropy import BLTEntropyModel, next_byte_entropy
from .modeling_blt_lm import BLTForCausalLM, BLTModel, BLTPreTrainedModel, byte_ngram_hash_ids
from .patcher_blt import patch_starts, split_long_patches, starts_from_patch_lengths
from .tokenization_blt_lm import BLTTokenizer

register_causal_lm(BLTConfig, BLTForCausalLM, BLTModel)
register_causal_lm(BLTEntropyConfig, BLTEntropyModel)
AutoTokenizer.register(BLTConfig, slow_tokenizer_class=BLTTokenizer, exist_ok=True)
AutoTokenizer.register(BLTEntropyConfig, slow_tokenizer_class=BLTTokenizer, exist_ok=True)
BLTTokenizer.register_for_auto_class("AutoTokenizer")
BLTPreTrainedModel.transformers_blt_converter = blt_convert

_DATA = [
    "entropy_patch_starts", "space_patch_starts", "static_patch_starts", "patch_lengths_from_starts", "patch_ids_from_starts", "text_to_ids", "pack_texts", "document_rows", "byte_dataset",
    "pad_right", "compute_patch_lengths", "add_patch_lengths_column", "mean_patch_size", "calibrate_threshold",
    "BLTDataCollator", "entropy_mode", "document_patch_lengths", "pack_by_patches", "patch_packed_dataset",
    "row_entropies", "rows_bits_per_byte",
]
_FLOPS = ["blt_flops_per_byte", "llama_flops_per_token", "mean_context"]
__getattr__ = lazy_attributes(__name__, {
    **dict.fromkeys(_DATA, "..tools.blt_data"),
    **dict.fromkeys(_FLOPS, "..tools.blt_flops"),
})

__all__ = [
    "BLTConfig", "BLTEntropyConfig", "BLTLocalConfig", "BLTLocalEncoderConfig", "BLTLocalDecoderConfig", "BLTGlobalConfig",
    "BLTForCausalLM", "BLTModel", "BLTCache", "BLTEntropyModel", "BLTTokenizer",
    "byte_ngram_hash_ids", "next_byte_entropy", "blt_config_from_transformers", "export_to_transformers_blt",
    "split_long_patches", "patch_starts", "starts_from_patch_lengths", *_DATA, *_FLOPS,
]
