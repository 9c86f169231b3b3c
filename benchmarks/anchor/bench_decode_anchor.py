"""Decode step time at long context: AnchorLlama with its pruned AnchorCache vs Llama with a full DynamicCache.

Both models share weights. A long many-sentence prompt (EP anchors: tokens ending in . ! ?) is prefilled, then
``--steps`` single-token decode steps are timed (same fed tokens, no anchors among them, so the anchor cache stays at
its post-prompt size). The *limit* is what AnchorLlama's step could cost at best: a plain Llama step whose cache holds
as many entries as the anchor cache keeps (Llama prefilled with that many prompt tokens). Prints median step times,
the speed-up over Llama at full context and the ratio to the limit; writes a PNG of step time vs context.

    python benchmarks/anchor/bench_decode_anchor.py --contexts 1024 2048 4096 --size small
"""

from __future__ import annotations

import statistics
import time

import torch
from tqdm import tqdm


# run as a script: its own folder is on sys.path, so the sibling modules import directly
from bench_common_anchor import OUT_DIR, anchor_parser, ep_ids, load_tokenizer, long_prompt, model_pair
from hf_efficient_lm.compat import CACHE_NAME, cache_of
from hf_efficient_lm.eval.benchmarking import new_figure, parse_benchmark_args, write_figure


WARMUP_STEPS = 3  # untimed decode steps at the start of every context


@torch.no_grad()
def time_decode(settings, feed: torch.LongTensor, warmup: int = WARMUP_STEPS, clock=time.perf_counter):
    """Median decode-step seconds of each ``(model, prompt_ids)`` setting after prefilling its prompt; the settings'
    steps are interleaved so that load from other processes on a shared machine hits them alike.
    Returns (medians, caches)."""
    models = [model for model, _ in settings]
    caches = [cache_of(model(prompt, use_cache=True, logits_to_keep=1)) for model, prompt in settings]
    times = [[] for _ in models]
    for step in range(feed.shape[1]):
        for model, cache, record in zip(models, caches, times):
            start = clock()
            model(feed[:, step : step + 1], **{CACHE_NAME: cache}, use_cache=True)
            record.append(clock() - start)
    return [statistics.median(record[warmup:]) for record in times], caches


def main(argv=None):
    parser = anchor_parser(__doc__)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=40,
                        help=f"decode steps per context, the first {WARMUP_STEPS} untimed")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="'cpu' times this process's CPU time: steadier than wall time on a machine shared with "
                             "other jobs (with --threads 1 it is the step's compute time)")
    parser.add_argument("--no-plot", action="store_true")
    args = parse_benchmark_args(parser, argv)
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be > {WARMUP_STEPS} (the first {WARMUP_STEPS} steps are untimed warm-up), "
                     f"got {args.steps}")

    tokenizer = load_tokenizer()
    anchors = ep_ids(tokenizer)
    llama, anchor = model_pair(tokenizer, anchors, args.size)
    text_ids = tokenizer.encode(long_prompt(tokenizer, max(args.contexts), "pydocs"), add_special_tokens=False)
    generator = torch.Generator().manual_seed(0)
    non_anchor = torch.tensor([i for i in range(3, len(tokenizer)) if i not in set(anchors)])
    feed = non_anchor[torch.randint(0, len(non_anchor), (1, args.steps), generator=generator)]

    rows = []
    for context in tqdm(args.contexts, desc="contexts"):
        prompt = torch.tensor([([tokenizer.bos_token_id] + text_ids)[:context]])
        with torch.no_grad():
            kept = cache_of(anchor(prompt, use_cache=True, logits_to_keep=1)).cached_tokens()
        (llama_step, anchor_step, limit_step), (_, cache, _) = time_decode(
            [(llama, prompt), (anchor, prompt), (llama, prompt[:, :kept])], feed,
            clock=time.process_time if args.clock == "cpu" else time.perf_counter,
        )
        assert cache.cached_tokens() == kept + args.steps  # the fed tokens are no anchors: nothing pruned
        rows.append((prompt.shape[1], kept, llama_step * 1e3, anchor_step * 1e3, limit_step * 1e3))

    print(f"\nDecode step time (size={args.size}, fp32, batch 1, {torch.get_num_threads()} thread(s), median of "
          f"{args.steps - WARMUP_STEPS} interleaved steps, {args.clock} clock; "
          "limit = Llama step with a cache of the kept size)")
    print(f"{'context':>8} {'anchor kept':>12} {'Llama ms':>9} {'Anchor ms':>10} {'limit ms':>9} {'speed-up':>9} "
          f"{'vs limit':>9}")
    for context, kept, llama_ms, anchor_ms, limit_ms in rows:
        print(f"{context:8d} {kept:12d} {llama_ms:9.3f} {anchor_ms:10.3f} {limit_ms:9.3f} {llama_ms / anchor_ms:8.2f}x "
              f"{anchor_ms / limit_ms:8.2f}x")

    if not args.no_plot:
        fig, ax = new_figure(figsize=(6, 4))
        contexts = [r[0] for r in rows]
        for column, style, label in ((2, "o-", "Llama, full cache"), (3, "o-", "AnchorLlama, anchor cache"),
                                     (4, "s--", "limit: Llama, cache of the kept size")):
            ax.plot(contexts, [r[column] for r in rows], style, label=label)
        ax.set(xlabel="context tokens", ylabel="decode step (ms)")
        ax.legend()
        write_figure(fig, OUT_DIR / "decode_step_anchor.png")


if __name__ == "__main__":
    main()
