"""Training entry points: size presets, the pretraining pipeline, and `accelerate launch` guards.

Presets import eagerly (they are a table); the pipeline (the Trainer) loads on first use.
"""

from ..registration import lazy_attributes
from .presets import BLT_PRESETS, LLAMA_PRESETS, TINY_LLAMA_KWARGS, blt_config_for, llama_config_from_preset

__getattr__ = lazy_attributes(__name__, {
    **dict.fromkeys(["check_world_size", "launched_processes", "parse_launched_args"], ".launch"),
    **dict.fromkeys(["PretrainArguments", "parse_pretrain_args", "run_pretrain"], ".pretrain"),
})

__all__ = [
    "BLT_PRESETS",
    "LLAMA_PRESETS",
    "PretrainArguments",
    "TINY_LLAMA_KWARGS",
    "blt_config_for",
    "check_world_size",
    "launched_processes",
    "llama_config_from_preset",
    "parse_launched_args",
    "parse_pretrain_args",
    "run_pretrain",
]
