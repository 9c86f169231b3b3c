"""Decode step time of a table-mode SconeLlama vs the base Llama it wraps (same weights, same process).

The table model's accelerator work is the base model's; the extra per step is matching the new token's f-gram
(suffix of the last K tokens) and reading its row from the memory-mapped table. Goal: <= 1.05x the base step.
Two measurements: whole generate() calls (medians of interleaved repeats), and single decode steps of the two
models alternating on the same teacher-forced text (median of the paired differences: stable on a busy machine).

    nice -n 10 python benchmarks/scone/bench_decode_scone.py --num-fgrams 100000 --batch-sizes 1 16
Uses the shared base checkpoint (~/.cache/hf_efficient_lm/base) when present, else a random Llama of --preset.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, LlamaForCausalLM

from hf_efficient_lm.compat import CACHE_NAME
from hf_efficient_lm.scone import FgramVocab, SconeLlamaForCausalLM, export_fgram_table, mine_fgrams
from corpus_scone import DOMAINS, cache_dir, load_tokenizer, tokenized_docs
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args


def base_checkpoint(preset: str, tokenizer) -> Path:
    shared = cache_dir().parent / "base"
    if (shared / "config.json").exists():
        return shared
    from hf_efficient_lm.train.presets import llama_config_from_preset

    path = cache_dir() / f"random_{preset}_{len(tokenizer)}"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        LlamaForCausalLM(llama_config_from_preset(preset, vocab_size=len(tokenizer))).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def cached_vocab(num_fgrams: int, tokenizer) -> FgramVocab:
    path = cache_dir() / f"fgrams_{num_fgrams}_{len(tokenizer)}"
    if (path / "fgram_index.safetensors").exists():
        return FgramVocab.load(path, tokenizer=tokenizer)
    train = tokenized_docs("train")
    docs = [d for domain in DOMAINS for d in train[domain]]
    vocab = mine_fgrams(docs, num_fgrams=num_fgrams, tokenizer=tokenizer,
                        barrier_ids=[tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id])
    vocab.save(path)
    return vocab


@torch.no_grad()
def decode_ms_per_step(model, prompts, new_tokens: int) -> tuple[float, float]:
    """(time to generate new_tokens) - (time to generate 1), per extra step: decode only, prefill excluded.

    Returns (wall ms, CPU ms of this process); on a shared machine the CPU time is the stable figure."""
    common = dict(do_sample=False, pad_token_id=0, eos_token_id=None, attention_mask=torch.ones_like(prompts))
    times = []
    for count in (1, new_tokens):
        wall, cpu = time.perf_counter(), time.process_time()
        model.generate(prompts, max_new_tokens=count, min_new_tokens=count, **common)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return tuple((many - one) / (new_tokens - 1) * 1e3 for one, many in zip(*times))


@torch.no_grad()
def paired_step_ms(base, table, docs: list[np.ndarray], batch: int, prompt_len: int, new_tokens: int,
                   sequences: int) -> tuple[list[float], list[float]]:
    """CPU ms of single decode steps (prepare_inputs_for_generation + forward on a KV cache), the two models
    alternating step by step on the same teacher-forced continuation: a pair sees the same machine load, so the
    median of the per-step differences is a stable overhead figure even on a busy machine."""
    base_steps, table_steps = [], []
    total = prompt_len + new_tokens
    for start in range(0, sequences * batch, batch):
        ids = torch.from_numpy(np.stack([d[:total] for d in docs[start:start + batch]]).astype(np.int64))
        caches = {}
        for name, model in (("base", base), ("table", table)):
            caches[name] = DynamicCache(config=model.config)
            model(ids[:, :prompt_len], **{CACHE_NAME: caches[name]}, use_cache=True)
        for length in range(prompt_len + 1, total + 1):
            current, mask = ids[:, :length], torch.ones(batch, length, dtype=torch.long)
            order = (("base", base, base_steps), ("table", table, table_steps))
            for name, model, out in order if length % 2 else order[::-1]:
                cpu = time.process_time()
                inputs = model.prepare_inputs_for_generation(current, next_sequence_length=1, use_cache=True,
                                                             **{CACHE_NAME: caches[name]}, attention_mask=mask)
                model(**inputs)
                out.append((time.process_time() - cpu) * 1e3)
    return base_steps, table_steps


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--num-fgrams", type=int, default=100_000)
    parser.add_argument("--preset", default="5m")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--table-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--paired-tokens", type=int, default=4096,
                        help="decode steps x batch rows per batch size in the paired per-step measurement")
    args = parse_benchmark_args(parser, argv)
    tokenizer = load_tokenizer()
    base_dir = base_checkpoint(args.preset, tokenizer)
    vocab = cached_vocab(args.num_fgrams, tokenizer)
    base = LlamaForCausalLM.from_pretrained(base_dir).eval()
    table_dir = cache_dir() / f"decode_table_{args.num_fgrams}_{args.table_dtype}"
    torch.manual_seed(0)
    scone = SconeLlamaForCausalLM.from_pretrained(base_dir, fgram_vocab=vocab, fgram_num_layers=2)
    with torch.no_grad():
        scone.model.fgram_gate.fill_(1.0)
    if not (table_dir / "fgram_table.safetensors").exists():
        export_fgram_table(scone, table_dir, dtype=getattr(torch, args.table_dtype), show_progress=False)
    table = SconeLlamaForCausalLM.from_pretrained(table_dir).eval()
    print(f"base: {base_dir} ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M params); table model: "
          f"{vocab.num_fgrams:,} f-grams x {table.config.hidden_size} {args.table_dtype} "
          f"({(table_dir / 'fgram_table.safetensors').stat().st_size / 1e6:.0f} MB, memory-mapped); "
          f"accelerator params equal: {sum(p.numel() for p in table.parameters()) - table.config.hidden_size == sum(p.numel() for p in base.parameters())}")
    valid = tokenized_docs("valid")
    prompts_all = [d[:args.prompt_len] for domain in DOMAINS for d in valid[domain] if d.size >= args.prompt_len]
    print(f"threads {args.threads}; prompt {args.prompt_len} tokens; {args.new_tokens} new tokens; median of "
          f"{args.repeats} interleaved repeats\n")
    print("| batch | base ms/step (wall / CPU) | SconeLlama table ms/step (wall / CPU) | ratio wall | ratio CPU "
          "| extra CPU µs/step |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        prompts = torch.from_numpy(np.stack(prompts_all[:batch]).astype(np.int64))
        decode_ms_per_step(base, prompts, 4)  # warm-up
        decode_ms_per_step(table, prompts, 4)
        base_times, table_times = [], []
        for _ in range(args.repeats):
            base_times.append(decode_ms_per_step(base, prompts, args.new_tokens))
            table_times.append(decode_ms_per_step(table, prompts, args.new_tokens))
        bw, bc = (statistics.median(x) for x in zip(*base_times))
        tw, tc = (statistics.median(x) for x in zip(*table_times))
        print(f"| {batch} | {bw:.2f} / {bc:.2f} | {tw:.2f} / {tc:.2f} | {tw / bw:.3f}x | {tc / bc:.3f}x "
              f"| {(tc - bc) * 1e3:.0f} |")
    # Same measurement step by step, and with the base reading the table model's own weight tensors (no difference
    # in memory placement between the two models).
    shared = LlamaForCausalLM(base.config).eval()
    shared.load_state_dict({k: v for k, v in table.state_dict().items() if k != "model.fgram_gate"}, assign=True)
    long_docs = [d for domain in DOMAINS for d in valid[domain] if d.size >= args.prompt_len + args.new_tokens]
    print(f"\nPaired decode steps (teacher-forced, models alternating step by step, base = the table model's own "
          f"weight tensors), CPU ms, medians over about {args.paired_tokens} row-steps per batch size:\n")
    print("| batch | steps | base ms/step | SconeLlama table ms/step | median paired extra µs/step | ratio |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        sequences = max(1, min(len(long_docs) // batch, round(args.paired_tokens / (batch * args.new_tokens))))
        base_steps, table_steps = paired_step_ms(shared, table, long_docs, batch, args.prompt_len,
                                                 args.new_tokens, sequences)
        extra = statistics.median(t - b for t, b in zip(table_steps, base_steps))
        base_ms = statistics.median(base_steps)
        print(f"| {batch} | {len(base_steps)} | {base_ms:.2f} | {statistics.median(table_steps):.2f} | "
              f"{extra * 1e3:.0f} | {(base_ms + extra) / base_ms:.3f}x |")
    rows, lengths = table.match_fgrams(torch.from_numpy(np.stack(prompts_all[:16]).astype(np.int64)))
    print(f"\nprompt tokens matched: {(lengths > 0).float().mean():.1%} (mean length "
          f"{lengths[lengths > 0].float().mean():.2f})")


if __name__ == "__main__":
    main()
