"""Training a byte-level BPE tokenizer and wrapping it as a ``PreTrainedTokenizerFast``."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Ids 0..2 are fixed so tiny test configs (pad 0, bos 1, eos 2) and trained tokenizers agree.
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tokenizer(
    text_batches: Iterable[list[str]],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    model_max_length: int = 2048,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on batches of texts.

    Byte-level means every string round-trips: no unknown token, any UTF-8 text decodes back to itself.
    The vocabulary holds the 256 byte symbols, the 3 special tokens and the learned merges.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least {minimum}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(text_batches, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length, clean_up_tokenization_spaces=False,
        **SPECIAL_TOKENS,
    )
    return tokenizer


def tokenizer_digest(tokenizer) -> str:
    """sha256 over what decides how a tokenizer splits text into ids: for a fast tokenizer its whole backend
    (normalizer, pre-tokenizer, vocabulary, merges, added tokens; padding/truncation settings left out), otherwise its
    class and token -> id map. Two tokenizers with the same vocab size but different merges get different digests."""
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        payload = json.dumps(state, sort_keys=True, ensure_ascii=False)
    else:
        payload = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())], ensure_ascii=False)
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def surface_texts(tokenizer) -> list[str]:
    """The text each token adds after another token (``[len(tokenizer)]``). A token decoded alone loses the leading
    space a SentencePiece tokenizer strips from the first piece, so Llama-2's ``"▁."`` would read as a bare ``"."``:
    each token is decoded after a plain letter and the letter's text removed."""
    ref = tokenizer.encode("a", add_special_tokens=False)[-1:]
    head = tokenizer.decode(ref, clean_up_tokenization_spaces=False)
    pairs = tokenizer.batch_decode([ref + [token_id] for token_id in range(len(tokenizer))],
                                   clean_up_tokenization_spaces=False)
    return [text[len(head):] if text.startswith(head) else text for text in pairs]
