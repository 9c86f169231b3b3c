"""Fixtures for the specialists tests: synthetic multi-domain text, a tiny byte-level BPE tokenizer."""

import random

import pytest

DOMAIN_WORDS = {
    "animals": "cat dog horse cow sheep goat duck goose hen pig rabbit fox wolf bear deer".split(),
    "code": "def return import class self lambda yield for while if else try except print len".split(),
    "numbers": "one two three four five six seven eight nine ten eleven twelve hundred thousand".split(),
}


def make_domain_texts(domain: str, count: int, seed: int = 0, words_per_text: int = 40) -> list[str]:
    rng = random.Random(f"{domain}-{seed}")
    words = DOMAIN_WORDS[domain]
    return [" ".join(rng.choice(words) for _ in range(words_per_text)) for _ in range(count)]


@pytest.fixture(scope="session")
def domain_texts():
    return {domain: make_domain_texts(domain, 24) for domain in DOMAIN_WORDS}


@pytest.fixture(scope="session")
def specialist_tokenizer():
    from hf_efficient_lm.data import train_tokenizer

    corpus = [text for domain in DOMAIN_WORDS for text in make_domain_texts(domain, 20, seed=99)]
    return train_tokenizer(corpus, 320, min_frequency=0, show_progress=False)
