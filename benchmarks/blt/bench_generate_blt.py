"""Generation speed: BLTForCausalLM with its byte- and patch-level caches vs Transformers' Blt uncached (its only
exact mode in 5.23) on the same weights. Greedy, ``--new-bytes`` after a ``--prompt-bytes`` corpus prompt.

    nice -n 10 python benchmarks/blt/bench_generate_blt.py --prompt-bytes 1024 --new-bytes 256
"""

from __future__ import annotations

import tempfile
import time

import torch

from common_blt import add_reference_size_options, corpus_bytes, reference_blt

from hf_efficient_lm import BLTForCausalLM
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--prompt-bytes", type=int, default=1024)
    parser.add_argument("--new-bytes", type=int, default=256)
    add_reference_size_options(parser)
    parser.add_argument("--skip-ours-uncached", action="store_true", help="skip our own full-recompute reference")
    args = parse_benchmark_args(parser, argv)

    prompt = corpus_bytes(args.prompt_bytes)
    hf = reference_blt(prompt, args)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = BLTForCausalLM.from_pretrained(tmp).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    patches = int(ours.model(prompt).patch_starts.sum())
    print(f"model: {n_params / 1e6:.2f}M params (same weights in both); prompt {prompt.shape[1]} bytes in "
          f"{patches} patches ({prompt.shape[1] / patches:.2f} bytes/patch); threshold {hf.config.patching_threshold:.4f}")
    gen = dict(max_new_tokens=args.new_bytes, min_new_tokens=args.new_bytes, do_sample=False, eos_token_id=2, pad_token_id=0)

    def timed(fn):
        start = time.perf_counter()
        with torch.no_grad():
            out = fn()
        return out, time.perf_counter() - start

    cached, t_cached = timed(lambda: ours.generate(prompt, use_cache=True, **gen))
    print(f"BLTForCausalLM cached:         {t_cached:8.2f} s  ({args.new_bytes / t_cached:8.1f} bytes/s)")
    if not args.skip_ours_uncached:
        recompute, t_recompute = timed(lambda: ours.generate(prompt, use_cache=False, **gen))
        print(f"BLTForCausalLM full recompute: {t_recompute:8.2f} s  ({args.new_bytes / t_recompute:8.1f} bytes/s)"
              f"  identical: {torch.equal(cached, recompute)}")
    reference, t_hf = timed(lambda: hf.generate(prompt, use_cache=False, **gen))
    print(f"Transformers Blt uncached:     {t_hf:8.2f} s  ({args.new_bytes / t_hf:8.1f} bytes/s)")
    print(f"outputs identical to Transformers Blt: {torch.equal(cached, reference)}")
    print(f"speedup vs Transformers Blt uncached: {t_hf / t_cached:.1f}x")


if __name__ == "__main__":
    main()
