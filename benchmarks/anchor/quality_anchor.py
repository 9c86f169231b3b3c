"""Quality at CPU scale: continual pre-training of a base Llama with anchors (EP and AC), then held-out perplexity and
few-shot multiple-choice accuracy with full attention and with anchor inference, against the base Llama.

Rows: the base Llama; each AnchorLlama before training (plain conversion, to show why AnLLM needs training) and after
``--steps`` of continual pre-training. Perplexity is per token of the held-out documents (AC: ``<AC>`` tokens are
excluded from the count so the numbers compare with the base); "anchor" = the AnSAN mask (identical to decoding
through the pruned cache), "full" = plain causal attention on the same weights. The MC task is the sentence
completion of ``hf_efficient_lm.tools.anchor_mcq`` (4 choices, 5 shots).

    python benchmarks/anchor/quality_anchor.py --base ~/.cache/hf_efficient_lm/base --steps 150
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, TrainingArguments

from bench_common_anchor import CACHE, CORPUS, corpus_texts  # noqa: E402

from hf_efficient_lm.anchor import encode_with_anchors  # noqa: E402
from hf_efficient_lm.eval import rows_nll  # noqa: E402
from hf_efficient_lm.tools.anchor_continual import (  # noqa: E402
    AnchorTrainArguments, build_anchor_model, run_anchor_training,
)
from hf_efficient_lm.tools.anchor_mcq import evaluate_multiple_choice, sentence_cloze_items  # noqa: E402
from hf_efficient_lm.anchor.modeling_anchor_llama import AnchorLlamaForCausalLM  # noqa: E402
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args  # noqa: E402


def perplexity(model, tokenizer, texts, mode: str, anchor_mode: str, max_length: int) -> float:
    """Token perplexity of one document per row; an inserted ``<AC>`` token is input only, never scored."""
    ac_id = model.config.anchor_token_ids[0] if anchor_mode == "ac" else None
    rows = [encode_with_anchors(tokenizer, text, anchor_mode, ac_id, max_length=max_length) for text in texts]

    def full_attention(ids, _rows):  # "full": AnchorLlama with no anchor, i.e. plain causal attention
        return {"anchor_flags": torch.zeros_like(ids, dtype=torch.bool)}

    model_inputs = full_attention if mode == "full" and isinstance(model, AnchorLlamaForCausalLM) else None
    ignore = () if ac_id is None else (ac_id,)
    return rows_nll(model, rows, batch_size=1, model_inputs=model_inputs, ignore_ids=ignore).perplexity


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--base", default=str(CACHE / "base"), help="base Llama checkpoint + tokenizer")
    parser.add_argument("--domain", default="pydocs", help="corpus domain for training and evaluation")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval-docs", type=int, default=40)
    parser.add_argument("--mc-items", type=int, default=100)
    parser.add_argument("--modes", nargs="+", default=["none", "ep", "ac"], choices=["none", "ep", "ac"],
                        help="'none' = the same continued pre-training without anchors (the causal baseline)")
    parser.add_argument("--output", default=str(CACHE / "anchor_quality"), help="checkpoints (outside git)")
    args = parse_benchmark_args(parser, argv)
    if not (Path(args.base) / "config.json").exists():
        sys.exit(f"no base checkpoint at {args.base} (run benchmarks/make_base.py)")

    tokenizer = AutoTokenizer.from_pretrained(args.base)
    held_out = corpus_texts(args.domain, "valid", args.eval_docs)
    mc_pool = sentence_cloze_items(corpus_texts("fortunes", "valid") + corpus_texts(args.domain, "valid"),
                                   args.mc_items + 5, seed=0)
    demos, items = mc_pool[:5], mc_pool[5:]
    rows = []

    base = LlamaForCausalLM.from_pretrained(args.base).eval()
    rows.append(("base Llama", "full", perplexity(base, tokenizer, held_out, "full", "ep", args.max_length), None,
                 None))
    del base

    train_file = CORPUS / f"{args.domain}.train.jsonl.gz"
    for anchor_mode in args.modes:
        train_args = AnchorTrainArguments(base_model=args.base, data_files=[str(train_file)], anchor_mode=anchor_mode,
                                          max_length=args.max_length)
        converted, tok = build_anchor_model(train_args)
        trained_dir = Path(args.output) / anchor_mode
        final = run_anchor_training(train_args, TrainingArguments(
            output_dir=str(trained_dir), max_steps=args.steps, per_device_train_batch_size=args.batch,
            learning_rate=args.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=10, logging_steps=25,
            save_steps=50, save_total_limit=1, report_to=[], use_cpu=not torch.cuda.is_available(),
        ))
        trained = AnchorLlamaForCausalLM.from_pretrained(final).eval()
        tok = AutoTokenizer.from_pretrained(final)
        if anchor_mode == "none":
            candidates, modes, data_mode = ((f"Llama +{args.steps} steps", trained),), ("full",), "ep"
        else:
            candidates = ((f"{anchor_mode.upper()} untrained", converted.eval()),
                          (f"{anchor_mode.upper()} +{args.steps} steps", trained))
            modes, data_mode = ("full", "anchor"), anchor_mode
        for label, model in candidates:
            for mode in modes:
                ppl = perplexity(model, tok, held_out, mode, data_mode, args.max_length)
                mc = evaluate_multiple_choice(model, tok, items, demos, mode=mode)
                rows.append((label, mode, ppl, mc["accuracy"], mc["kv_positions"]))

    # the base's MC accuracy: an AnchorLlama with no anchors is exactly the base Llama
    base_as_anchor = AnchorLlamaForCausalLM.from_pretrained(args.base, anchor_token_ids=[]).eval()
    base_mc = evaluate_multiple_choice(base_as_anchor, tokenizer, items, demos, mode="full")
    rows[0] = (*rows[0][:3], base_mc["accuracy"], base_mc["kv_positions"])

    print(f"\nQuality ({args.domain}, {args.eval_docs} held-out docs; MC: {len(items)} items, 4 choices, 5 shots; "
          f"{args.steps} steps x {args.batch} docs x {args.max_length} tokens)")
    print(f"{'model':22} {'attention':9} {'held-out ppl':>12} {'MC acc':>7} {'MC KV positions':>16}")
    for label, mode, ppl, acc, kv in rows:
        acc_s = f"{acc:7.3f}" if acc is not None else "      -"
        kv_s = f"{kv:16.1f}" if kv is not None else "               -"
        print(f"{label:22} {mode:9} {ppl:12.2f} {acc_s} {kv_s}")
    out = Path(args.output) / "quality_results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False) as handle:
        json.dump([dict(model=r[0], attention=r[1], ppl=r[2], mc_accuracy=r[3], mc_kv_positions=r[4]) for r in rows],
                  handle, indent=2)
    Path(handle.name).replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
