"""hf_efficient_lm.data.noise: the BLT paper's noise kinds, seeded."""

import random

import pytest

from hf_efficient_lm.data import NOISE_KINDS, noise_text, noise_texts

TEXT = ("The quick brown fox jumps over the lazy dog; def f(x): return x * 2  # Größe, naïve, 日本語 ß. " * 40)


def runs(text: str) -> list[tuple[str, int]]:
    """Run-length encoding: [(char, count), ...]."""
    out: list[tuple[str, int]] = []
    for ch in text:
        if out and out[-1][0] == ch:
            out[-1] = (ch, out[-1][1] + 1)
        else:
            out.append((ch, 1))
    return out


def is_subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


def test_same_seed_same_noise_other_seed_other_noise():
    for kind in ("random_case", "drop", "repeat"):
        a, b, c = (noise_texts([TEXT, TEXT[:50]], kind, seed=s) for s in (3, 3, 4))
        assert a == b, kind
        assert a != c, kind
        assert a[0] != TEXT, kind  # the noise did something


def test_drop_removes_about_p_of_the_characters_and_nothing_else():
    out = noise_text(TEXT, "drop", random.Random(0))
    assert is_subsequence(out, TEXT)
    dropped = 1 - len(out) / len(TEXT)
    assert 0.08 < dropped < 0.12, dropped  # p = 0.1 over ~3.8k characters: std ~0.005
    assert noise_text(TEXT, "drop", random.Random(0), p=0.0) == TEXT
    assert noise_text(TEXT, "drop", random.Random(0), p=1.0) == ""


def test_repeat_writes_some_characters_two_to_four_times():
    out = noise_text(TEXT, "repeat", random.Random(1))
    clean, noisy = runs(TEXT), runs(out)
    assert [c for c, _ in clean] == [c for c, _ in noisy]  # same characters in the same order
    extra = [n - m for (_, m), (_, n) in zip(clean, noisy)]
    assert all(e >= 0 for e in extra)
    # every original character is written 1 (no repeat) or 2..4 times; a run of m equal characters can grow by at
    # most 3m
    assert all(e <= 3 * m for (_, m), e in zip(clean, extra))
    repeated_share = sum(1 for e in extra if e) / len(extra)
    assert 0.12 < repeated_share < 0.3, repeated_share  # ~p = 0.2 of the runs (runs of 2 count once)
    assert max(extra) >= 3  # up to 4x is reached


def test_random_case_only_changes_case_about_half_of_the_letters():
    out = noise_text(TEXT, "random_case", random.Random(2))
    assert len(out) == len(TEXT) and out.lower() == TEXT.lower()
    cased = [i for i, ch in enumerate(TEXT) if len(ch.swapcase()) == 1 and ch.swapcase() != ch]
    flipped = sum(out[i] != TEXT[i] for i in cased) / len(cased)
    assert 0.44 < flipped < 0.56, flipped
    assert "ß" in out and "日本語" in out  # 'ß' would become 'SS': left alone; uncased characters untouched


def test_uppercase_and_antspeak():
    assert noise_text("Hi there", "uppercase", random.Random(0)) == "HI THERE"
    assert noise_text("Hi you", "antspeak", random.Random(0)) == "H I   Y O U"


def test_bad_kind_rate_and_single_string_are_refused():
    assert set(NOISE_KINDS) == {"random_case", "drop", "repeat", "uppercase", "antspeak"}
    with pytest.raises(ValueError, match="'swap'"):
        noise_text("abc", "swap", random.Random(0))
    with pytest.raises(ValueError, match="1.5"):
        noise_text("abc", "drop", random.Random(0), p=1.5)
    with pytest.raises(TypeError, match="single string"):
        noise_texts("abc", "drop")
