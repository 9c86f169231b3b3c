"""Fixtures for the AnchorLlama tests."""

import pytest

from hf_efficient_lm.testing_utils import save_tiny_llama


@pytest.fixture(scope="session")
def anchor_llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("anchor_base"))


@pytest.fixture(scope="session")
def tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer (~300 ids) trained here on a few sentences; pad/bos/eos = 0/1/2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [
        "The cat sat on the mat. The dog ran! Did it rain?\nYes it did.",
        "A tiny model reads short sentences. Each one ends with a period.",
    ] * 20
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        clean_up_tokenization_spaces=False,
    )
