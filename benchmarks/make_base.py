"""Build the shared CPU baseline every family benchmark compares against.

A byte-level BPE tokenizer and a ~5M-parameter Llama (preset ``5m``) trained on all five domains of the corpus
(``$HFELM_CORPUS``, default ``../shared/corpus``) for a fixed, seeded token budget, then evaluated per domain on the
held-out files.
Written to ``$HFELM_CACHE/base`` (default ``~/.cache/hf_efficient_lm/base``), outside git; rerunning with the same
settings reuses it (``--force`` rebuilds). The figures land in ``base_metrics.json`` beside the model.

    python benchmarks/make_base.py                      # ~2M training tokens
    python benchmarks/make_base.py --train-tokens 200000 --out /tmp/base-small
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hf_efficient_lm.data import cache_dir, corpus_dir, iter_texts, load_text_dataset, train_tokenizer
from hf_efficient_lm.eval import evaluate_causal_lm
from hf_efficient_lm.io_utils import atomic_dir, atomic_file
from hf_efficient_lm.train import parse_pretrain_args, run_pretrain
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args

DOMAINS = ["pydocs", "kernel", "code", "dictionary", "fortunes"]


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, threads=torch.get_num_threads())
    parser.add_argument("--corpus", default=str(corpus_dir()), help="corpus folder (default: $HFELM_CORPUS or "
                        "../shared/corpus beside the checkout)")
    parser.add_argument("--out", default=str(cache_dir("base")), help="where the base model goes")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--preset", default="5m")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-tokens", type=int, default=2_000_000, help="training token budget")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--eval-documents", type=int, default=200, help="held-out documents per domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the output exists")
    args = parse_benchmark_args(parser, argv)

    out = Path(args.out)
    if (out / "base_metrics.json").exists() and not args.force:
        print(f"{out} already holds a base model:\n{(out / 'base_metrics.json').read_text()}")
        return
    corpus = Path(args.corpus)
    train_files = [str(corpus / f"{d}.train.jsonl.gz") for d in DOMAINS]
    work = out.with_name(out.name + ".work")
    started = time.perf_counter()

    tokenizer_dir = work / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        texts = load_text_dataset(train_files)
        tokenizer = train_tokenizer(iter_texts(texts), args.vocab_size)
        with atomic_dir(tokenizer_dir) as tmp:
            tokenizer.save_pretrained(tmp)
    tokenizer_seconds = time.perf_counter() - started

    pretrain_args, training_args = parse_pretrain_args([
        "--tokenizer", str(tokenizer_dir), "--data_files", *train_files, "--preset", args.preset,
        "--block_size", str(args.block_size), "--max_train_tokens", str(args.train_tokens),
        "--output_dir", str(work / "run"), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "cosine", "--warmup_steps", "20",
        "--weight_decay", "0.1", "--seed", str(args.seed), "--save_steps", "100", "--save_total_limit", "1",
        "--logging_steps", "25", "--dataloader_pin_memory", "false", "--use_cpu", "true",
    ])
    final = run_pretrain(pretrain_args, training_args)
    train_seconds = time.perf_counter() - started - tokenizer_seconds

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    per_domain = {}
    for domain in DOMAINS:
        valid = load_text_dataset(str(corpus / f"{domain}.valid.jsonl.gz"))
        texts = valid["text"][: args.eval_documents]
        per_domain[domain] = evaluate_causal_lm(model, tokenizer, texts, block_size=args.block_size).as_dict()
        print(f"{domain:>10}: perplexity {per_domain[domain]['perplexity']:.2f}  "
              f"bits/byte {per_domain[domain]['bits_per_byte']:.3f}")
    trained = json.loads((final / "pretrain_metrics.json").read_text())["train_tokens"]  # (>= the budget)
    metrics = {
        "preset": args.preset, "vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
        "token_budget": args.train_tokens, "train_tokens": trained, "block_size": args.block_size, "seed": args.seed,
        "tokenizer_seconds": round(tokenizer_seconds, 1), "train_seconds": round(train_seconds, 1),
        "train_tokens_per_second": round(trained / train_seconds, 1), "held_out": per_domain,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with atomic_file(tmp / "base_metrics.json", "w") as handle:
            json.dump(metrics, handle, indent=2)
    print(json.dumps({k: v for k, v in metrics.items() if k != "held_out"}, indent=2))
    print(f"base model written to {out}")


if __name__ == "__main__":
    main()
