"""Evaluation: perplexity and bits-per-byte, as plain functions and as a local `evaluate` metric."""

from .loading import check_tokenizer_matches_folder, load_causal_lm_strict
from .perplexity import LMEvaluation, evaluate_causal_lm
from .trainer_metrics import lm_bits_per_byte_path, make_compute_metrics, token_nll_for_metrics

__all__ = ["LMEvaluation", "check_tokenizer_matches_folder", "evaluate_causal_lm", "load_causal_lm_strict", "lm_bits_per_byte_path", "make_compute_metrics", "token_nll_for_metrics"]
