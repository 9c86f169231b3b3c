"""Few-shot multiple-choice evaluation by log-likelihood, with full attention and with anchor inference.

The paper's protocol (lm-eval style: every choice scored by the summed log-probability of its tokens after the
prompt; ``acc`` = argmax of the sum, ``acc_norm`` = argmax of the sum divided by the choice's length in bytes) at CPU
scale, on the same AnchorLlama weights in two settings:

* ``full``: plain causal attention and a full KV cache (the anchor flags are switched off: exactly Llama);
* ``anchor``: the AnSAN mask and the anchor-pruned cache (AnLLM inference; in AC mode ``<AC>`` closes each
  demonstration sentence and each demonstration).

The few-shot demonstrations are shared by all items: they are run once into a cache (compressed to its anchors in
``anchor`` mode) and every item continues from a copy of it, so the timing shows the prefix-reuse benefit too.
Two bundled tasks build items from any corpus: :func:`next_sentence_items` ("which sentence comes next?": context =
consecutive sentences of a document, right choice = the next sentence, distractors = length-matched sentences of other
documents, balanced answer positions, no repeats; the one the quality benchmark uses) and the older
:func:`sentence_cloze_items` (the same idea sampled with replacement, distractors of any length).

    hf-efficient-lm anchor-mcq --model DIR --data ../shared/corpus/fortunes.valid.jsonl.gz
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..anchor.cache_anchor import AnchorCache
from ..anchor.compat_anchor import CACHE_NAME
from .anchor_data import encode_with_anchors, split_sentences
from ..anchor.tokens_anchor import require_anchor_token


@dataclass
class MultipleChoiceItem:
    context: str
    choices: list[str]
    label: int


def sentence_cloze_items(texts: list[str], n_items: int, n_choices: int = 4, seed: int = 0,
                         min_chars: int = 20, max_chars: int = 200) -> list[MultipleChoiceItem]:
    """Sentence-completion items from documents (see the module docstring). Raises if too few sentences exist."""
    rng = random.Random(seed)
    docs = []
    for text in texts:
        sentences = [" ".join(s.split()) for s in split_sentences(text)]
        sentences = [s for s in sentences if min_chars <= len(s) <= max_chars]
        if len(sentences) >= 3:
            docs.append(sentences)
    if len(docs) < n_choices:
        raise ValueError(f"need at least {n_choices} documents with 3+ usable sentences, found {len(docs)}")
    items = []
    for _ in range(n_items):
        doc_index = rng.randrange(len(docs))
        doc = docs[doc_index]
        start = rng.randrange(len(doc) - 2)
        answer = doc[start + 2]
        distractors = []
        while len(distractors) < n_choices - 1:
            other = rng.randrange(len(docs))
            if other != doc_index:
                candidate = rng.choice(docs[other])
                if candidate != answer and candidate not in distractors:
                    distractors.append(candidate)
        choices = distractors + [answer]
        rng.shuffle(choices)
        items.append(MultipleChoiceItem(" ".join(doc[start : start + 2]), choices, choices.index(answer)))
    return items


def next_sentence_items(texts: list[str], n_items: int, n_choices: int = 4, seed: int = 0,
                        context_sentences: int = 2, min_chars: int = 20, max_chars: int = 200,
                        length_candidates: int = 16) -> list[MultipleChoiceItem]:
    """"Which sentence comes next?" items from held-out documents: the context is ``context_sentences``
    consecutive sentences of a document, the right choice the sentence that follows them, the distractors sentences
    of *other* documents (never the item's own), each picked as the closest in length (characters) to the answer
    among ``length_candidates`` random draws, so a summed log-probability cannot win on length alone.

    Unlike :func:`sentence_cloze_items` no (document, position) is used twice, items are spread round-robin over the
    documents, and the answer's position is balanced exactly (item ``k``'s label is a shuffled ``k % n_choices``).
    Raises ``ValueError`` if the documents hold fewer than ``n_items`` distinct positions or fewer than
    ``n_choices`` usable documents."""
    if n_items < 1 or n_choices < 2 or context_sentences < 1 or length_candidates < 1:
        raise ValueError(f"need n_items >= 1, n_choices >= 2, context_sentences >= 1, length_candidates >= 1; got "
                         f"{n_items}, {n_choices}, {context_sentences}, {length_candidates}")
    rng = random.Random(seed)
    docs = []
    for text in texts:
        sentences = [" ".join(s.split()) for s in split_sentences(text)]
        sentences = [s for s in sentences if min_chars <= len(s) <= max_chars]
        if len(sentences) > context_sentences:
            docs.append(sentences)
    if len(docs) < n_choices:
        raise ValueError(f"need at least {n_choices} documents with {context_sentences + 1}+ usable sentences, "
                         f"found {len(docs)}")
    # every (document, answer index), shuffled within each document, then taken round-robin over documents
    per_doc = []
    for index, doc in enumerate(docs):
        positions = [(index, p) for p in range(context_sentences, len(doc))]
        rng.shuffle(positions)
        per_doc.append(positions)
    order = []
    while any(per_doc):
        for positions in per_doc:
            if positions:
                order.append(positions.pop())
    if len(order) < n_items:
        raise ValueError(f"asked for {n_items} items, the documents hold only {len(order)} distinct positions")
    labels = [k % n_choices for k in range(n_items)]
    rng.shuffle(labels)
    items = []
    for (doc_index, answer_index), label in zip(order[:n_items], labels):
        doc = docs[doc_index]
        answer = doc[answer_index]
        distractors: list[str] = []
        for _attempt in range(100 * n_choices):
            if len(distractors) == n_choices - 1:
                break
            draws = []
            for _ in range(length_candidates):
                other = rng.randrange(len(docs) - 1)
                other += other >= doc_index  # any document but the item's own
                candidate = rng.choice(docs[other])
                if candidate != answer and candidate not in distractors and candidate not in doc:
                    draws.append(candidate)
            if draws:
                distractors.append(min(draws, key=lambda c: abs(len(c) - len(answer))))
        if len(distractors) < n_choices - 1:
            raise ValueError(f"found no {n_choices - 1} distinct distractors for {answer!r} in the other documents")
        choices = distractors[:label] + [answer] + distractors[label:]
        context = " ".join(doc[answer_index - context_sentences : answer_index])
        items.append(MultipleChoiceItem(context, choices, label))
    return items


def _encode(tokenizer, text: str, anchor_mode: str, anchor_token_id, close: bool) -> list[int]:
    return encode_with_anchors(tokenizer, text, anchor_mode, anchor_token_id, anchor_after_last=close, add_bos=False)


@torch.no_grad()
def evaluate_multiple_choice(model, tokenizer, items: list[MultipleChoiceItem], demos: list[MultipleChoiceItem],
                             mode: str = "anchor", show_progress: bool = True, unconditional: bool = False) -> dict:
    """Accuracy, KV cache size and time of ``model`` (an AnchorLlamaForCausalLM) on ``items`` with ``demos`` as
    few-shot demonstrations, in ``mode`` ``"full"`` or ``"anchor"`` (see the module docstring).

    Returns a dict: accuracy, accuracy_norm, kv_positions / kv_bytes (mean per scored choice row, after the choice),
    prefix_tokens, seconds (wall) and cpu_seconds (this process), and ``scores`` (per item, the summed
    log-probability of each choice). With
    ``unconditional=True`` also ``accuracy_pmi`` / ``unconditional_scores``: each choice is scored once more after
    the BOS token alone (same mode), and the choice maximising ``log p(choice | prompt) - log p(choice | BOS)`` is
    taken (lm-evaluation-harness's ``acc_mutual_info``): it removes how likely a sentence is on its own, which a
    small model's summed log-probability otherwise mostly measures. ``seconds`` leaves that extra forward out
    (``unconditional_seconds``), so it times the prompt + choice scoring alone."""
    if mode not in ("full", "anchor"):
        raise ValueError(f"mode must be 'full' or 'anchor', got {mode!r}")
    config = model.config
    anchor_mode = config.anchor_mode
    if anchor_mode == "ac":
        require_anchor_token(tokenizer, config)  # clear error if the tokenizer lacks <AC>
    ac_id = config.anchor_token_ids[0] if anchor_mode == "ac" and mode == "anchor" else None
    encode_mode = "ac" if ac_id is not None else "ep"
    device = model.device

    def run(ids: torch.LongTensor, cache: AnchorCache, attention_mask=None, keep_all_logits=True):
        flags = None if mode == "anchor" else torch.zeros_like(ids, dtype=torch.bool)
        return model(input_ids=ids, attention_mask=attention_mask, use_cache=True, anchor_flags=flags,
                     logits_to_keep=0 if keep_all_logits else 1, **{CACHE_NAME: cache}).logits

    start_time, start_cpu = time.perf_counter(), time.process_time()
    prefix_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for demo in demos:
        prefix_ids += _encode(tokenizer, demo.context + " " + demo.choices[demo.label], encode_mode, ac_id, True)
        prefix_ids += tokenizer.encode("\n\n", add_special_tokens=False)
    prefix_cache = AnchorCache(config=config)
    if prefix_ids:
        run(torch.tensor([prefix_ids], device=device), prefix_cache, keep_all_logits=False)

    correct = correct_norm = correct_pmi = 0
    extra_seconds = extra_cpu = 0.0
    all_scores, all_unconditional = [], []
    kv_positions = kv_bytes = 0
    for item in tqdm(items, desc=f"multiple choice ({mode})", disable=not show_progress, leave=False):
        cache = copy.deepcopy(prefix_cache)
        context_ids = _encode(tokenizer, item.context, encode_mode, ac_id, True)
        last_logits = run(torch.tensor([context_ids], device=device), cache, keep_all_logits=False)[0, -1]
        choice_ids = [tokenizer.encode(" " + choice, add_special_tokens=False) for choice in item.choices]
        width = max(len(c) for c in choice_ids)
        batch = torch.full((len(choice_ids), width), tokenizer.pad_token_id or 0, dtype=torch.long, device=device)
        mask = torch.zeros_like(batch)
        for row, ids in enumerate(choice_ids):
            batch[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        cache.batch_repeat_interleave(len(choice_ids))
        logits = run(batch, cache, attention_mask=mask)
        kv_positions += cache.cached_tokens() / len(choice_ids)
        kv_bytes += cache.kv_bytes() / len(choice_ids)
        # log p(token_0 | prompt) from the prompt's last logits, then log p(token_t | ..., token_{t-1})
        first = torch.log_softmax(last_logits.float(), -1)[batch[:, 0]]
        rest = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch[:, 1:, None])[..., 0]
        scores = first + (rest * mask[:, 1:]).sum(-1)
        all_scores.append(scores.tolist())
        lengths = torch.tensor([len(choice.encode("utf-8")) for choice in item.choices], device=device)
        correct += int(scores.argmax()) == item.label
        correct_norm += int((scores / lengths).argmax()) == item.label
        if unconditional:
            if tokenizer.bos_token_id is None:
                raise ValueError("unconditional=True scores each choice after the BOS token; the tokenizer has none")
            extra_started, extra_cpu_started = time.perf_counter(), time.process_time()
            bos = torch.full((len(choice_ids), 1), tokenizer.bos_token_id, dtype=torch.long, device=device)
            alone = run(torch.cat([bos, batch], 1), AnchorCache(config=config),
                        attention_mask=torch.cat([torch.ones_like(bos), mask], 1))
            alone = torch.log_softmax(alone[:, :-1].float(), -1).gather(-1, batch[..., None])[..., 0]
            alone = (alone * mask).sum(-1)
            all_unconditional.append(alone.tolist())
            correct_pmi += int((scores - alone).argmax()) == item.label
            extra_seconds += time.perf_counter() - extra_started
            extra_cpu += time.process_time() - extra_cpu_started
    seconds = time.perf_counter() - start_time - extra_seconds
    cpu_seconds = time.process_time() - start_cpu - extra_cpu
    n = max(len(items), 1)
    return dict(mode=mode, items=len(items), shots=len(demos), accuracy=correct / n, accuracy_norm=correct_norm / n,
                prefix_tokens=len(prefix_ids), kv_positions=kv_positions / n, kv_bytes=kv_bytes / n, seconds=seconds,
                cpu_seconds=cpu_seconds, scores=all_scores,
                **(dict(accuracy_pmi=correct_pmi / n, unconditional_scores=all_unconditional,
                        unconditional_seconds=extra_seconds) if unconditional else {}))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hf-efficient-lm anchor-mcq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="AnchorLlama checkpoint folder (with its tokenizer)")
    parser.add_argument("--data", required=True, help="jsonl(.gz) file with a 'text' column to build items from")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="next-sentence", choices=["next-sentence", "cloze"],
                        help="item builder: next_sentence_items (default) or sentence_cloze_items")
    parser.add_argument("--modes", nargs="+", default=["full", "anchor"], choices=["full", "anchor"])
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_efficient_lm  # noqa: F401  (registers AnchorLlama)

    from ..data import read_texts

    texts = read_texts([args.data])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    build = next_sentence_items if args.task == "next-sentence" else sentence_cloze_items
    pool = build(texts, args.items + args.shots, seed=args.seed)
    demos, items = pool[: args.shots], pool[args.shots :]
    results = [evaluate_multiple_choice(model, tokenizer, items, demos, mode, unconditional=True)
               for mode in args.modes]
    for r in results:
        r.pop("scores")
        r.pop("unconditional_scores")
        print(f"{r['mode']:6} acc {r['accuracy']:.3f} acc_norm {r['accuracy_norm']:.3f} acc_pmi {r['accuracy_pmi']:.3f} "
              f"KV positions {r['kv_positions']:.1f} KV bytes {r['kv_bytes'] / 1024:.1f} KiB time {r['seconds']:.2f}s")
    if args.output:
        from ..io_utils import atomic_file

        with atomic_file(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
