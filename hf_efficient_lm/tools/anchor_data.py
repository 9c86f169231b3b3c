"""Data pipeline for anchor continual pre-training: sentence splitting, ``<AC>`` insertion, tokenisation, collation.

* EP mode: the text is used as is; endpoint tokens are the anchors (``find_endpoint_token_ids``).
* AC mode: the text is tokenised once and the ``<AC>`` id follows the last token of each sentence (token-level
  insertion, so the anchor never merges with neighbouring text, and the other ids are the EP ids of the same text). Like the official code, the last sentence of a document gets no ``<AC>`` unless
  ``anchor_after_last=True``.

Not imported by the modeling files.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

import torch

# A sentence ends after ., ! or ? followed by a space or tab, or after a run of newlines (a newline stays with the
# sentence it ends). Zero-width split points keep the text intact: "".join(split_sentences(t)) == t.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])(?=[ \t])|(?<=\n)(?=[^\n])")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentence spans whose concatenation is ``text`` (regex splitter, no NLTK needed).

    Whitespace that follows a sentence end starts the next span (which suits byte-level BPE's ``Ġword`` tokens).
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences expects a str, got {type(text).__name__}")
    spans: list[str] = []
    for span in _SENTENCE_BREAK.split(text):
        if spans and not span.strip():  # whitespace alone (". \n") closes no sentence: it joins the one before
            spans[-1] += span
        elif span:
            spans.append(span)
    return spans


def encode_with_anchors(
    tokenizer,
    text: str,
    anchor_mode: str,
    anchor_token_id: int | None = None,
    anchor_after_last: bool = False,
    add_bos: bool = True,
    max_length: int | None = None,
) -> list[int]:
    """Token ids of ``text`` prepared for ``anchor_mode`` (``"ep"``: plain; ``"ac"``: ``<AC>`` after each sentence)."""
    ids: list[int] = []
    if add_bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    # text is text: a literal "<AC>" or "</s>" in a document is those characters, not the anchor or EOS id
    encode = dict(add_special_tokens=False, split_special_tokens=True)
    if anchor_mode == "ep":
        ids.extend(tokenizer.encode(text, **encode))
    elif anchor_mode == "ac":
        if anchor_token_id is None:
            raise ValueError("anchor_mode='ac' needs anchor_token_id (the id of <AC>)")
        sentences = split_sentences(text)
        ends = list(itertools.accumulate(len(sentence) for sentence in sentences))
        if not anchor_after_last:
            ends = ends[:-1]
        if getattr(tokenizer, "is_fast", False):
            # One encoding of the whole text: sentences tokenised apart would each get SentencePiece's word-initial
            # "▁" (a space after every newline). <AC> goes after the tokens that start before each sentence end.
            encoded = tokenizer(text, return_offsets_mapping=True, **encode)
            starts = [start for start, _ in encoded["offset_mapping"]]
            cuts = [bisect.bisect_left(starts, end) for end in ends]
            pieces = [encoded["input_ids"][a:b] for a, b in zip([0, *cuts], [*cuts, len(starts)])]
        else:  # (no offsets: per sentence, exact for byte-level BPE, whose spans start with their own space)
            pieces = [tokenizer.encode(sentence, **encode) for sentence in sentences]
        for number, piece in enumerate(pieces):
            ids.extend(piece)
            if number < len(ends):
                ids.append(anchor_token_id)
    else:
        raise ValueError(f"anchor_mode must be 'ep' or 'ac', got {anchor_mode!r}")
    if max_length is not None:
        ids = ids[:max_length]
    return ids


def tokenize_function(tokenizer, anchor_mode: str, anchor_token_id: int | None = None, max_length: int = 512,
                      text_column: str = "text", anchor_after_last: bool = False):
    """A ``datasets.map(batched=True)`` function: one right-truncated document per example (the paper's layout)."""

    def tokenize(batch):
        return {
            "input_ids": [
                encode_with_anchors(tokenizer, text, anchor_mode, anchor_token_id, anchor_after_last,
                                    max_length=max_length)
                for text in batch[text_column]
            ]
        }

    return tokenize


@dataclass
class AnchorDataCollator:
    """Right-pads ``input_ids`` to the longest row (a multiple of ``pad_to_multiple_of``); labels are the ids with
    ``-100`` on padding; anchors keep their labels (the model learns to emit them)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = 8

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("AnchorDataCollator got an empty batch")
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths)):
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            attention_mask[row, :length] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


__all__ = ["split_sentences", "encode_with_anchors", "tokenize_function", "AnchorDataCollator"]
