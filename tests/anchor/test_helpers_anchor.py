"""EP / AC helpers and the data pipeline."""

import copy

import pytest
import torch

from hf_efficient_lm import AnchorLlamaConfig, AnchorLlamaForCausalLM
from hf_efficient_lm.anchor import (
    AnchorDataCollator,
    add_anchor_token,
    encode_with_anchors,
    find_endpoint_token_ids,
    require_anchor_token,
    split_sentences,
)
from hf_efficient_lm.compat import cache_of
from hf_efficient_lm.testing_utils import make_tiny_llama
from tests.anchor.helpers import sentencepiece_style_tokenizer


def test_find_endpoint_token_ids(tiny_bpe_tokenizer):
    tok = tiny_bpe_tokenizer
    ids = find_endpoint_token_ids(tok, endpoints=(".", "!", "?", "\n"))
    decoded = {tok.decode([i]) for i in ids}
    assert decoded == {".", "!", "?", "\n"}
    stripped = find_endpoint_token_ids(tok, endpoints=(".", "!", "?", "\n"), match="stripped")
    assert set(stripped) >= set(ids) and all(tok.decode([i]).strip() in {".", "!", "?", ""} for i in stripped)
    assert set(find_endpoint_token_ids(tok, match="suffix")) >= set(stripped)  # default endpoints: . ! ? \n
    with pytest.raises(ValueError, match="no token for any of the endpoints"):
        find_endpoint_token_ids(tok, endpoints=("\u00a7\u00a7\u00a7",))


def test_sentencepiece_tokenizer_anchors_and_ac_text():
    """A Llama-2-style tokenizer strips the leading space of a piece decoded alone, so "▁." read as the paper's bare
    "." anchor and add_anchor_token copied its row; AC mode tokenised each sentence alone, adding a word-initial "▁"
    after every newline (the text changed), and turned a literal "<AC>" in a document into the anchor id."""
    tok = sentencepiece_style_tokenizer()
    assert tok.convert_ids_to_tokens(find_endpoint_token_ids(tok)) == ["."]
    assert tok.convert_ids_to_tokens(find_endpoint_token_ids(tok, match="stripped")) == [".", "▁."]
    text = "The cat sat.\nWorld ran. The dog ran <AC>"
    ac_id = len(tok) + 7
    ac = encode_with_anchors(tok, text, "ac", ac_id, add_bos=False)
    assert [i for i in ac if i != ac_id] == encode_with_anchors(tok, text, "ep", add_bos=False)
    assert tok.decode([i for i in ac if i != ac_id]) == text and ac.count(ac_id) == 2
    first = ac.index(ac_id)  # after "sat.\n", before "World" (no word-initial "▁World": there is no space)
    assert tok.convert_ids_to_tokens([ac[first - 1], ac[first + 1]]) == ["<0x0A>", "W"]
    model = AnchorLlamaForCausalLM(AnchorLlamaConfig(**make_tiny_llama(vocab_size=len(tok)).config.to_dict()))
    new_id = add_anchor_token(model, tok)
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb[new_id], emb[tok.convert_tokens_to_ids(".")])
    assert not torch.equal(emb[new_id], emb[tok.convert_tokens_to_ids("▁.")])


def test_split_sentences_round_trips():
    text = "The cat sat. The dog ran! Did it rain?\nYes it did.\n\nNew paragraph 3.5 here"
    spans = split_sentences(text)
    assert "".join(spans) == text
    assert spans[:3] == ["The cat sat.", " The dog ran!", " Did it rain?\n"]
    assert spans[-1] == "New paragraph 3.5 here"  # "3.5" is not a break (no whitespace after the dot)
    assert split_sentences("It ends. \nNext line.") == ["It ends. \n", "Next line."]  # (" \n" alone got an <AC>)


def test_add_anchor_token_resizes_and_copies_the_period_row(tiny_bpe_tokenizer):
    tok = copy.deepcopy(tiny_bpe_tokenizer)  # the session tokenizer stays without <AC>
    base = make_tiny_llama(vocab_size=len(tok))
    model = AnchorLlamaForCausalLM(AnchorLlamaConfig(**base.config.to_dict())).eval()
    model.load_state_dict(base.state_dict())
    model.config.anchor_mode = "ac"
    model.config.anchor_token = "<AC>"
    with pytest.raises(ValueError, match="no '<AC>' token"):
        require_anchor_token(tok, model.config)

    period = tok.encode(".", add_special_tokens=False)[0]
    ac_id = add_anchor_token(model, tok)
    assert ac_id == len(tok) - 1 and model.config.vocab_size == len(tok)
    assert model.config.anchor_token_ids == [ac_id] and model.config.anchor_mode == "ac"
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb[ac_id], emb[period])
    assert torch.equal(model.lm_head.weight[ac_id], model.lm_head.weight[period])
    assert require_anchor_token(tok, model.config) == [ac_id]
    assert tok.encode("a <AC> b", add_special_tokens=False).count(ac_id) == 1
    # the paper's wording: the mean of the rows that were there before (not of the fresh row the resize adds)
    mean_tok = copy.deepcopy(tiny_bpe_tokenizer)
    mean_model = AnchorLlamaForCausalLM(AnchorLlamaConfig(**base.config.to_dict()))
    mean_model.load_state_dict(base.state_dict())
    before = mean_model.get_input_embeddings().weight.detach().clone()
    mean_id = add_anchor_token(mean_model, mean_tok, init_from="mean")
    assert mean_id == before.shape[0]  # the resize added the row
    torch.testing.assert_close(mean_model.get_input_embeddings().weight[mean_id], before.mean(dim=0))

    ids = encode_with_anchors(tok, "One. Two! Three", "ac", ac_id)
    assert ids[0] == tok.bos_token_id and ids.count(ac_id) == 2 and ids[-1] != ac_id
    assert encode_with_anchors(tok, "One. Two", "ac", ac_id, anchor_after_last=True)[-1] == ac_id
    # the model prunes at <AC>: kept = the 2 anchors + the tokens of the open last sentence
    with torch.no_grad():
        cache = cache_of(model(torch.tensor([ids]), use_cache=True))
    last_anchor = len(ids) - 1 - ids[::-1].index(ac_id)
    assert cache.cached_tokens() == 2 + (len(ids) - last_anchor - 1)


def test_collator_right_pads_and_masks_labels():
    batch = AnchorDataCollator(pad_token_id=0, pad_to_multiple_of=4)([{"input_ids": [5, 6, 7]}, {"input_ids": [9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [9, 0, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, -100], [9, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
