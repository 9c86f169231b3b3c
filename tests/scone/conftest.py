import numpy as np
import pytest


def pattern_docs(num_docs: int = 80, vocab_size: int = 128, seed: int = 0) -> list[list[int]]:
    """Documents made of a few repeated token patterns plus noise, so frequent n-grams of every length exist."""
    rng = np.random.default_rng(seed)
    patterns = [rng.integers(3, vocab_size, size=int(rng.integers(2, 7))).tolist() for _ in range(10)]
    docs = []
    for _ in range(num_docs):
        doc: list[int] = []
        for _ in range(int(rng.integers(2, 8))):
            doc += patterns[int(rng.integers(0, len(patterns)))]
            if rng.random() < 0.4:
                doc.append(int(rng.integers(3, vocab_size)))
        docs.append(doc)
    return docs


def scone_model(llama_dir, vocab, fusion: str):
    """A seeded model-mode SconeLlama on ``llama_dir`` (1-layer f-gram model); ``gated`` gets a random non-zero gate
    so the f-gram vectors really enter."""
    import torch

    from hf_efficient_lm.scone import SconeLlamaForCausalLM

    torch.manual_seed(0)
    model = SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_fusion=fusion,
                                                  fgram_num_layers=1).eval()
    if fusion == "gated":
        with torch.no_grad():
            model.model.fgram_gate.normal_()
    return model


def make_word_tokenizer(words: list[str]):
    """A tiny word-level PreTrainedTokenizerFast (ids 0..2 = pad, bos, eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def docs():
    return pattern_docs()


@pytest.fixture(scope="session")
def vocab(docs):
    from hf_efficient_lm.scone import mine_fgrams

    return mine_fgrams(docs, num_fgrams=150, max_len=4, min_count=3, barrier_ids=(0, 1, 2), vocab_size=128,
                       show_progress=False)
