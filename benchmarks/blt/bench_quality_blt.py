"""Quality at CPU scale: BLT vs a token-level Llama baseline trained for the SAME training FLOPs.

In one process: (a) trains a small ``LlamaForCausalLM`` (``llama_config_from_preset``, the shared 4096-token BPE at
~/.cache/hf_efficient_lm/base) and (b) a small ``BLTForCausalLM`` (layout and data pipeline of
``examples/train_blt.py``: trained entropy model, threshold calibrated to ``--target-patch-size``, patch lengths
precomputed as a dataset column) on the same uniform mixture of the five ``*.train.jsonl.gz`` domains, with the same
Trainer settings, each for the same training-FLOPs budget; (c) evaluates bits per byte per domain on the first
``--eval-docs`` documents of each ``*.valid.jsonl.gz`` — Llama with ``hf_efficient_lm.eval.evaluate_causal_lm``, BLT
with its own next-byte NLL under in-forward entropy patching (the inference path); both predict every document byte
plus one EOS per document and divide by the same UTF-8 byte count; (d) prints inference FLOPs per byte of each.

FLOPs accounting (``hf_efficient_lm/tools/blt_flops.py``, 2 FLOPs per multiply-add, training = 3x forward):
Llama training = 3 * ``llama_flops_per_token`` * tokens (6 * N * tokens printed too); BLT training =
3 * (``blt_flops_per_byte`` - entropy model) * bytes (patch lengths precomputed, as in ``examples/train_blt.py``; the
entropy model's own pretraining is not counted). The budget is either ``--budget-flops`` or chosen from
``--train-minutes`` by timing a few forward+backward steps of each model first.

    nice -n 10 python benchmarks/blt/bench_quality_blt.py --train-minutes 14

Checkpoints are cached under $HFELM_CACHE/blt_quality/ (``--reuse`` loads them when the budget and
configs match); writes ``results/quality_blt.json`` (gitignored) and ``results/quality_blt.png``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_efficient_lm.blt import BLTEntropyModel, BLTForCausalLM
from hf_efficient_lm.tools.blt_data import (
    BLTDataCollator,
    add_patch_lengths_column,
    calibrate_threshold,
    pack_texts,
)
from hf_efficient_lm.tools.blt_flops import blt_flops_per_byte, llama_flops_per_token
from hf_efficient_lm.data import CORPUS_DOMAINS as DOMAINS
from hf_efficient_lm.data import cache_dir, corpus_texts, pack_ids
from hf_efficient_lm.eval import evaluate_causal_lm, rows_nll
from hf_efficient_lm.tools.blt_training import DEFAULT_ENTROPY_MODEL, add_blt_size_options, blt_size_config
from hf_efficient_lm.train import llama_config_from_preset
from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure
from hf_efficient_lm.io_utils import atomic_file

HERE = Path(__file__).resolve().parent

CACHE = cache_dir("blt_quality")


# ----------------------------------------------------------------------------------------------------------- data
def mixed_train_texts(chars_per_domain: int) -> dict[str, list[str]]:
    """First ``chars_per_domain`` characters (whole documents) of each domain's train split."""
    return {domain: corpus_texts(domain, "train", limit_chars=chars_per_domain) for domain in DOMAINS}


def llama_rows(tokenizer, texts_by_domain, seq_len: int) -> list[list[int]]:
    """Per domain ``doc EOS doc EOS ...`` token streams cut into ``seq_len`` rows (the pack_dataset protocol)."""
    rows = []
    for texts in texts_by_domain.values():
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        rows.extend(pack_ids(encoded, seq_len, separator=tokenizer.eos_token_id).tolist())
    return rows


def blt_rows(texts_by_domain, seq_len: int) -> list[list[int]]:
    rows = []
    for texts in texts_by_domain.values():
        rows.extend(pack_texts(texts, seq_len))
    return rows


def pick_rows(rows: list[list[int]], n: int, seed: int) -> list[list[int]]:
    if n > len(rows):
        raise SystemExit(f"need {n} training rows but only {len(rows)} were built; raise --chars-per-domain")
    rng = random.Random(seed)
    return rng.sample(rows, n)


# ----------------------------------------------------------------------------------------------------- training
def training_args(out_dir: Path, steps: int, batch: int, lr: float, seed: int):
    from transformers import TrainingArguments

    return TrainingArguments(  # the settings of examples/train_blt.py, for both models
        output_dir=str(out_dir / "trainer"), max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        warmup_steps=min(50, steps // 10), lr_scheduler_type="cosine", weight_decay=0.1, max_grad_norm=1.0,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=seed, disable_tqdm=False,
    )


def time_steps(model, batch: dict, n: int) -> float:
    """Seconds per forward+backward step (after one warm-up step); gradients are discarded, weights unchanged."""
    model.train()
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        model(**batch).loss.backward()
        if i:
            times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2] * 1.15  # + optimizer step and Trainer overhead


# --------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def blt_bits_per_byte(model, texts: list[str], seq_len: int, batch_size: int = 8) -> dict:
    """Next-byte NLL with in-forward patching over ``BOS doc EOS doc EOS ...`` rows of ``seq_len`` (every byte and
    every EOS predicted once); bits/byte = NLL / ln 2 / UTF-8 bytes of the documents. Also the mean patch size."""
    rows = pack_texts(texts, seq_len, drop_remainder=False)
    total = rows_nll(model, rows, batch_size=batch_size)
    nats, predicted = total.nats, total.tokens
    bytes_in = sum(len(row) - 1 for row in rows)
    patches = 0
    for row in tqdm(rows, desc="BLT patches", unit="row", leave=False):
        ids = torch.tensor([row])
        patches += int(model.model(input_ids=ids, use_cache=False).patch_starts[:, : ids.shape[1]].sum())
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert predicted == num_bytes + len(texts), (predicted, num_bytes, len(texts))
    return dict(bits_per_byte=nats / math.log(2) / num_bytes, bytes=num_bytes, documents=len(texts),
                predicted=predicted, mean_patch_size=(bytes_in + len(rows)) / patches)


# --------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    parser = benchmark_parser(__doc__, threads=2)
    parser.add_argument("--tokenizer", default=str(cache_dir("base")))
    parser.add_argument("--entropy-model", default=DEFAULT_ENTROPY_MODEL)
    parser.add_argument("--preset", default="1m", help="Llama preset (hf_efficient_lm.train.LLAMA_PRESETS)")
    parser.add_argument("--llama-seq-len", type=int, default=128, help="tokens per training row / eval window")
    parser.add_argument("--llama-batch", type=int, default=16)
    parser.add_argument("--blt-seq-len", type=int, default=512, help="bytes per training row / eval row")
    parser.add_argument("--blt-batch", type=int, default=8)
    add_blt_size_options(parser)  # the sizes of `hf-efficient-lm train-blt`
    parser.add_argument("--target-patch-size", type=float, default=4.5)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--budget-flops", type=float, default=None, help="training FLOPs of each model")
    parser.add_argument("--train-minutes", type=float, default=14.0,
                        help="without --budget-flops: total training wall time to size the budget for (both models)")
    parser.add_argument("--probe-steps", type=int, default=3)
    parser.add_argument("--chars-per-domain", type=int, default=0, help="train text per domain (0: sized to the budget)")
    parser.add_argument("--eval-docs", type=int, default=50, help="first N documents of each *.valid.jsonl.gz")
    parser.add_argument("--reuse", action="store_true", help="load cached checkpoints trained with the same settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    args = parse_benchmark_args(parser, argv)
    t_start = time.perf_counter()

    from transformers import AutoTokenizer, LlamaForCausalLM, Trainer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if not os.path.isfile(os.path.join(args.entropy_model, "config.json")):
        parser.error(f"no entropy model at {args.entropy_model}; run `hf-efficient-lm train-entropy` first")
    entropy_model = BLTEntropyModel.from_pretrained(args.entropy_model).eval()

    # ---- models and per-unit FLOPs
    torch.manual_seed(args.seed)
    llama_config = llama_config_from_preset(args.preset, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                            use_cache=False)
    llama = LlamaForCausalLM(llama_config)
    llama_fpt = llama_flops_per_token(llama_config, args.llama_seq_len)  # forward FLOPs per token
    llama_n = sum(p.numel() for p in llama.parameters()) - llama.model.embed_tokens.weight.numel()

    calib_texts = mixed_train_texts(60_000)
    calib = torch.tensor(blt_rows(calib_texts, args.blt_seq_len)[::4][:32])
    with torch.no_grad():
        entropies, _ = entropy_model.entropies(calib)
    threshold = calibrate_threshold(entropies, args.target_patch_size)
    blt_config = blt_size_config(args, entropy_model, threshold, "entropy")
    torch.manual_seed(args.seed)
    blt = BLTForCausalLM(blt_config)
    blt.model.entropy_model.load_state_dict(entropy_model.state_dict())
    blt.model.freeze_entropy_model()
    blt_trainable = sum(p.numel() for p in blt.parameters() if p.requires_grad)
    calib_lengths = add_patch_lengths_column(
        __import__("datasets").Dataset.from_dict({"input_ids": calib.tolist()}), entropy_model, "entropy", threshold)
    train_patch = calib.numel() / sum(len(p) for p in calib_lengths["patch_lengths"])
    blt_train_fpb = blt_flops_per_byte(blt_config, train_patch, args.blt_seq_len)
    blt_train_fpb_no_ent = blt_train_fpb["total"] - blt_train_fpb["entropy_model"]
    print(f"Llama ({args.preset}): {sum(p.numel() for p in llama.parameters()) / 1e6:.2f}M params "
          f"({llama_n / 1e6:.2f}M without the input embedding), forward {llama_fpt / 1e6:.2f}M FLOPs/token at context "
          f"{args.llama_seq_len}")
    print(f"BLT: {blt_trainable / 1e6:.2f}M trainable params, threshold {threshold:.3f} -> {train_patch:.2f} bytes/patch "
          f"on train rows, forward {blt_train_fpb['total'] / 1e6:.2f}M FLOPs/byte "
          f"({blt_train_fpb_no_ent / 1e6:.2f}M without the entropy model)")

    llama_step_flops = 3 * llama_fpt * args.llama_batch * args.llama_seq_len
    blt_step_flops = 3 * blt_train_fpb_no_ent * args.blt_batch * args.blt_seq_len

    # ---- budget
    probe = {}
    if args.budget_flops is None:
        ids = torch.randint(5, len(tokenizer), (args.llama_batch, args.llama_seq_len))
        sec_llama = time_steps(llama, dict(input_ids=ids, labels=ids), args.probe_steps)
        probe_batch = BLTDataCollator()([{"input_ids": r, "patch_lengths": p} for r, p in zip(
            calib_lengths["input_ids"][: args.blt_batch], calib_lengths["patch_lengths"][: args.blt_batch])])
        sec_blt = time_steps(blt, probe_batch, args.probe_steps)
        rate_llama, rate_blt = llama_step_flops / sec_llama, blt_step_flops / sec_blt
        budget = args.train_minutes * 60 / (1 / rate_llama + 1 / rate_blt)
        probe = dict(sec_per_step_llama=sec_llama, sec_per_step_blt=sec_blt, flops_per_s_llama=rate_llama,
                     flops_per_s_blt=rate_blt)
        print(f"probe: Llama {sec_llama:.2f} s/step ({rate_llama / 1e9:.2f} GFLOP/s), BLT {sec_blt:.2f} s/step "
              f"({rate_blt / 1e9:.2f} GFLOP/s) -> budget {budget:.3e} training FLOPs each for ~{args.train_minutes} min")
    else:
        budget = args.budget_flops
    llama_steps = max(1, round(budget / llama_step_flops))
    blt_steps = max(1, round(budget / blt_step_flops))
    llama_flops = llama_steps * llama_step_flops
    blt_flops = blt_steps * blt_step_flops
    llama_tokens = llama_steps * args.llama_batch * args.llama_seq_len
    blt_bytes = blt_steps * args.blt_batch * args.blt_seq_len
    print(f"budget {budget:.3e}: Llama {llama_steps} steps x {args.llama_batch} x {args.llama_seq_len} tokens, "
          f"BLT {blt_steps} steps x {args.blt_batch} x {args.blt_seq_len} bytes")

    # ---- data: a uniform mixture of the five train domains, the same texts for both models
    sample_bpt = sum(len(t.encode()) for ts in calib_texts.values() for t in ts) / sum(
        len(x) + 1 for x in tokenizer([t for ts in calib_texts.values() for t in ts], add_special_tokens=False)["input_ids"])
    need_bytes = max(llama_tokens * sample_bpt, blt_bytes)
    chars = args.chars_per_domain or int(need_bytes / len(DOMAINS) * 1.3) + 20_000
    texts = mixed_train_texts(chars)
    print(f"train text: {sum(len(t) for ts in texts.values() for t in ts) / 1e6:.2f}M chars "
          f"({', '.join(f'{d} {sum(len(t) for t in ts) / 1e6:.2f}M' for d, ts in texts.items())})")

    tag = (f"{args.preset}_s{args.llama_seq_len}_b{args.llama_batch}_n{llama_steps}__blt{args.local_hidden}-"
           f"{args.latent_hidden}x{args.latent_layers}-d{args.decoder_layers}_s{args.blt_seq_len}_b{args.blt_batch}_"
           f"n{blt_steps}_p{args.target_patch_size}_lr{args.learning_rate}_seed{args.seed}")
    ckpt = CACHE / tag
    from datasets import Dataset

    wall = {}
    # ---- (a) Llama
    if args.reuse and (ckpt / "llama" / "config.json").exists():
        llama = LlamaForCausalLM.from_pretrained(ckpt / "llama")
        print(f"loaded cached Llama from {ckpt / 'llama'}")
    else:
        rows = pick_rows(llama_rows(tokenizer, texts, args.llama_seq_len), llama_steps * args.llama_batch, args.seed)
        data = Dataset.from_dict({"input_ids": rows, "labels": rows})
        t0 = time.perf_counter()
        Trainer(model=llama, args=training_args(ckpt / "llama", llama_steps, args.llama_batch, args.learning_rate,
                                                args.seed), train_dataset=data).train()
        wall["train_llama_s"] = time.perf_counter() - t0
        llama.save_pretrained(ckpt / "llama")
        tokenizer.save_pretrained(ckpt / "llama")
    # ---- (b) BLT
    if args.reuse and (ckpt / "blt" / "config.json").exists():
        blt = BLTForCausalLM.from_pretrained(ckpt / "blt")
        print(f"loaded cached BLT from {ckpt / 'blt'}")
    else:
        rows = pick_rows(blt_rows(texts, args.blt_seq_len), blt_steps * args.blt_batch, args.seed)
        data = add_patch_lengths_column(Dataset.from_dict({"input_ids": rows}), entropy_model, "entropy", threshold)
        t0 = time.perf_counter()
        Trainer(model=blt, args=training_args(ckpt / "blt", blt_steps, args.blt_batch, args.learning_rate, args.seed),
                train_dataset=data, data_collator=BLTDataCollator()).train()
        wall["train_blt_s"] = time.perf_counter() - t0
        blt.save_pretrained(ckpt / "blt")

    # ---- (c) bits per byte per domain, (d) inference FLOPs per byte
    results = {}
    t0 = time.perf_counter()
    for domain in DOMAINS:
        docs = [t for t in corpus_texts(domain, "valid", limit=args.eval_docs) if t]
        ev = evaluate_causal_lm(llama, tokenizer, docs, block_size=args.llama_seq_len, batch_size=16,
                                show_progress=False)
        bev = blt_bits_per_byte(blt, docs, args.blt_seq_len)
        assert bev["bytes"] == ev.bytes
        llama_fpb = llama_fpt * ev.tokens / ev.bytes
        blt_fpb = blt_flops_per_byte(blt_config, bev["mean_patch_size"], args.blt_seq_len)
        results[domain] = dict(
            documents=len(docs), bytes=ev.bytes, llama_bits_per_byte=ev.bits_per_byte, blt_bits_per_byte=bev["bits_per_byte"],
            llama_tokens=ev.tokens, llama_bytes_per_token=ev.bytes / ev.tokens, blt_bytes_per_patch=bev["mean_patch_size"],
            llama_inference_flops_per_byte=llama_fpb, blt_inference_flops_per_byte=blt_fpb["total"],
            blt_inference_flops_per_byte_parts=blt_fpb,
        )
        print(f"{domain}: Llama {ev.bits_per_byte:.3f}, BLT {bev['bits_per_byte']:.3f} bits/byte ({ev.bytes} bytes)")
    wall["eval_s"] = time.perf_counter() - t0
    total_bytes = sum(r["bytes"] for r in results.values())
    overall = {k: sum(r[k] * r["bytes"] for r in results.values()) / total_bytes
               for k in ("llama_bits_per_byte", "blt_bits_per_byte", "llama_inference_flops_per_byte",
                         "blt_inference_flops_per_byte")}
    wall["total_s"] = time.perf_counter() - t_start

    # ---- table
    print()
    print(f"equal training FLOPs: Llama {llama_flops:.3e} (3 x {llama_fpt / 1e6:.2f}M FLOPs/token x "
          f"{llama_tokens / 1e6:.2f}M tokens; 6*N*D with N={llama_n / 1e6:.2f}M without the input embedding: "
          f"{6 * llama_n * llama_tokens:.3e}), BLT {blt_flops:.3e} (3 x {blt_train_fpb_no_ent / 1e6:.2f}M FLOPs/byte x "
          f"{blt_bytes / 1e6:.2f}M bytes); ratio BLT/Llama {blt_flops / llama_flops:.3f}")
    print(f"training bytes seen: Llama ~{llama_tokens * sample_bpt / 1e6:.2f}M ({sample_bpt:.2f} bytes/token), "
          f"BLT {blt_bytes / 1e6:.2f}M")
    header = ("| domain | docs | bytes | Llama bits/byte | BLT bits/byte | BLT/Llama | Llama inf. FLOPs/byte | "
              "BLT inf. FLOPs/byte | BLT/Llama | bytes/token | bytes/patch |")
    lines = [header, "|" + "---|" * 11]
    for d, r in list(results.items()) + [("all (byte-weighted)", dict(overall, documents=sum(
            r["documents"] for r in results.values()), bytes=total_bytes, llama_bytes_per_token=total_bytes / sum(
            r["llama_tokens"] for r in results.values()), blt_bytes_per_patch=total_bytes / sum(
            r["bytes"] / r["blt_bytes_per_patch"] for r in results.values())))]:
        lines.append(
            f"| {d} | {r['documents']} | {r['bytes']} | {r['llama_bits_per_byte']:.3f} | {r['blt_bits_per_byte']:.3f} | "
            f"{r['blt_bits_per_byte'] / r['llama_bits_per_byte']:.3f} | {r['llama_inference_flops_per_byte'] / 1e6:.2f}M | "
            f"{r['blt_inference_flops_per_byte'] / 1e6:.2f}M | "
            f"{r['blt_inference_flops_per_byte'] / r['llama_inference_flops_per_byte']:.2f} | "
            f"{r['llama_bytes_per_token']:.2f} | {r['blt_bytes_per_patch']:.2f} |")
    print("\n".join(lines))
    print("wall: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()))

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(
        args=vars(args), checkpoint=str(ckpt), budget_flops=budget, probe=probe,
        llama=dict(preset=args.preset, params=sum(p.numel() for p in llama.parameters()), non_embedding_params=llama_n,
                   steps=llama_steps, tokens=llama_tokens, training_flops=llama_flops,
                   training_flops_6ND=6 * llama_n * llama_tokens, forward_flops_per_token=llama_fpt),
        blt=dict(trainable_params=blt_trainable, threshold=threshold, train_bytes_per_patch=train_patch, steps=blt_steps,
                 bytes=blt_bytes, training_flops=blt_flops, forward_flops_per_byte=blt_train_fpb),
        results=results, overall=overall, table="\n".join(lines), wall_s=wall,
    )
    with atomic_file(out_dir / "quality_blt.json", "w") as handle:
        json.dump(payload, handle, indent=2)

    names = list(results) + ["all"]
    lv = [results[d]["llama_bits_per_byte"] for d in results] + [overall["llama_bits_per_byte"]]
    bv = [results[d]["blt_bits_per_byte"] for d in results] + [overall["blt_bits_per_byte"]]
    x = range(len(names))
    fig, ax = new_figure(figsize=(8, 4))
    ax.bar([i - 0.2 for i in x], lv, 0.4, label=f"Llama {args.preset} ({overall['llama_inference_flops_per_byte'] / 1e6:.2f}M FLOPs/byte)")
    ax.bar([i + 0.2 for i in x], bv, 0.4, label=f"BLT ({overall['blt_inference_flops_per_byte'] / 1e6:.2f}M FLOPs/byte)")
    for i, (a, b) in enumerate(zip(lv, bv)):
        ax.text(i - 0.2, a, f"{a:.2f}", ha="center", va="bottom", fontsize=7)
        ax.text(i + 0.2, b, f"{b:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.set_title(f"equal training FLOPs ({llama_flops:.2e} Llama / {blt_flops:.2e} BLT), first {args.eval_docs} docs/domain",
                 fontsize=9)
    ax.legend(fontsize=8)
    write_figure(fig, out_dir / "quality_blt.png", dpi=110)
    print(f"wrote {out_dir / 'quality_blt.json'}; checkpoints in {ckpt}")


if __name__ == "__main__":
    main()
