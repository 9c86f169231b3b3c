"""Fixtures for the AnchorLlama tests."""

import pytest

from hf_efficient_lm.testing_utils import save_tiny_llama


@pytest.fixture(scope="session")
def anchor_llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("anchor_base"))


@pytest.fixture(scope="session")
def tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer (~300 ids) trained here on a few sentences; pad/bos/eos = 0/1/2."""
    from hf_efficient_lm.data import train_tokenizer

    texts = [
        "The cat sat on the mat. The dog ran! Did it rain?\nYes it did.",
        "A tiny model reads short sentences. Each one ends with a period.",
    ] * 20
    return train_tokenizer(texts, 300, min_frequency=0, show_progress=False)
