"""Evaluation: perplexity and bits-per-byte, as plain functions and as a local `evaluate` metric."""

from .loading import check_tokenizer_matches_folder, load_causal_lm_strict
from .perplexity import LMEvaluation, NLLTotal, evaluate_causal_lm, rows_nll
from .trainer_metrics import lm_bits_per_byte_path, make_compute_metrics, token_nll_for_metrics

__all__ = ["LMEvaluation", "NLLTotal", "check_tokenizer_matches_folder", "evaluate_causal_lm", "load_causal_lm_strict",
           "lm_bits_per_byte_path", "make_compute_metrics", "rows_nll", "token_nll_for_metrics"]
