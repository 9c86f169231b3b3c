"""Seeded character-level noise, the kinds of the BLT paper's noised benchmarks (Pagnoni et al. 2024, Table 3):
random case, dropped characters, repeated characters, upper case and "AntSpeak".

Used to measure how much a model's bits/byte degrade on noised text (``benchmarks/blt/bench_noise_blt.py``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# kind -> default rate (the paper's: Drop removes 10% of characters, Repeat repeats 20% up to 4 times; RandomCase
# sets each character's case at random, i.e. flips a cased character with probability 0.5)
NOISE_KINDS: dict[str, float | None] = {
    "random_case": 0.5,
    "drop": 0.1,
    "repeat": 0.2,
    "uppercase": None,
    "antspeak": None,
}
MAX_REPEAT = 4  # a repeated character appears 2..MAX_REPEAT times in a row


def _flip(ch: str) -> str:
    swapped = ch.swapcase()
    return swapped if len(swapped) == 1 else ch  # 'ß'.swapcase() == 'SS' would change the length: left alone


def noise_text(text: str, kind: str, rng: random.Random, p: float | None = None) -> str:
    """``text`` with ``kind`` noise (see ``NOISE_KINDS``) at rate ``p`` (default: the kind's), drawing from ``rng``.

    - ``random_case``: each character whose case can change flips it with probability ``p``;
    - ``drop``: each character is removed with probability ``p``;
    - ``repeat``: each character is, with probability ``p``, written 2..4 times (uniform) instead of once;
    - ``uppercase``: ``text.upper()``; ``antspeak``: upper case, characters separated by single spaces.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {sorted(NOISE_KINDS)}")
    rate = NOISE_KINDS[kind] if p is None else p
    if rate is not None and not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
        raise ValueError(f"noise rate p must be in [0, 1], got {p!r}")
    if kind == "uppercase":
        return text.upper()
    if kind == "antspeak":
        return " ".join(text.upper())
    out = []
    for ch in text:
        u = rng.random()  # one draw per character for every kind, so the stream does not depend on the text's case
        if kind == "random_case":
            out.append(_flip(ch) if u < rate else ch)
        elif kind == "drop":
            if u >= rate:
                out.append(ch)
        elif u < rate:  # repeat
            out.append(ch * rng.randint(2, MAX_REPEAT))
        else:
            out.append(ch)
    return "".join(out)


def noise_texts(texts: Sequence[str], kind: str, seed: int = 0, p: float | None = None) -> list[str]:
    """:func:`noise_text` over ``texts`` with one ``random.Random(seed)``: the same seed gives the same noise."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of documents, got a single string; pass [text]")
    rng = random.Random(seed)
    return [noise_text(t, kind, rng, p) for t in texts]


__all__ = ["MAX_REPEAT", "NOISE_KINDS", "noise_text", "noise_texts"]
