"""SconeLlama: contextualised n-gram (f-gram) input embeddings served from an off-accelerator table (SCONE)."""

from ..registration import lazy_attributes, register_causal_lm
from .configuration_scone_llama import FGRAM_RECIPES, SconeLlamaConfig
from .fgram_vocab_scone import FgramVocab, TokenizerMismatchError, tokenizer_fingerprint
from .modeling_scone_llama import SconeFgramModel, SconeLlamaForCausalLM, SconeLlamaModel
from .table_scone import CorruptTableError, FgramTable

# tools, imported on first use (mining pulls pandas)
__getattr__ = lazy_attributes(__name__, {
    **dict.fromkeys(["add_fgram_columns", "match_flat", "mine_fgrams"], "..tools.scone_mining"),
    **dict.fromkeys(["export_fgram_table", "save_fgram_vocab"], "..tools.scone_export"),
})

register_causal_lm(SconeLlamaConfig, SconeLlamaForCausalLM, SconeLlamaModel)

__all__ = [
    "FGRAM_RECIPES",
    "SconeLlamaConfig",
    "SconeLlamaForCausalLM",
    "SconeLlamaModel",
    "SconeFgramModel",
    "FgramVocab",
    "FgramTable",
    "CorruptTableError",
    "TokenizerMismatchError",
    "tokenizer_fingerprint",
    "mine_fgrams",
    "match_flat",
    "add_fgram_columns",
    "export_fgram_table",
    "save_fgram_vocab",
]
