"""Training entry points: Llama size presets and the pretraining pipeline."""

from .presets import LLAMA_PRESETS, llama_config_from_preset
from .pretrain import PretrainArguments, parse_pretrain_args, run_pretrain

__all__ = ["LLAMA_PRESETS", "PretrainArguments", "llama_config_from_preset", "parse_pretrain_args", "run_pretrain"]
