"""Training entry points: Llama size presets, the pretraining pipeline, and `accelerate launch` guards."""

from .launch import check_world_size, launched_processes, parse_launched_args
from .presets import LLAMA_PRESETS, llama_config_from_preset
from .pretrain import PretrainArguments, parse_pretrain_args, run_pretrain

__all__ = [
    "LLAMA_PRESETS",
    "PretrainArguments",
    "check_world_size",
    "launched_processes",
    "llama_config_from_preset",
    "parse_launched_args",
    "parse_pretrain_args",
    "run_pretrain",
]
