import pytest
import torch

import hf_efficient_lm  # noqa: F401


def make_transformers_blt(seed=0, **overrides):
    """A random tiny Transformers ``BltForCausalLM`` whose entropy threshold is the median entropy on random bytes."""
    from transformers import BltConfig, BltForCausalLM

    torch.manual_seed(seed)
    local = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, cross_attn_k=2, hidden_size_global=64)
    kwargs = dict(
        vocab_size=260, patch_in_forward=True, patching_threshold=3.0, encoder_hash_byte_group_size=[3, 4, 5],
        encoder_hash_byte_group_vocab=97, local_attention_window_len=12, cross_attn_k=2,
        patcher_config=dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
                            sliding_window=10),
        encoder_config=dict(local, num_hidden_layers=1, cross_attn_all_layers=False),
        decoder_config=dict(local, num_hidden_layers=2),
        global_config=dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2),
        use_cache=False,
    )
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = value
    config = BltConfig(**kwargs)
    config.num_hidden_layers = config.global_config.num_hidden_layers  # Transformers 5.23 generate() needs it
    model = BltForCausalLM(config).eval()
    if model.model.patcher is not None:
        # Put the threshold at the median entropy of random bytes so that patches have mixed sizes.
        from hf_efficient_lm.tools.blt_testing import random_bytes

        with torch.no_grad():
            entropies, _, _ = model.model.patcher(random_bytes(4, 64, torch.Generator().manual_seed(99)))
        model.config.patching_threshold = float(entropies[:, 1:].median())
    return model


@pytest.fixture(scope="session")
def transformers_blt_dir(tmp_path_factory):
    model = make_transformers_blt()
    path = tmp_path_factory.mktemp("hf_blt")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def transformers_blt(transformers_blt_dir):
    from transformers import BltForCausalLM

    model = BltForCausalLM.from_pretrained(transformers_blt_dir).eval()
    model.config.num_hidden_layers = model.config.global_config.num_hidden_layers
    return model
