"""In-context learning with prefix compression: run the demonstrations once into an :class:`AnchorCache` (which keeps
only their anchors), then answer many queries from copies of that small cache without recomputing the prefix.

Exact: a query scored from the compressed prefix gets the logits of the full AnSAN forward over prefix + query.
Not imported by the modeling files.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..anchor.cache_anchor import AnchorCache
from ..anchor.compat_anchor import CACHE_NAME, cache_of


@dataclass
class CompressedPrefix:
    """A prompt prefix (e.g. few-shot demonstrations) already run through the model.

    cache: the pruned cache for one row (batch 1).
    input_ids: ``[1, prefix_len]`` the prefix tokens (``generate`` needs them to count positions).
    """

    cache: AnchorCache
    input_ids: torch.LongTensor

    @property
    def seen_tokens(self) -> int:
        return self.cache.get_seq_length()

    def cached_tokens(self) -> int:
        return self.cache.cached_tokens()

    def kv_bytes(self) -> int:
        return self.cache.kv_bytes()

    def cache_for(self, batch_size: int = 1) -> AnchorCache:
        """A fresh copy of the prefix cache for ``batch_size`` rows (the stored one is never modified)."""
        cache = copy.deepcopy(self.cache)
        if batch_size != 1:
            cache.batch_repeat_interleave(batch_size)
        return cache


@torch.no_grad()
def compress_prefix(model, prefix_ids: torch.LongTensor, prune: bool = True) -> CompressedPrefix:
    """Run ``prefix_ids`` (``[prefix_len]`` or ``[1, prefix_len]``) once and keep its anchor-pruned cache."""
    if prefix_ids.dim() == 1:
        prefix_ids = prefix_ids[None]
    if prefix_ids.dim() != 2 or prefix_ids.shape[0] != 1:
        raise ValueError(f"compress_prefix takes one prefix, shape [1, L]; got {tuple(prefix_ids.shape)}")
    prefix_ids = prefix_ids.to(model.device)
    cache = AnchorCache(config=model.config, prune=prune)
    model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1, **{CACHE_NAME: cache})
    return CompressedPrefix(cache=cache, input_ids=prefix_ids)


@torch.no_grad()
def continuation_logits(
    model, prefix: CompressedPrefix, query_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, AnchorCache]:
    """Logits ``[batch, q_len, vocab]`` of ``query_ids`` (``[batch, q_len]``, right-padded with ``attention_mask``
    ``[batch, q_len]``) continuing the compressed prefix; also returns the (copied) cache after the query."""
    if query_ids.dim() == 1:
        query_ids = query_ids[None]
    query_ids = query_ids.to(model.device)
    cache = prefix.cache_for(query_ids.shape[0])
    if attention_mask is not None:
        attention_mask = attention_mask.to(model.device)
    out = model(input_ids=query_ids, attention_mask=attention_mask, use_cache=True, **{CACHE_NAME: cache})
    return out.logits, cache_of(out)


@torch.no_grad()
def generate_with_prefix(model, prefix: CompressedPrefix, query_ids: torch.LongTensor, **generate_kwargs):
    """``model.generate`` for ``query_ids`` ``[batch, q_len]`` (no padding) after the compressed prefix.

    Returns the generated ids including prefix and query, like ``generate``. Beam search and
    ``num_return_sequences`` are supported (the cache is expanded the way ``generate`` expands its inputs).
    """
    if query_ids.dim() == 1:
        query_ids = query_ids[None]
    query_ids = query_ids.to(model.device)
    batch = query_ids.shape[0]
    expand = max(int(generate_kwargs.get("num_beams", 1) or 1), 1)
    if generate_kwargs.get("do_sample") or expand == 1:
        expand = max(expand, int(generate_kwargs.get("num_return_sequences", 1) or 1))
    input_ids = torch.cat([prefix.input_ids.expand(batch, -1), query_ids], dim=1)
    cache = prefix.cache_for(batch)
    if expand > 1:
        cache.batch_repeat_interleave(expand)
    return model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **{CACHE_NAME: cache}, **generate_kwargs
    )


# a toy key-word task: enough to see the compressed prefix answer queries; a trained checkpoint gives real answers
DEMONSTRATIONS = (
    ("The capital of France is Paris.", "Paris"),
    ("Water boils at one hundred degrees.", "one hundred"),
    ("The cat sat on the red mat.", "red"),
    ("Seven days make one week.", "seven"),
    ("The sun rises in the east.", "east"),
)
QUERIES = ("The sky is blue today.", "Snow is cold and white.", "Bees make sweet honey.", "Ice melts in the sun.")


def icl_prompt(demonstrations) -> str:
    """The few-shot prefix: one ``Sentence: ...\\nKey word: ....`` block per ``(text, answer)`` pair."""
    return "".join(f"Sentence: {text}\nKey word: {answer}.\n\n" for text, answer in demonstrations)


def tiny_anchor_model(texts) -> tuple:
    """``(model, tokenizer)``: a tiny random AnchorLlama (EP anchors ``. ! ?``) with a BPE tokenizer trained on
    ``texts`` -- only to see the mechanics run without a checkpoint."""
    from transformers import AutoTokenizer

    from ..anchor import AnchorLlamaForCausalLM, find_endpoint_token_ids
    from ..data import train_tokenizer
    from ..testing_utils import save_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        base = save_tiny_llama(Path(tmp) / "base", vocab_size=512, max_position_embeddings=2048)
        train_tokenizer(list(texts) * 8, 512, min_frequency=0, show_progress=False).save_pretrained(base)
        tokenizer = AutoTokenizer.from_pretrained(base)
        anchors = find_endpoint_token_ids(tokenizer, (".", "!", "?"), match="endswith")
        return AnchorLlamaForCausalLM.from_pretrained(base, anchor_token_ids=anchors).eval(), tokenizer


@torch.no_grad()
def answer_from_compressed_prefix(model, tokenizer, demonstrations=DEMONSTRATIONS, queries=QUERIES,
                                  max_new_tokens: int = 6) -> dict:
    """Compress ``demonstrations`` once, answer every query from copies of that cache (greedy), and check the last
    answer against ``generate`` recomputing the whole prompt (raises ``AssertionError`` if they differ).

    Returns ``{"answers": {query: text}, "seen_tokens", "cached_tokens", "kv_bytes", "compress_seconds",
    "seconds_per_query", "recompute_seconds"}``."""
    prefix_ids = tokenizer(icl_prompt(demonstrations), return_tensors="pt").input_ids.to(model.device)
    start = time.perf_counter()
    prefix = compress_prefix(model, prefix_ids)
    report = {"seen_tokens": prefix.seen_tokens, "cached_tokens": prefix.cached_tokens(),
              "kv_bytes": prefix.kv_bytes(), "compress_seconds": time.perf_counter() - start, "answers": {}}
    start = time.perf_counter()
    for query in queries:
        query_ids = tokenizer(f"Sentence: {query}\nKey word:", return_tensors="pt", add_special_tokens=False).input_ids
        out = generate_with_prefix(model, prefix, query_ids, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, prefix_ids.shape[1] + query_ids.shape[1]:]
        report["answers"][query] = tokenizer.decode(new, skip_special_tokens=True)
    report["seconds_per_query"] = (time.perf_counter() - start) / max(len(queries), 1)
    start = time.perf_counter()
    full_prompt = torch.cat([prefix_ids, query_ids.to(model.device)], 1)
    recomputed = model.generate(full_prompt, attention_mask=torch.ones_like(full_prompt),
                                max_new_tokens=max_new_tokens, do_sample=False)
    report["recompute_seconds"] = time.perf_counter() - start
    assert torch.equal(recomputed, out), "compressed-prefix generation differs from recomputing the whole prompt"
    return report


__all__ = ["CompressedPrefix", "DEMONSTRATIONS", "QUERIES", "answer_from_compressed_prefix", "compress_prefix",
           "continuation_logits", "generate_with_prefix", "icl_prompt", "tiny_anchor_model"]
