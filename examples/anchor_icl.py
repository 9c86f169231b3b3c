"""In-context learning with prefix compression: compress few-shot demonstrations once into an AnchorCache (only their
anchors stay), then answer many queries from copies of that small cache, and check one answer against recomputing
the whole prompt.

    python examples/anchor_icl.py --model runs/ep/final          # an AnchorLlama checkpoint with its tokenizer
    python examples/anchor_icl.py                                 # a tiny random model, just to see it run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from hf_efficient_lm.anchor import AnchorLlamaForCausalLM, compress_prefix, find_endpoint_token_ids, generate_with_prefix

DEMONSTRATIONS = [
    ("The capital of France is Paris.", "Paris"),
    ("Water boils at one hundred degrees.", "one hundred"),
    ("The cat sat on the red mat.", "red"),
    ("Seven days make one week.", "seven"),
    ("The sun rises in the east.", "east"),
]
QUERIES = ["The sky is blue today.", "Snow is cold and white.", "Bees make sweet honey.", "Ice melts in the sun."]


def build_prompt(demonstrations) -> str:
    return "".join(f"Sentence: {text}\nKey word: {answer}.\n\n" for text, answer in demonstrations)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="AnchorLlama checkpoint folder (default: a tiny random model)")
    parser.add_argument("--max-new-tokens", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:  # a tiny random AnchorLlama with a tokenizer trained here
            from hf_efficient_lm.data import train_tokenizer
            from hf_efficient_lm.testing_utils import save_tiny_llama

            base = save_tiny_llama(Path(tmp) / "base", vocab_size=512, max_position_embeddings=2048)
            sentences = [text for text, _ in DEMONSTRATIONS] + list(QUERIES)
            train_tokenizer(sentences * 8, 512, min_frequency=0, show_progress=False).save_pretrained(base)
            tokenizer = AutoTokenizer.from_pretrained(base)
            anchors = find_endpoint_token_ids(tokenizer, (".", "!", "?"), match="endswith")
            model = AnchorLlamaForCausalLM.from_pretrained(base, anchor_token_ids=anchors).eval()
        else:
            tokenizer = AutoTokenizer.from_pretrained(args.model)
            model = AnchorLlamaForCausalLM.from_pretrained(args.model).eval()

    prefix_ids = tokenizer(build_prompt(DEMONSTRATIONS), return_tensors="pt").input_ids
    start = time.perf_counter()
    prefix = compress_prefix(model, prefix_ids)
    print(f"demonstrations: {prefix.seen_tokens} tokens -> {prefix.cached_tokens()} cached positions "
          f"({prefix.kv_bytes() / 1024:.1f} KiB) in {time.perf_counter() - start:.3f}s")

    start = time.perf_counter()
    for query in QUERIES:
        query_ids = tokenizer(f"Sentence: {query}\nKey word:", return_tensors="pt", add_special_tokens=False).input_ids
        out = generate_with_prefix(model, prefix, query_ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        answer = tokenizer.decode(out[0, prefix_ids.shape[1] + query_ids.shape[1] :], skip_special_tokens=True)
        print(f"{query!r:32} -> {answer!r}")
    reuse_time = time.perf_counter() - start

    # the same answer as recomputing the whole prompt (exactness of the compressed cache)
    full_prompt = torch.cat([prefix_ids, query_ids], 1)
    start = time.perf_counter()
    recomputed = model.generate(full_prompt, max_new_tokens=args.max_new_tokens, do_sample=False)
    recompute_time = time.perf_counter() - start
    assert torch.equal(recomputed, out), "compressed-prefix generation differs from recomputation"
    print(f"per query: {reuse_time / len(QUERIES):.3f}s from the compressed prefix, {recompute_time:.3f}s recomputing "
          "the whole prompt; answers identical (see benchmarks/anchor/bench_prefix_reuse_anchor.py for timings)")


if __name__ == "__main__":
    main()
