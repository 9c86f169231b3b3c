"""The BLT size options shared by ``train-blt``, the quality benchmark and (a subset) the speed benchmarks."""

import argparse

import pytest

from hf_efficient_lm.tools.blt_training import add_blt_size_options, blt_size_config, parsed_blt_sizes
from hf_efficient_lm.train import BLT_PRESETS


def test_size_options_round_trip_and_subset():
    parser = argparse.ArgumentParser()
    add_blt_size_options(parser)
    args = parser.parse_args(["--latent-hidden", "64", "--latent-layers", "1", "--decoder-layers", "1"])
    assert parsed_blt_sizes(args) == {**BLT_PRESETS["small"], "latent": 64, "latent_layers": 1, "decoder_layers": 1}
    config = blt_size_config(args, None, threshold=0.0, mode="space")
    assert (config.global_config.hidden_size, config.global_config.num_hidden_layers) == (64, 1)

    subset = argparse.ArgumentParser()
    add_blt_size_options(subset, keys=("local", "latent", "latent_layers"))
    assert parsed_blt_sizes(subset.parse_args(["--local-hidden", "32"])) == {"local": 32, "latent": 256, "latent_layers": 4}
    with pytest.raises(SystemExit):  # an option outside the subset is not offered
        subset.parse_args(["--window", "8"])
    with pytest.raises(ValueError, match="unknown BLT size key"):
        add_blt_size_options(argparse.ArgumentParser(), keys=("latent", "width"))
