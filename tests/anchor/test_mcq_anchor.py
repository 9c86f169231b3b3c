"""The few-shot multiple-choice harness: the anchor setting equals an explicit AnSAN full forward; full = Llama."""

import pytest
import torch
from transformers import LlamaForCausalLM

from hf_efficient_lm import AnchorLlamaForCausalLM
from hf_efficient_lm.anchor import find_endpoint_token_ids
from hf_efficient_lm.tools.anchor_mcq import evaluate_multiple_choice, next_sentence_items, sentence_cloze_items

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
        result = evaluate_multiple_choice(model, tok, items, demos, mode=mode, show_progress=False,
                                          unconditional=True)
        expected = expected_pmi = 0
        for item, got, got_alone in zip(items, result["scores"], result["unconditional_scores"]):
            scores = _reference_scores(reference, tok, demos, item)
            torch.testing.assert_close(torch.tensor(got), torch.tensor(scores), atol=1e-4, rtol=0)
            expected += int(torch.tensor(scores).argmax()) == item.label
            # each choice after BOS alone, scored by an explicit forward of the reference
            alone = []
            for choice in item.choices:
                ids = tok.encode(" " + choice, add_special_tokens=False)
                with torch.no_grad():
                    logits = reference(torch.tensor([[tok.bos_token_id] + ids])).logits[0, :-1]
                alone.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).sum().item())
            torch.testing.assert_close(torch.tensor(got_alone), torch.tensor(alone), atol=1e-4, rtol=0)
            assert max(abs(a - b) for a, b in zip(scores, alone)) > 0.1  # the prompt changes the scores
            expected_pmi += int((torch.tensor(scores) - torch.tensor(alone)).argmax()) == item.label
        assert result["accuracy"] == expected / len(items)
        assert result["accuracy_pmi"] == expected_pmi / len(items)
        assert result["items"] == 3 and result["shots"] == 2
        if mode == "anchor":
            anchor_positions = result["kv_positions"]
        else:
            assert result["kv_positions"] > anchor_positions  # full cache holds every token


def _documents(n_docs=6, n_sentences=12):
    """Documents whose sentences name their document and position, so an item can be traced back."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa"]
    return [" ".join(f"Doc {d} line {s} says {words[(d + s) % 8]} {'x' * ((d * 7 + s * 3) % 40)}."
                     for s in range(n_sentences)) for d in range(n_docs)]


def test_next_sentence_items_balanced_from_other_documents():
    texts = _documents()
    items = next_sentence_items(texts, 41, n_choices=4, seed=3, min_chars=5)
    assert len(items) == 41
    counts = [sum(item.label == k for item in items) for k in range(4)]
    assert max(counts) - min(counts) <= 1, counts  # answer position balanced exactly
    seen = set()
    for item in items:
        answer = item.choices[item.label]
        doc, line = answer.split()[1], int(answer.split()[3])
        # the context is the two sentences right before the answer, from the same document
        assert item.context.startswith(f"Doc {doc} line {line - 2} ") and f"Doc {doc} line {line - 1} " in item.context
        others = [c for k, c in enumerate(item.choices) if k != item.label]
        assert len(set(others)) == 3 and all(c.split()[1] != doc for c in others)  # other documents only
        assert (doc, line) not in seen  # no (document, position) twice
        seen.add((doc, line))
    # items spread round-robin over the documents
    assert len({item.choices[item.label].split()[1] for item in items[:6]}) == 6
    # the same seed gives the same items, another seed others
    assert [i.choices for i in next_sentence_items(texts, 41, seed=3, min_chars=5)] == [i.choices for i in items]
    assert [i.choices for i in next_sentence_items(texts, 41, seed=4, min_chars=5)] != [i.choices for i in items]


def test_next_sentence_items_distractors_match_length():
    texts = _documents()
    items = next_sentence_items(texts, 60, seed=0, min_chars=5)
    matched = sum(abs(len(c) - len(i.choices[i.label])) for i in items for c in i.choices) / (3 * len(items))
    unmatched = next_sentence_items(texts, 60, seed=0, min_chars=5, length_candidates=1)
    random_gap = sum(abs(len(c) - len(i.choices[i.label])) for i in unmatched for c in i.choices) / (3 * len(items))
    assert matched < 0.5 * random_gap, (matched, random_gap)


def test_next_sentence_items_refuses_too_few():
    texts = _documents(n_docs=5, n_sentences=4)  # 5 documents x 2 answer positions = 10 items at most
    assert len(next_sentence_items(texts, 10, min_chars=5)) == 10
    with pytest.raises(ValueError, match="only 10 distinct positions"):
        next_sentence_items(texts, 11, min_chars=5)
    with pytest.raises(ValueError, match="at least 4 documents"):
        next_sentence_items(texts[:3], 2, min_chars=5)


def test_the_anchor_mcq_command_scores_the_items_its_options_ask_for(tmp_path, tiny_bpe_tokenizer):
    """``hf-efficient-lm anchor-mcq``: --task, --items, --shots, --seed and --modes reach the harness, and --output
    holds what evaluate_multiple_choice gives for those items."""
    import json

    from hf_efficient_lm.tools.anchor_mcq import main
    from tests.helpers import make_documents, write_jsonl

    model, _ = _pair(tmp_path / "model", tiny_bpe_tokenizer)
    model.save_pretrained(tmp_path / "model")
    tiny_bpe_tokenizer.save_pretrained(tmp_path / "model")
    texts = make_documents(30, seed=2)
    data = write_jsonl(tmp_path / "texts.jsonl", texts)
    main(["--model", str(tmp_path / "model"), "--data", str(data), "--task", "cloze", "--items", "4", "--shots", "1",
          "--seed", "1", "--modes", "anchor", "--output", str(tmp_path / "mcq.json")])
    (result,) = json.loads((tmp_path / "mcq.json").read_text())
    pool = sentence_cloze_items(texts, 5, seed=1)
    expected = evaluate_multiple_choice(model, tiny_bpe_tokenizer, pool[1:], pool[:1], "anchor", show_progress=False,
                                        unconditional=True)
    assert (result["mode"], result["items"], result["shots"]) == ("anchor", 4, 1)
    for key in ("accuracy", "accuracy_norm", "accuracy_pmi", "prefix_tokens", "kv_positions"):
        assert result[key] == pytest.approx(expected[key]), key
    assert sentence_cloze_items(texts, 5, seed=0) != pool  # (the seed picks the items)
