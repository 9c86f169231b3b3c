"""The reference BLT of the benchmarks and demos: a small random Transformers ``BltForCausalLM`` (sizes from
``hf_efficient_lm.train.presets.transformers_blt_kwargs``) whose entropy threshold is calibrated on a sample."""

from __future__ import annotations

import torch

from ..train.presets import transformers_blt_kwargs


@torch.no_grad()
def make_transformers_blt(sample: torch.LongTensor, target_patch_size: float = 4.5, seed: int = 0, **kw):
    """Random Transformers ``BltForCausalLM`` whose threshold gives ~``target_patch_size`` bytes/patch on ``sample``."""
    from transformers import BltConfig, BltForCausalLM

    torch.manual_seed(seed)
    config = BltConfig(**transformers_blt_kwargs(**kw))
    config.num_hidden_layers = config.global_config.num_hidden_layers  # 5.23 generate() needs it
    model = BltForCausalLM(config).eval()
    with torch.no_grad():
        model.model.patcher.lm_head.weight.mul_(20.0)  # spread the random patcher's entropies
    entropies, _, _ = model.model.patcher(sample)
    model.config.patching_threshold = float(entropies[0, 1:].float().quantile(1 - 1 / target_patch_size))
    return model
