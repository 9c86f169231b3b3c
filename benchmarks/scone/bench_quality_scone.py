"""Quality at CPU scale: base Llama vs SconeLlama with the same main model and the same training tokens.

Every model trains from the same seed on the same packed blocks of ``../shared/corpus`` (all five domains, the
baseline tokenizer), then SconeLlama is exported to table mode, so the evaluated models have the same inference
FLOPs and accelerator parameters (+1 gate vector for "gated"). Held-out perplexity per domain; the paper's two
scaling axes: number of f-grams S and f-gram model depth. Writes ``quality_scone_<fusion>.json`` and ``.png``
into ``--out``.

    nice -n 10 python benchmarks/scone/bench_quality_scone.py --train-tokens 600000 --num-fgrams 10000 100000 \
        --fgram-layers 1 2
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

from hf_efficient_lm.data import pack_ids
from hf_efficient_lm.eval import rows_nll
from hf_efficient_lm.scone import SconeLlamaConfig, SconeLlamaForCausalLM, export_fgram_table, mine_fgrams
from hf_efficient_lm.train.presets import llama_config_from_preset
from corpus_scone import DOMAINS, cache_dir, load_tokenizer, match_blocks, tokenized_docs
from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure
from hf_efficient_lm.io_utils import atomic_file


def packed_blocks(docs, eos: int, block: int) -> np.ndarray:
    return pack_ids(docs, block, separator=eos)


def train(model, blocks: np.ndarray, fgram: tuple[np.ndarray, np.ndarray] | None, steps: int, batch: int,
          lr: float, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    for step in range(steps):
        index = torch.randint(0, blocks.shape[0], (batch,), generator=generator)
        ids = torch.from_numpy(blocks[index.numpy()])
        kwargs = {}
        if fgram is not None:
            kwargs = dict(fgram_row=torch.from_numpy(fgram[0][index.numpy()]),
                          fgram_len=torch.from_numpy(fgram[1][index.numpy()].astype(np.int64)))
        loss = model(input_ids=ids, labels=ids, **kwargs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    return loss.item()


def perplexity(model, blocks: np.ndarray, batch: int = 32) -> float:
    return rows_nll(model, blocks, batch_size=batch).perplexity


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--preset", default="1m")
    parser.add_argument("--train-tokens", type=int, default=600_000)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--num-fgrams", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--fgram-layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fusion", default="replace", choices=["replace", "gated"])
    parser.add_argument("--eval-tokens", type=int, default=30_000, help="held-out tokens per domain")
    parser.add_argument("--out", help="results folder (default: $HFELM_CACHE/scone/quality)")
    parser.add_argument("--reuse-base", help="quality_scone.json of an earlier run with the same settings: reuse its "
                                             "base Llama figures instead of retraining it (training is seeded)")
    args = parse_benchmark_args(parser, argv)
    out = Path(args.out) if args.out else cache_dir() / "quality"  # (cache_dir() makes the folder: not at --help)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer()
    eos = tokenizer.eos_token_id
    barriers = [eos, tokenizer.bos_token_id, tokenizer.pad_token_id]
    train_docs = tokenized_docs("train")
    valid_docs = tokenized_docs("valid")
    all_train = [d for domain in DOMAINS for d in train_docs[domain]]
    blocks = packed_blocks(all_train, eos, args.block)
    steps = max(1, args.train_tokens // (args.batch * args.block))
    eval_blocks = {d: packed_blocks(valid_docs[d], eos, args.block)[: max(1, args.eval_tokens // args.block)]
                   for d in DOMAINS}
    llama_config = llama_config_from_preset(args.preset, vocab_size=len(tokenizer))
    print(f"preset {args.preset}, {steps} steps x {args.batch} x {args.block} = {steps * args.batch * args.block:,} "
          f"training tokens; fusion {args.fusion}")
    results = {}

    if args.reuse_base:
        results["base"] = json.loads(Path(args.reuse_base).read_text())["base"]
        base_ppl = results["base"]["ppl"]
    else:
        torch.manual_seed(0)
        base = LlamaForCausalLM(llama_config)
        start = time.perf_counter()
        train(base, blocks, None, steps, args.batch, args.lr, seed=1)
        base_ppl = {d: perplexity(base, b) for d, b in eval_blocks.items()}
        results["base"] = {"ppl": base_ppl, "params": sum(p.numel() for p in base.parameters()),
                           "train_s": time.perf_counter() - start}
    print(f"base Llama ({results['base']['params']:,} params): {base_ppl} in {results['base']['train_s']:.0f}s")

    vocabs = {}
    for num_fgrams in args.num_fgrams:
        vocabs[num_fgrams] = mine_fgrams(all_train, num_fgrams=num_fgrams, barrier_ids=barriers, tokenizer=tokenizer,
                                         show_progress=False)
    for num_fgrams in args.num_fgrams:
        for layers in args.fgram_layers:
            if num_fgrams != max(args.num_fgrams) and layers != min(args.fgram_layers):
                continue  # the two axes: S sweep at the smallest A_f, A_f sweep at the largest S
            vocab = vocabs[num_fgrams]
            # per row: no match reaches into the previous block (until 2026-12-05 the blocks were matched as one
            # flat array, so 0.08% of positions matched across a block boundary; the committed figures have that)
            rows, lengths = match_blocks(vocab, blocks, num_threads=None)
            fgram = (rows, lengths)
            torch.manual_seed(0)
            config = SconeLlamaConfig(**llama_config.to_diff_dict(), num_fgrams=vocab.num_fgrams,
                                      max_fgram_len=vocab.max_len, fgram_num_layers=layers, fgram_fusion=args.fusion,
                                      fgram_tokenizer_fingerprint=vocab.tokenizer_fingerprint)
            model = SconeLlamaForCausalLM(config)
            # same main-model initialisation as the base
            missing = model.load_state_dict(base_init_state(llama_config), strict=False)
            assert not [k for k in missing.missing_keys if "fgram" not in k], missing
            model.set_fgram_vocab(vocab)
            start = time.perf_counter()
            train(model, blocks, fgram, steps, args.batch, args.lr, seed=1)
            train_s = time.perf_counter() - start
            table_dir = export_fgram_table(model, out / f"scone_{args.fusion}_S{num_fgrams}_L{layers}",
                                                 show_progress=False)
            table_model = SconeLlamaForCausalLM.from_pretrained(table_dir).eval()
            ppl = {d: perplexity(table_model, b) for d, b in eval_blocks.items()}
            name = f"scone_{args.fusion}_S{num_fgrams}_L{layers}"
            results[name] = {"ppl": ppl, "num_fgrams": vocab.num_fgrams, "fgram_layers": layers,
                             "params_accelerator": sum(p.numel() for p in table_model.parameters()),
                             "params_training": sum(p.numel() for p in model.parameters()), "train_s": train_s,
                             "coverage": float((lengths > 0).mean())}
            print(f"{name}: {ppl} (train {train_s:.0f}s, coverage {results[name]['coverage']:.1%})")
    _report(results, out, args.fusion)


_BASE_INIT: dict = {}


def base_init_state(llama_config):
    """The base Llama's initial weights (seed 0), so SCONE's main model starts from the same point."""
    key = id(llama_config)
    if key not in _BASE_INIT:
        torch.manual_seed(0)
        _BASE_INIT[key] = LlamaForCausalLM(llama_config).state_dict()
    return _BASE_INIT[key]


def _report(results: dict, out: Path, fusion: str) -> None:
    with atomic_file(out / f"quality_scone_{fusion}.json", "w") as handle:
        json.dump(results, handle, indent=2)
    names = list(results)
    print("\n| model | " + " | ".join(DOMAINS) + " | mean | vs base |")
    print("|---|" + "---|" * (len(DOMAINS) + 2))
    base_mean = float(np.mean(list(results["base"]["ppl"].values())))
    for name in names:
        ppl = results[name]["ppl"]
        mean = float(np.mean(list(ppl.values())))
        print(f"| {name} | " + " | ".join(f"{ppl[d]:.2f}" for d in DOMAINS) +
              f" | {mean:.2f} | {100 * (mean / base_mean - 1):+.1f}% |")
    fig, axes = new_figure(1, 2, figsize=(9, 3.5))
    sweeps = [(k, v) for k, v in results.items() if k != "base"]
    min_layers = min(v["fgram_layers"] for _, v in sweeps) if sweeps else 1
    by_s = sorted((v["num_fgrams"], np.mean(list(v["ppl"].values()))) for _, v in sweeps
                  if v["fgram_layers"] == min_layers)
    if by_s:
        axes[0].plot([x for x, _ in by_s], [y for _, y in by_s], "o-", label="SconeLlama (table mode)")
    # depth axis: one line per S that was trained at more than one depth
    for num_fgrams in sorted({v["num_fgrams"] for _, v in sweeps}):
        by_l = sorted((v["fgram_layers"], np.mean(list(v["ppl"].values()))) for _, v in sweeps
                      if v["num_fgrams"] == num_fgrams)
        if len(by_l) > 1:
            axes[1].plot([x for x, _ in by_l], [y for _, y in by_l], "o-", label=f"SconeLlama, S = {num_fgrams:,}")
    for ax, label in ((axes[0], "number of f-grams S"), (axes[1], "f-gram model layers")):
        ax.axhline(base_mean, color="gray", ls="--", label="base Llama")
        ax.set_xlabel(label)
        ax.set_ylabel("mean held-out perplexity")
        ax.legend()
    axes[0].set_xscale("log")
    write_figure(fig, out / f"quality_scone_{fusion}.png", dpi=120)


if __name__ == "__main__":
    main()
