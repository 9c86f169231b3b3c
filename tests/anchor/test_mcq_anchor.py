"""The few-shot multiple-choice harness: the anchor setting equals an explicit AnSAN full forward; full = Llama."""

import torch
from transformers import LlamaForCausalLM

from hf_efficient_lm import AnchorLlamaForCausalLM
from hf_efficient_lm.anchor import find_endpoint_token_ids
from hf_efficient_lm.tools.anchor_mcq import evaluate_multiple_choice, sentence_cloze_items

TEXTS = [
    "The cat sat on the mat. It was warm there. The dog did not mind. Then it rained.",
    "A tiny model reads text. Each sentence ends with a period. It learns a little. Did it rain?",
    "Yes it did. The dog ran home. The cat stayed on the mat. Nobody was surprised.",
    "Short texts help tests. They run fast. Each one is tiny. That is the point.",
]


def _pair(path, tokenizer):
    from hf_efficient_lm.testing_utils import save_tiny_llama

    save_tiny_llama(path, vocab_size=len(tokenizer))
    anchors = find_endpoint_token_ids(tokenizer, endpoints=(".", "?"))
    return (AnchorLlamaForCausalLM.from_pretrained(path, anchor_token_ids=anchors).eval(),
            LlamaForCausalLM.from_pretrained(path).eval())


def _reference_scores(model, tokenizer, demos, item, **kwargs):
    prefix = [tokenizer.bos_token_id]
    for demo in demos:
        prefix += tokenizer.encode(demo.context + " " + demo.choices[demo.label], add_special_tokens=False)
        prefix += tokenizer.encode("\n\n", add_special_tokens=False)
    prefix += tokenizer.encode(item.context, add_special_tokens=False)
    scores = []
    for choice in item.choices:
        ids = tokenizer.encode(" " + choice, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([prefix + ids]), **kwargs).logits[0, len(prefix) - 1 : -1]
        scores.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).sum().item())
    return scores


def test_harness_matches_explicit_forward(tmp_path, tiny_bpe_tokenizer):
    tok = tiny_bpe_tokenizer
    model, llama = _pair(tmp_path, tok)
    pool = sentence_cloze_items(TEXTS, 5, n_choices=3, seed=0, min_chars=5)
    assert all(len(i.choices) == 3 and 0 <= i.label < 3 for i in pool)
    demos, items = pool[:2], pool[2:]
    for mode, reference in (("anchor", model), ("full", llama)):
        result = evaluate_multiple_choice(model, tok, items, demos, mode=mode, show_progress=False)
        expected = 0
        for item, got in zip(items, result["scores"]):
            scores = _reference_scores(reference, tok, demos, item)
            torch.testing.assert_close(torch.tensor(got), torch.tensor(scores), atol=1e-4, rtol=0)
            expected += int(torch.tensor(scores).argmax()) == item.label
        assert result["accuracy"] == expected / len(items)
        assert result["items"] == 3 and result["shots"] == 2
        if mode == "anchor":
            anchor_positions = result["kv_positions"]
        else:
            assert result["kv_positions"] > anchor_positions  # full cache holds every token
