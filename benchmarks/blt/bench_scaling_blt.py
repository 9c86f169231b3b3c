"""FLOP-matched scaling trend at CPU scale: three sizes of BLT vs a token-level Llama (BPE 4096) at equal training
FLOPs, bits/byte per corpus domain, several seeds; plus BLT with larger patches (~6 and ~8 bytes) at the inference
FLOPs per byte of the ~4.5-byte BLT of the largest size.

Stages (``--stage all`` runs them in order; every stage is cached, so a rerun only does what is missing):
  prep    a byte-level BPE with 4096 ids (``hf_efficient_lm.data.train_tokenizer``) and a small entropy model, both on
          the first ``--train-chars`` characters of each domain's ``*.train.jsonl.gz``; entropy thresholds calibrated
          (bisection) to 4.5, 6 and 8 bytes per patch on 32 training rows.
  runs    for each size k the pair (Llama ``LLAMA_PRESETS[--llama-presets[k]]``, BLT ``BLT_PRESETS[--blt-presets[k]]``)
          gets the training budget C_k = 3 x Llama forward FLOPs/token x ``--tokens[k]``; the BLT trains on as many
          bytes as C_k buys at its own training FLOPs/byte (patch lengths precomputed, entropy model not counted, as
          in ``examples/train_blt.py``). The patch-size runs (``--patch-presets`` at ``--patch-sizes``) get the
          budget of the last size. Each (run, seed) is one subprocess (``--jobs`` at a time, ``--threads`` torch threads each).
  report  bits/byte per domain on the first ``--eval-chars`` characters of each ``*.valid.jsonl.gz`` (whole
          documents; Llama: ``evaluate_causal_lm`` with windows of ``--llama-seq-len`` tokens; BLT: in-forward
          entropy patching over packed rows of ``--blt-seq-len`` bytes; both predict every byte / token plus one EOS
          per document and divide by the same UTF-8 bytes), mean +- std over seeds, the gap BLT - Llama per size,
          ``results/scaling_blt.{json,md,png}``.

Both models: AdamW, lr ``--learning-rate``, cosine, 10% warmup, weight decay 0.1, clip 1.0; the same pool of training
text (a uniform mixture of the five domains); the seed sets the init and which rows are drawn.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/blt/bench_scaling_blt.py --stage all --jobs 2

Checkpoints and per-run results go to ~/.cache/hf_efficient_lm/bltexp/ (``--cache``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hf_efficient_lm.data import CORPUS_DOMAINS as DOMAINS
from hf_efficient_lm.data import cache_dir, corpus_texts, pack_ids, train_tokenizer
from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure
from hf_efficient_lm.io_utils import atomic_file

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------------- args
def parse_args(argv=None) -> argparse.Namespace:
    p = benchmark_parser(__doc__)  # --threads: each training subprocess's torch threads (default 1)
    p.add_argument("--stage", choices=["all", "prep", "runs", "run", "report"], default="all")
    p.add_argument("--cache", default=str(cache_dir("bltexp")))
    p.add_argument("--llama-presets", nargs="+", default=["200k", "450k", "1m"])
    p.add_argument("--blt-presets", nargs="+", default=["scale-64", "scale-96", "scale-128"])
    p.add_argument("--tokens", nargs="+", type=int, default=[60_000, 90_000, 120_000],
                   help="Llama training tokens per size; sets each size's training-FLOPs budget")
    p.add_argument("--patch-presets", nargs="*", default=["scale-128-ps6", "scale-128-ps8"])
    p.add_argument("--patch-sizes", nargs="*", type=float, default=[6.0, 8.0])
    p.add_argument("--target-patch-size", type=float, default=4.5, help="patch size of the scaling ladder's BLTs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=3, help="training subprocesses at a time (--threads each)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--train-chars", type=int, default=160_000, help="training text per domain (the shared pool)")
    p.add_argument("--entropy-hidden", type=int, default=64)
    p.add_argument("--entropy-layers", type=int, default=2)
    p.add_argument("--entropy-steps", type=int, default=150)
    p.add_argument("--llama-seq-len", type=int, default=160, help="tokens per row (~500 bytes, the BLT row)")
    p.add_argument("--llama-batch", type=int, default=8)
    p.add_argument("--blt-seq-len", type=int, default=512, help="bytes per row")
    p.add_argument("--blt-batch", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--eval-chars", type=int, default=10_000, help="validation characters per domain (whole docs)")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    # --stage run (one training run; what --stage runs starts as subprocesses)
    p.add_argument("--run-name", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = parse_benchmark_args(p, argv)
    if not (len(args.llama_presets) == len(args.blt_presets) == len(args.tokens)):
        p.error("--llama-presets, --blt-presets and --tokens need one value per size")
    if len(args.patch_presets) != len(args.patch_sizes):
        p.error("--patch-presets and --patch-sizes need one value per patch-size run")
    if args.stage == "run" and args.run_name not in run_table(args):
        p.error(f"--stage run needs --run-name, one of {sorted(run_table(args))}; got {args.run_name!r}")
    return args


def run_table(args) -> dict[str, dict]:
    """name -> {kind, preset, budget size index, target patch size}."""
    runs = {}
    for k, (lp, bp) in enumerate(zip(args.llama_presets, args.blt_presets)):
        runs[f"llama-{lp}"] = dict(kind="llama", preset=lp, size=k)
        runs[f"blt-{bp}"] = dict(kind="blt", preset=bp, size=k, patch=args.target_patch_size)
    for bp, ps in zip(args.patch_presets, args.patch_sizes):
        runs[f"blt-{bp}"] = dict(kind="blt", preset=bp, size=len(args.tokens) - 1, patch=ps)
    return runs


# ---------------------------------------------------------------------------------------------------------- data
def train_pool(chars: int) -> dict[str, list[str]]:
    return {d: corpus_texts(d, "train", limit_chars=chars) for d in DOMAINS}


def eval_docs(chars: int) -> dict[str, list[str]]:
    return {d: [t for t in corpus_texts(d, "valid", limit_chars=chars) if t] for d in DOMAINS}


# ---------------------------------------------------------------------------------------------------------- prep
def prep(args) -> dict:
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from hf_efficient_lm.blt import BLTEntropyConfig, BLTEntropyModel
    from hf_efficient_lm.tools.blt_data import BLTDataCollator, byte_dataset, calibrate_threshold, pack_texts

    cache = Path(args.cache)
    done = cache / "prep.json"
    if done.exists():
        return json.loads(done.read_text())
    pool = train_pool(args.train_chars)
    texts = [t for d in DOMAINS for t in pool[d]]
    tok_dir = cache / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(([t] for t in texts), args.vocab_size, show_progress=False)
        tokenizer.save_pretrained(tok_dir)
        print(f"tokenizer: {len(tokenizer)} ids in {time.perf_counter() - t0:.0f}s -> {tok_dir}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    ent_dir = cache / "entropy"
    if not (ent_dir / "config.json").exists():
        torch.manual_seed(0)
        model = BLTEntropyModel(BLTEntropyConfig(
            hidden_size=args.entropy_hidden, num_hidden_layers=args.entropy_layers, num_attention_heads=4,
            intermediate_size=int(8 * args.entropy_hidden / 3), sliding_window=256, max_position_embeddings=8192))
        rows = byte_dataset(texts, 256).shuffle(seed=0)
        t0 = time.perf_counter()
        Trainer(model=model, train_dataset=rows, data_collator=BLTDataCollator(), args=TrainingArguments(
            output_dir=str(cache / "trainer-entropy"), max_steps=args.entropy_steps, per_device_train_batch_size=16,
            learning_rate=2e-3, warmup_steps=args.entropy_steps // 10, lr_scheduler_type="cosine", weight_decay=0.1,
            logging_steps=max(1, args.entropy_steps // 10), save_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0, seed=0, disable_tqdm=True)).train()
        model.save_pretrained(ent_dir)
        print(f"entropy model trained in {time.perf_counter() - t0:.0f}s -> {ent_dir}", flush=True)
    entropy_model = BLTEntropyModel.from_pretrained(ent_dir).eval()
    calib = torch.tensor([r for d in DOMAINS for r in pack_texts(pool[d], args.blt_seq_len)[:8]][:40])
    with torch.no_grad():
        entropies, _ = entropy_model.entropies(calib)
    sizes = sorted({args.target_patch_size, *args.patch_sizes})
    thresholds = {str(ps): calibrate_threshold(entropies, ps) for ps in sizes}
    ids = tokenizer([t for d in DOMAINS for t in pool[d][:50]], add_special_tokens=False)["input_ids"]
    sample = [t for d in DOMAINS for t in pool[d][:50]]
    bytes_per_token = sum(len(t.encode()) for t in sample) / sum(len(x) for x in ids)
    info = dict(tokenizer=str(tok_dir), vocab_size=len(tokenizer), entropy_model=str(ent_dir),
                entropy_params=sum(p.numel() for p in entropy_model.parameters()), thresholds=thresholds,
                bytes_per_token=bytes_per_token, train_chars_per_domain=args.train_chars)
    with atomic_file(done, "w") as f:
        f.write(json.dumps(info, indent=2))
    print(f"prep: {json.dumps(info)}", flush=True)
    return info


# ---------------------------------------------------------------------------------------------------------- runs
def training_args(out_dir: Path, steps: int, batch: int, lr: float, seed: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir / "trainer"), max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
        warmup_steps=max(1, steps // 10), lr_scheduler_type="cosine", weight_decay=0.1, max_grad_norm=1.0,
        logging_steps=max(1, steps // 5), save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        seed=seed, disable_tqdm=True,
    )


def llama_budget(args, tokenizer, size: int) -> tuple[float, float]:
    """(budget training FLOPs, Llama forward FLOPs per token) of size index ``size``."""
    from hf_efficient_lm.tools.blt_flops import llama_flops_per_token
    from hf_efficient_lm.train import llama_config_from_preset

    cfg = llama_config_from_preset(args.llama_presets[size], vocab_size=len(tokenizer))
    fpt = llama_flops_per_token(cfg, args.llama_seq_len)
    return 3 * fpt * args.tokens[size], fpt


@torch.no_grad()
def blt_eval(model, docs: list[str], seq_len: int) -> dict:
    """Bits/byte with in-forward patching over ``BOS doc EOS doc EOS ...`` rows of ``seq_len`` (every byte and every
    EOS predicted once; divided by the documents' UTF-8 bytes) and the mean patch size."""
    from hf_efficient_lm.tools.blt_data import pack_texts

    rows = pack_texts(docs, seq_len, drop_remainder=False)
    nats, predicted, patches, slots = 0.0, 0, 0, 0
    model.eval()
    full = rows[:-1]  # all rows but the last hold seq_len ids; the last may be shorter, so it runs alone
    for batch in [full[i : i + 8] for i in range(0, len(full), 8)] + [rows[-1:]]:
        ids = torch.tensor(batch)
        out = model.model(input_ids=ids, use_cache=False)
        logits = model.lm_head(out.last_hidden_state).float()
        nats += float(torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="sum"))
        predicted += ids[:, 1:].numel()
        patches += int(out.patch_starts[:, : ids.shape[1]].sum())
        slots += ids.numel()
    num_bytes = sum(len(t.encode("utf-8")) for t in docs)
    if predicted != num_bytes + len(docs):
        raise RuntimeError(f"predicted {predicted} ids, expected {num_bytes} bytes + {len(docs)} EOS")
    return dict(bits_per_byte=nats / math.log(2) / num_bytes, bytes=num_bytes, mean_patch_size=slots / patches)


def one_run(args) -> None:
    """Train and evaluate one (run, seed); writes <cache>/runs/<name>-seed<seed>/result.json."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, Trainer

    from hf_efficient_lm.blt import BLTEntropyModel, BLTForCausalLM
    from hf_efficient_lm.eval import evaluate_causal_lm
    from hf_efficient_lm.tools.blt_data import BLTDataCollator, add_patch_lengths_column, pack_texts
    from hf_efficient_lm.tools.blt_flops import blt_flops_per_byte, llama_flops_per_token
    from hf_efficient_lm.train import blt_config_for, llama_config_from_preset

    info = json.loads((Path(args.cache) / "prep.json").read_text())
    spec = run_table(args)[args.run_name]
    out = Path(args.cache) / "runs" / f"{args.run_name}-seed{args.seed}"
    if (out / "result.json").exists():
        return
    tokenizer = AutoTokenizer.from_pretrained(info["tokenizer"])
    budget, _ = llama_budget(args, tokenizer, spec["size"])
    pool = train_pool(args.train_chars)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    res = dict(name=args.run_name, seed=args.seed, budget_flops=budget, **spec)
    if spec["kind"] == "llama":
        cfg = llama_config_from_preset(spec["preset"], vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                       use_cache=False)
        model = LlamaForCausalLM(cfg)
        fpt = llama_flops_per_token(cfg, args.llama_seq_len)
        step_flops = 3 * fpt * args.llama_batch * args.llama_seq_len
        steps = max(1, round(budget / step_flops))
        rows = []
        for d in DOMAINS:
            enc = tokenizer(pool[d], add_special_tokens=False, verbose=False)["input_ids"]
            rows.extend(pack_ids(enc, args.llama_seq_len, separator=tokenizer.eos_token_id).tolist())
        need = steps * args.llama_batch
        if need > len(rows):
            raise SystemExit(f"{args.run_name}: needs {need} rows, the pool gives {len(rows)}; raise --train-chars")
        rows = rng.sample(rows, need)
        data = Dataset.from_dict({"input_ids": rows, "labels": rows})
        Trainer(model=model, args=training_args(out, steps, args.llama_batch, args.learning_rate, args.seed),
                train_dataset=data).train()
        res.update(params=sum(p.numel() for p in model.parameters()),
                   non_embedding_params=sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel(),
                   steps=steps, train_tokens=steps * args.llama_batch * args.llama_seq_len,
                   training_flops=steps * step_flops, forward_flops_per_token=fpt)
    else:
        entropy_model = BLTEntropyModel.from_pretrained(info["entropy_model"]).eval()
        threshold = info["thresholds"][str(spec["patch"])]
        cfg = blt_config_for(entropy_model, preset=spec["preset"], threshold=threshold, mode="entropy")
        model = BLTForCausalLM(cfg)
        model.model.entropy_model.load_state_dict(entropy_model.state_dict())
        model.model.freeze_entropy_model()
        rows = [r for d in DOMAINS for r in pack_texts(pool[d], args.blt_seq_len)]
        calib = Dataset.from_dict({"input_ids": rows[:: max(1, len(rows) // 48)][:48]})
        calib = add_patch_lengths_column(calib, entropy_model, "entropy", threshold)
        train_patch = sum(len(r) for r in calib["input_ids"]) / sum(len(p) for p in calib["patch_lengths"])
        fpb = blt_flops_per_byte(cfg, train_patch, args.blt_seq_len)
        fpb_train = fpb["total"] - fpb["entropy_model"]
        step_flops = 3 * fpb_train * args.blt_batch * args.blt_seq_len
        steps = max(1, round(budget / step_flops))
        need = steps * args.blt_batch
        if need > len(rows):
            raise SystemExit(f"{args.run_name}: needs {need} rows, the pool gives {len(rows)}; raise --train-chars")
        data = add_patch_lengths_column(Dataset.from_dict({"input_ids": rng.sample(rows, need)}), entropy_model,
                                        "entropy", threshold)
        Trainer(model=model, args=training_args(out, steps, args.blt_batch, args.learning_rate, args.seed),
                train_dataset=data, data_collator=BLTDataCollator()).train()
        res.update(trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                   hash_params=sum(p.numel() for n, p in model.named_parameters() if "hash" in n),
                   threshold=threshold, train_bytes_per_patch=train_patch, steps=steps,
                   train_bytes=steps * args.blt_batch * args.blt_seq_len, training_flops=steps * step_flops,
                   forward_flops_per_byte_train=fpb)
    res["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    evals = {}
    for d, docs in eval_docs(args.eval_chars).items():
        if spec["kind"] == "llama":
            ev = evaluate_causal_lm(model, tokenizer, docs, block_size=args.llama_seq_len, batch_size=8,
                                    show_progress=False)
            evals[d] = dict(bits_per_byte=ev.bits_per_byte, bytes=ev.bytes, tokens=ev.tokens,
                            inference_flops_per_byte=res["forward_flops_per_token"] * ev.tokens / ev.bytes)
        else:
            ev = blt_eval(model, docs, args.blt_seq_len)
            f = blt_flops_per_byte(cfg, ev["mean_patch_size"], args.blt_seq_len)
            evals[d] = dict(ev, inference_flops_per_byte=f["total"],
                            inference_flops_per_byte_no_entropy=f["total"] - f["entropy_model"])
    res["eval"] = evals
    total = sum(e["bytes"] for e in evals.values())
    res["all"] = {k: sum(e[k] * e["bytes"] for e in evals.values()) / total
                  for k in evals[DOMAINS[0]] if k not in ("bytes", "tokens")}
    res["eval_s"] = time.perf_counter() - t0
    model.save_pretrained(out / "model")
    if spec["kind"] == "llama":
        tokenizer.save_pretrained(out / "model")
    with atomic_file(out / "result.json", "w") as f:
        f.write(json.dumps(res, indent=2))
    print(f"{args.run_name} seed {args.seed}: {res['all']['bits_per_byte']:.3f} bits/byte, "
          f"train {res['train_s']:.0f}s, eval {res['eval_s']:.0f}s", flush=True)


def all_runs(args, argv: list[str]) -> None:
    """Every (run, seed) as a subprocess of ``--threads`` torch threads, ``--jobs`` at a time; the scaling runs first
    (largest first)."""
    from tqdm.auto import tqdm

    table = run_table(args)
    def is_patch_run(n):
        return n.startswith("blt-") and table[n]["patch"] != args.target_patch_size

    order = [(n, s) for s in args.seeds for n in sorted(table, key=lambda n: -table[n]["size"]) if not is_patch_run(n)]
    order += [(n, s) for s in args.seeds for n in table if is_patch_run(n)]
    def busy_or_done(n, s):  # done, or running under another orchestrator (a pid file of a live process)
        run_dir = Path(args.cache) / "runs" / f"{n}-seed{s}"
        if (run_dir / "result.json").exists():
            return True
        try:
            os.kill(int((run_dir / "pid").read_text()), 0)
            return True
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False

    todo = [(n, s) for n, s in order if not busy_or_done(n, s)]
    base = [sys.executable, str(Path(__file__).resolve()), *argv]  # this run's options; the last --stage wins
    logs = Path(args.cache) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running: list[tuple[subprocess.Popen, str]] = []
    bar = tqdm(total=len(todo), desc="training runs", unit="run")
    while todo or running:
        while todo and len(running) < args.jobs:
            n, s = todo.pop(0)
            if busy_or_done(n, s):
                bar.update(1)
                continue
            log = open(logs / f"{n}-seed{s}.log", "w")
            proc = subprocess.Popen(base + ["--stage", "run", "--run-name", n, "--seed", str(s)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            (Path(args.cache) / "runs" / f"{n}-seed{s}").mkdir(parents=True, exist_ok=True)
            (Path(args.cache) / "runs" / f"{n}-seed{s}" / "pid").write_text(str(proc.pid))
            running.append((proc, f"{n}-seed{s}"))
        time.sleep(5)
        for proc, tag in list(running):
            if proc.poll() is not None:
                running.remove((proc, tag))
                bar.update(1)
                print(f"{tag}: exit {proc.returncode}", flush=True)
    bar.close()


# ---------------------------------------------------------------------------------------------------------- report
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def report(args) -> dict:
    table = run_table(args)
    info = json.loads((Path(args.cache) / "prep.json").read_text())
    res = {}
    for name in table:
        for s in args.seeds:
            path = Path(args.cache) / "runs" / f"{name}-seed{s}" / "result.json"
            if path.exists():
                res.setdefault(name, {})[s] = json.loads(path.read_text())
    if not res:  # else empty tables would replace the results of --out-dir
        sys.exit(f"no finished run of {sorted(table)} with seeds {args.seeds} under {Path(args.cache) / 'runs'}: "
                 f"nothing to report (kept {args.out_dir})")
    cols = list(DOMAINS) + ["all"]

    def bpb(r, d):
        return r["all"]["bits_per_byte"] if d == "all" else r["eval"][d]["bits_per_byte"]

    summary = {}
    for name, by_seed in res.items():
        runs = list(by_seed.values())
        r0 = runs[0]
        summary[name] = dict(
            kind=r0["kind"], preset=r0["preset"], size=r0["size"], seeds=sorted(by_seed), patch=r0.get("patch"),
            budget_flops=r0["budget_flops"], training_flops=mean_std([r["training_flops"] for r in runs])[0],
            params=r0.get("params") or r0.get("trainable_params"), non_embedding_params=r0.get("non_embedding_params"),
            steps=r0["steps"], train_units=r0.get("train_tokens") or r0.get("train_bytes"),
            inference_flops_per_byte=mean_std([r["all"]["inference_flops_per_byte"] for r in runs])[0],
            mean_patch_size=mean_std([r["all"]["mean_patch_size"] for r in runs])[0] if r0["kind"] == "blt" else None,
            bits_per_byte={d: mean_std([bpb(r, d) for r in runs]) for d in cols},
            train_s=mean_std([r["train_s"] for r in runs])[0],
        )
    gaps = []
    for k, (lp, bp) in enumerate(zip(args.llama_presets, args.blt_presets)):
        ln, bn = f"llama-{lp}", f"blt-{bp}"
        if ln not in res or bn not in res:
            continue
        seeds = sorted(set(res[ln]) & set(res[bn]))
        gaps.append(dict(size=k, llama=ln, blt=bn, budget_flops=summary[ln]["budget_flops"], seeds=seeds,
                         gap={d: mean_std([bpb(res[bn][s], d) - bpb(res[ln][s], d) for s in seeds]) for d in cols},
                         ratio_all=mean_std([bpb(res[bn][s], "all") / bpb(res[ln][s], "all") for s in seeds])))

    def fmt(ms):
        return f"{ms[0]:.3f} ± {ms[1]:.3f}"

    lines = [f"Seeds {args.seeds}; mean ± std over seeds; bits/byte on the first {args.eval_chars} characters "
             f"(whole documents) of each *.valid.jsonl.gz.", "",
             "| run | seeds | params (trainable) | training FLOPs | steps | trained on | bytes/patch | inf. FLOPs/byte | "
             + " | ".join(cols) + " |", "|" + "---|" * (8 + len(cols))]
    for name, s in summary.items():
        unit = "tokens" if s["kind"] == "llama" else "bytes"
        ps = f"{s['mean_patch_size']:.2f}" if s["mean_patch_size"] else "-"
        lines.append(f"| {name} | {len(s['seeds'])} | {s['params'] / 1e6:.2f}M | {s['training_flops']:.2e} | {s['steps']} | "
                     f"{s['train_units'] / 1e3:.0f}K {unit} | {ps} | {s['inference_flops_per_byte'] / 1e6:.2f}M | "
                     + " | ".join(fmt(s["bits_per_byte"][d]) for d in cols) + " |")
    lines += ["", "Gap BLT − Llama bits/byte at equal training FLOPs (per seed pair, mean ± std):", "",
              "| size | pair | budget | " + " | ".join(cols) + " | BLT/Llama (all) |", "|" + "---|" * (4 + len(cols))]
    for g in gaps:
        lines.append(f"| {g['size']} | {g['blt']} vs {g['llama']} | {g['budget_flops']:.2e} | "
                     + " | ".join(f"{g['gap'][d][0]:+.3f} ± {g['gap'][d][1]:.3f}" for d in cols)
                     + f" | {g['ratio_all'][0]:.3f} ± {g['ratio_all'][1]:.3f} |")
    md = "\n".join(lines)
    print(md)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(args={k: v for k, v in vars(args).items() if k not in ("run_name", "seed", "stage")}, prep=info,
                   summary=summary, gaps=gaps,
                   runs={n: {str(s): dict(all=r["all"], eval={d: e["bits_per_byte"] for d, e in r["eval"].items()},
                                           training_flops=r["training_flops"], train_s=r["train_s"])
                             for s, r in by.items()} for n, by in res.items()})
    with atomic_file(out / "scaling_blt.json", "w") as f:
        f.write(json.dumps(payload, indent=2))
    with atomic_file(out / "scaling_blt.md", "w") as f:
        f.write(md + "\n")
    plot(args, summary, gaps, out / "scaling_blt.png")
    return payload


def plot(args, summary, gaps, path) -> None:
    fig, (a1, a2) = new_figure(1, 2, figsize=(12, 4.5))
    if gaps:
        x = [g["budget_flops"] for g in gaps]
        for d in list(DOMAINS) + ["all"]:
            a1.errorbar(x, [g["gap"][d][0] for g in gaps], yerr=[g["gap"][d][1] for g in gaps], marker="o",
                        capsize=3, lw=2.5 if d == "all" else 1, label=d, color="k" if d == "all" else None)
        for g in gaps:
            a1.annotate(g["blt"].removeprefix("blt-") + " vs " + g["llama"].removeprefix("llama-"),
                        (g["budget_flops"], g["gap"]["all"][0]), fontsize=7, textcoords="offset points", xytext=(4, 6))
        a1.axhline(0, color="gray", lw=0.8)
        a1.set_xscale("log")
        a1.set_xlabel("training FLOPs (each model of a pair)")
        a1.set_ylabel("BLT − Llama bits/byte (below 0: BLT better)")
        a1.set_title(f"gap at equal training FLOPs, seeds {args.seeds}", fontsize=9)
        a1.legend(fontsize=7)
    for name, s in summary.items():
        if s["size"] != len(args.tokens) - 1:
            continue
        m, e = s["bits_per_byte"]["all"]
        label = name + (f" ({s['mean_patch_size']:.1f} B/patch)" if s["mean_patch_size"] else "")
        a2.errorbar([s["inference_flops_per_byte"] / 1e6], [m], yerr=[e], marker="s" if s["kind"] == "llama" else "o",
                    capsize=3, label=label)
    a2.set_xlabel("inference FLOPs per byte (M; BLT includes its entropy model)")
    a2.set_ylabel("validation bits/byte (all domains)")
    a2.set_title("largest budget: patch size at ~equal inference FLOPs", fontsize=9)
    a2.legend(fontsize=7)
    write_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.stage in ("runs", "run", "report") and not (Path(args.cache) / "prep.json").is_file():
        sys.exit(f"no prepared data at {Path(args.cache) / 'prep.json'}: run --stage prep (or all) with this --cache")
    if args.stage == "run":
        one_run(args)
        return
    t0 = time.perf_counter()
    if args.stage in ("all", "prep"):
        prep(args)
    if args.stage in ("all", "runs"):
        all_runs(args, sys.argv[1:] if argv is None else list(argv))
    if args.stage in ("all", "report"):
        report(args)
    print(f"wall {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
