"""KV-cache bytes of AnchorLlama (EP and AC anchors) vs Llama's full cache, on real corpus text.

Prompts: (a) 5-shot — five demonstration paragraphs + a query paragraph; (b) long many-sentence prompts of
``--long-tokens`` tokens. Llama's DynamicCache and AnchorLlama's AnchorCache are measured after the same prefill
(same weights; bytes do not depend on the weights' values). Also writes a PNG of kept vs seen tokens while a long
prompt streams in by chunks.

    python benchmarks/anchor/bench_kv_anchor.py --long-tokens 4096 --size small
"""

from __future__ import annotations


import torch
from tqdm import tqdm

from bench_common_anchor import (
    OUT_DIR, ac_model_pair, anchor_parser, ep_ids, five_shot_prompts, full_cache_bytes, load_tokenizer, long_prompt,
    model_pair,
)

from hf_efficient_lm.compat import CACHE_NAME, cache_of
from hf_efficient_lm.anchor import AnchorCache, encode_with_anchors
from hf_efficient_lm.eval.benchmarking import new_figure, parse_benchmark_args, write_figure


@torch.no_grad()
def measure(llama, anchor, ids: list[int]) -> dict:
    input_ids = torch.tensor([ids])
    full = cache_of(llama(input_ids, use_cache=True))
    cache = cache_of(anchor(input_ids, use_cache=True, logits_to_keep=1))
    return dict(seen=len(ids), kept=cache.cached_tokens(), full_bytes=full_cache_bytes(full),
                anchor_bytes=cache.kv_bytes())


@torch.no_grad()
def streaming_curve(anchor, ids: list[int], chunk: int) -> list[tuple[int, int]]:
    cache, curve = AnchorCache(config=anchor.config), []
    for start in range(0, len(ids), chunk):
        anchor(torch.tensor([ids[start : start + chunk]]), **{CACHE_NAME: cache}, use_cache=True, logits_to_keep=1)
        curve.append((cache.get_seq_length(), cache.cached_tokens()))
    return curve


def main(argv=None):
    parser = anchor_parser(__doc__)
    parser.add_argument("--long-tokens", type=int, default=4096, help="length of the long prompts in tokens")
    parser.add_argument("--n-prompts", type=int, default=3, help="prompts per setting (averaged)")
    parser.add_argument("--chunk", type=int, default=128, help="chunk size for the streaming curve")
    parser.add_argument("--no-plot", action="store_true")
    args = parse_benchmark_args(parser, argv)

    tokenizer = load_tokenizer()
    llama, ep_model = model_pair(tokenizer, ep_ids(tokenizer), args.size)
    ac_tokenizer, ac_llama, ac_model, ac_id = ac_model_pair(tokenizer, args.size)
    settings = {
        "5-shot": five_shot_prompts(args.n_prompts),
        "long": [long_prompt(tokenizer, args.long_tokens, d) for d in ("pydocs", "kernel", "dictionary")][
            : args.n_prompts
        ],
    }
    rows, curves = [], {}
    for name, prompts in settings.items():
        for mode in ("ep", "ac"):
            totals = dict(seen=0, kept=0, full_bytes=0, anchor_bytes=0)
            for prompt in tqdm(prompts, desc=f"{name} {mode}", leave=False):
                if mode == "ep":
                    ids = encode_with_anchors(tokenizer, prompt, "ep")
                    if name == "long":
                        ids = ids[: args.long_tokens]
                    result = measure(llama, ep_model, ids)
                else:
                    ids = encode_with_anchors(ac_tokenizer, prompt, "ac", ac_id, anchor_after_last=True)
                    if name == "long":
                        ids = ids[: args.long_tokens]
                    result = measure(ac_llama, ac_model, ids)
                for key in totals:
                    totals[key] += result[key]
                if name == "long" and (mode, name) not in curves:
                    model = ep_model if mode == "ep" else ac_model
                    curves[(mode, name)] = streaming_curve(model, ids, args.chunk)
            saved = 1 - totals["anchor_bytes"] / totals["full_bytes"]
            rows.append((name, mode, totals["seen"] / len(prompts), totals["kept"] / len(prompts),
                         totals["full_bytes"] / len(prompts) / 2**20, totals["anchor_bytes"] / len(prompts) / 2**20,
                         totals["anchor_bytes"] / totals["full_bytes"], saved))

    print(f"\nKV cache, AnchorLlama vs Llama full cache (size={args.size}, fp32, {args.n_prompts} prompts each)")
    print(f"{'prompt':8} {'anchors':7} {'tokens':>8} {'kept':>8} {'Llama MiB':>10} {'Anchor MiB':>11} "
          f"{'ratio':>7} {'saved':>7}")
    for name, mode, seen, kept, full_mib, anchor_mib, ratio, saved in rows:
        print(f"{name:8} {mode:7} {seen:8.0f} {kept:8.1f} {full_mib:10.3f} {anchor_mib:11.4f} {ratio:7.4f} "
              f"{saved:7.1%}")

    if not args.no_plot:
        fig, ax = new_figure(figsize=(6, 4))
        for (mode, _), curve in curves.items():
            seen = [s for s, _ in curve]
            ax.plot(seen, [k for _, k in curve], label=f"AnchorCache ({mode.upper()})")
        ax.plot(seen, seen, "k--", label="Llama full cache")
        ax.set(xlabel="prompt tokens seen", ylabel="KV positions held per layer",
               title="KV cache while a long prompt streams in")
        ax.legend()
        write_figure(fig, OUT_DIR / "kv_cache_anchor.png")


if __name__ == "__main__":
    main()
