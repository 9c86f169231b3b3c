"""In-context learning with prefix compression: compress few-shot demonstrations once into an AnchorCache (only their
anchors stay), answer many queries from copies of that small cache, and check one answer against recomputing the
whole prompt.

    python examples/anchor_icl.py --model runs/ep/final          # an AnchorLlama checkpoint with its tokenizer
    python examples/anchor_icl.py                                 # a tiny random model, just to see it run
"""

import argparse

from transformers import AutoTokenizer

from hf_efficient_lm.anchor import AnchorLlamaForCausalLM
from hf_efficient_lm.tools.anchor_icl import DEMONSTRATIONS, QUERIES, answer_from_compressed_prefix, tiny_anchor_model

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="AnchorLlama checkpoint folder (default: a tiny random model)")
parser.add_argument("--max-new-tokens", type=int, default=6)
args = parser.parse_args()
if args.model is None:
    model, tokenizer = tiny_anchor_model([text for text, _ in DEMONSTRATIONS] + list(QUERIES))
else:
    model, tokenizer = AnchorLlamaForCausalLM.from_pretrained(args.model).eval(), AutoTokenizer.from_pretrained(args.model)

report = answer_from_compressed_prefix(model, tokenizer, max_new_tokens=args.max_new_tokens)
print(f"demonstrations: {report['seen_tokens']} tokens -> {report['cached_tokens']} cached positions "
      f"({report['kv_bytes'] / 1024:.1f} KiB)")
for query, answer in report["answers"].items():
    print(f"{query!r:32} -> {answer!r}")
print(f"per query: {report['seconds_per_query']:.3f}s from the compressed prefix, {report['recompute_seconds']:.3f}s "
      "recomputing the whole prompt; the last answer is identical (timings: benchmarks/anchor/bench_prefix_reuse_anchor.py)")
