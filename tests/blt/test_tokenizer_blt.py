"""BLTTokenizer: Transformers' Blt id layout, lossless round trips, save/load, AutoTokenizer."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import hf_efficient_lm  # noqa: F401
from hf_efficient_lm import BLTTokenizer


@pytest.fixture(scope="module")
def tok():
    return BLTTokenizer()


def test_id_layout_matches_blt(tok):
    assert tok.vocab_size == 260 and len(tok) == 260
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok("Hi").input_ids == [1, 76, 109]
    assert BLTTokenizer(add_eos_token=True)("Hi").input_ids == [1, 76, 109, 2]  # spec example
    assert tok("é", add_special_tokens=False).input_ids == [0xC3 + 4, 0xA9 + 4]


def test_special_strings_in_text_stay_bytes(tok):
    ids = tok("a</s><s>", add_special_tokens=False).input_ids
    assert ids == [b + 4 for b in b"a</s><s>"]
    assert tok.decode(ids) == "a</s><s>"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40))
def test_str_round_trip_is_lossless(tok, text):
    ids = tok(text).input_ids
    assert ids[0] == 1 and all(4 <= i < 260 for i in ids[1:])
    assert tok.decode(ids, skip_special_tokens=True) == text


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_bytes_round_trip_is_lossless(tok, data):
    assert tok.decode_bytes(tok.encode_bytes(data)) == data
    assert tok.encode_bytes(data, add_special_tokens=False) == [b + 4 for b in data]


def test_invalid_utf8_decodes_with_replacement(tok):
    assert tok.decode(tok.encode_bytes(b"a\xffb"), skip_special_tokens=True) == "a\ufffdb"


def test_save_load_and_auto_tokenizer(tok, tmp_path):
    custom = BLTTokenizer(add_eos_token=True)
    custom.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, BLTTokenizer)
    assert loaded("Hi").input_ids == [1, 76, 109, 2]
    batch = loaded(["a", "abc"], padding=True, padding_side="left")
    assert batch.input_ids[0][:2] == [0, 0] and batch.attention_mask[0] == [0, 0, 1, 1, 1]


def test_bad_ids_raise(tok):
    with pytest.raises(ValueError, match="outside the BLT byte vocabulary"):
        tok.decode([1, 300])
    with pytest.raises(ValueError, match="outside the BLT byte vocabulary"):
        tok.decode_bytes([-1])
    with pytest.raises(TypeError, match="expects bytes"):
        tok.encode_bytes("text")


def test_new_tokens_are_refused_by_name():
    """add_tokens grew len(tokenizer) to 261 with a token text was never matched to and that decoding could not
    read; special tokens already in the vocabulary still go through."""
    tokenizer = BLTTokenizer()
    with pytest.raises(ValueError, match=r"cannot add tokens \['<x>'\]"):
        tokenizer.add_tokens(["<x>"])
    assert tokenizer.add_special_tokens({"pad_token": "<boe>"}) == 0 and len(tokenizer) == 260
