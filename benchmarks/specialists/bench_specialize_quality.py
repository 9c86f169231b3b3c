"""CPU-scale reproduction of "Need a Small Specialized Language Model? Plan Early!" on ../shared/corpus.

One pretraining run on GENERIC data (the corpus domains not held out) serves every TARGET domain (held out from
pretraining; a small in-domain training set, perplexity on the domain's valid file). Methods, all ending in a small
stock Llama except the LLM itself:

    SLM + FT            generic small Llama, fine-tuned on the domain
    SLM-is + FT         small Llama pretrained on generic data importance-sampled to the domain's cluster histogram
    SLM-mix + FT        hard mixture (one expert per cluster): most frequent cluster's expert, fine-tuned
    SLM-mix best + FT   the expert with the lowest domain loss before fine-tuning (Table 5 of the paper)
    SLM-pn + FT         projected network: MLP weights of the most frequent cluster, fine-tuned
    SLM-pn hist + FT    projected network instantiated at the histogram-weighted code (beyond the paper)
    SLM long + FT       the generic SLM trained --branch-steps more steps (equal-cost baseline for the two below)
    SLM-mix br + FT     hard mixture branched from the generic SLM, +--branch-steps cluster-routed steps
    SLM-pn br (hist)    projected network upcycled from the generic SLM (hyper_from_llama), +--branch-steps steps
    SLM-d               generic small Llama distilled from the fine-tuned LLM on the domain data
    LLM + FT            the larger model itself (inference cost ~6x)

Costs are FLOPs (6·N·tokens for training, 2·N·tokens for inference passes) and wall-clock seconds.

    nice -n 10 python benchmarks/specialists/bench_specialize_quality.py --targets pydocs fortunes --out benchmarks/specialists/results
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from hf_efficient_lm.specialists import (
    ClusterIndex,
    HashedNgramEmbedder,
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    MiniLMEmbedder,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
    hyper_from_llama,
    importance_sample,
    mixture_from_experts,
    specialize,
)
from common_specialists import target_windows

from hf_efficient_lm.tools.specialize import token_blocks, block_perplexity
from hf_efficient_lm.tools.specialists_training import ClusterHomogeneousTrainer, SpecialistCollator
from hf_efficient_lm.data import cache_dir, corpus_dir, corpus_texts
from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure
from hf_efficient_lm.io_utils import atomic_file

ALL_DOMAINS = ("pydocs", "kernel", "code", "dictionary", "fortunes")


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def active_params(model) -> int:
    """Parameters one sequence runs through (one expert of a mixture; the materialised Llama of a PN)."""
    if isinstance(model, (SpecialistMixtureForCausalLM, HyperSpecialistForCausalLM)):
        return num_params(model.instantiate(cluster=0))
    return num_params(model)


def train(model, dataset, args_ns, steps: int, out: Path, *, homogeneous: bool, lr: float) -> float:
    """Pretrain ``model`` for ``steps`` steps; returns seconds."""
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=args_ns.batch_size, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), max_grad_norm=5.0, weight_decay=0.0,
        logging_steps=max(1, steps // 5), save_strategy="no", report_to=[], seed=args_ns.seed,
        disable_tqdm=False, dataloader_num_workers=0,
    )
    trainer_cls = ClusterHomogeneousTrainer if homogeneous else Trainer
    started = time.perf_counter()
    trainer_cls(model=model, args=args, train_dataset=dataset, data_collator=SpecialistCollator(0)).train()
    return time.perf_counter() - started


def pretrained(name: str, build, dataset, args_ns, cache: Path, *, homogeneous: bool, lr: float, cls,
               steps: int | None = None, prior_cost: tuple[float, float] = (0.0, 0.0)):
    """Train once and cache under ``cache/name``; returns (model, seconds, flops), both including ``prior_cost``
    (the seconds / FLOPs of the checkpoint a branched model starts from)."""
    steps = args_ns.pretrain_steps if steps is None else steps
    path = cache / name
    meta_path = path / "experiment_meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return cls.from_pretrained(path).eval(), meta["seconds"], meta["flops"]
    model = build()
    seconds = prior_cost[0] + train(model, dataset, args_ns, steps, cache / f"{name}.trainer",
                                    homogeneous=homogeneous, lr=lr)
    flops = prior_cost[1] + 6.0 * active_params(model) * steps * args_ns.batch_size * args_ns.block_size
    model.save_pretrained(path)
    with atomic_file(meta_path, "w") as handle:  # written last: it marks the saved model as complete
        json.dump({"seconds": seconds, "flops": flops}, handle)
    return model.eval(), seconds, flops


def no_ft_model(model, report):
    if report.get("selection") == "histogram":
        return model.instantiate(histogram=report["histogram"])
    if "selected_cluster" in report:
        return model.instantiate(cluster=report["selected_cluster"])
    return model


def main(argv=None) -> dict:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--targets", nargs="+", default=["pydocs", "fortunes"], choices=ALL_DOMAINS,
                        help="held-out specialization domains (excluded from the generic data)")
    parser.add_argument("--generic-chars", type=int, default=1_500_000, help="characters read per generic domain")
    parser.add_argument("--domain-tokens", type=int, default=100_000, help="in-domain training tokens per target")
    parser.add_argument("--test-blocks", type=int, default=96, help="held-out blocks of the valid file per target")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--k", type=int, default=4, help="clusters = experts")
    parser.add_argument("--pn-basis", type=int, default=3, help="h, basis tensors of the projected network")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--branch-steps", type=int, default=200,
                        help="extra steps of the branched variants (SLM long, mix br, pn br); 0 disables them")
    parser.add_argument("--embedder", choices=["hashed", "minilm"], default="hashed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=cache_dir("specialists_experiment"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/specialists/results"))
    args = parse_benchmark_args(parser, argv)
    torch.manual_seed(args.seed)
    hf_logging.set_verbosity_error()
    generic_domains = [d for d in ALL_DOMAINS if d not in args.targets]
    key = (f"g{'-'.join(generic_domains)}_c{args.generic_chars}_b{args.block_size}_v{args.vocab_size}_k{args.k}"
           f"_h{args.pn_basis}_s{args.pretrain_steps}_e{args.embedder}_seed{args.seed}")
    cache = args.cache_dir / key
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # ---------------------------------------------------------------- generic data, tokenizer, clusters
    generic_texts = {d: corpus_texts(d, "train", corpus=args.corpus, limit_chars=args.generic_chars) for d in generic_domains}
    tokenizer_path = cache / "tokenizer"
    if (tokenizer_path / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_path)
    else:
        from hf_efficient_lm.data.tokenizer_training import train_tokenizer

        all_generic = [t for texts in generic_texts.values() for t in texts]
        tokenizer = train_tokenizer([all_generic], args.vocab_size, show_progress=False)
        tokenizer.save_pretrained(tokenizer_path)
    generic_blocks, generic_domain_of_block = [], []
    for domain, texts in generic_texts.items():
        blocks = token_blocks(texts, tokenizer, args.block_size)
        generic_blocks += blocks
        generic_domain_of_block += [domain] * len(blocks)
    windows = [tokenizer.decode(block) for block in generic_blocks]
    if (cache / "index" / "cluster_index.json").is_file():
        index = ClusterIndex.from_pretrained(cache / "index")
    else:
        embedder = HashedNgramEmbedder(dim=512) if args.embedder == "hashed" else MiniLMEmbedder(max_tokens=64)
        index = ClusterIndex.fit(windows, args.k, embedder=embedder, seed=args.seed)
        index.save_pretrained(cache / "index")
    cluster_ids = index.assign(windows)
    purity = {
        d: np.bincount(cluster_ids[np.array(generic_domain_of_block) == d], minlength=args.k).tolist()
        for d in generic_domains
    }
    print(f"generic: {len(generic_blocks)} blocks of {args.block_size} tokens from {generic_domains}; "
          f"clusters per domain {purity}")
    generic_ds = Dataset.from_dict({"input_ids": generic_blocks, "cluster_ids": cluster_ids.tolist()})
    llama_kwargs = dict(vocab_size=len(tokenizer), max_position_embeddings=args.block_size, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, num_attention_heads=4,
                        num_key_value_heads=2)
    slm_kwargs = dict(llama_kwargs, hidden_size=64, intermediate_size=256, num_hidden_layers=2)
    llm_kwargs = dict(llama_kwargs, hidden_size=128, intermediate_size=512, num_hidden_layers=4)

    # ---------------------------------------------------------------- pretraining (shared by every target)
    def build_slm():
        torch.manual_seed(args.seed)
        return LlamaForCausalLM(LlamaConfig(**slm_kwargs))

    plain_ds = generic_ds.remove_columns(["cluster_ids"])
    models, pre_cost = {}, {}
    models["SLM"], *pre_cost["SLM"] = pretrained("slm", build_slm, plain_ds, args, cache, homogeneous=False,
                                                 lr=2e-3, cls=LlamaForCausalLM)
    models["mix"], *pre_cost["mix"] = pretrained(
        "mixture", lambda: SpecialistMixtureForCausalLM(SpecialistMixtureConfig(**slm_kwargs, num_experts=args.k)),
        generic_ds, args, cache, homogeneous=True, lr=2e-3, cls=SpecialistMixtureForCausalLM)
    models["pn"], *pre_cost["pn"] = pretrained(
        "projected", lambda: HyperSpecialistForCausalLM(HyperSpecialistConfig(
            **slm_kwargs, num_clusters=args.k, num_basis=args.pn_basis, code_dim=args.k)),
        generic_ds, args, cache, homogeneous=True, lr=2e-3, cls=HyperSpecialistForCausalLM)
    models["LLM"], *pre_cost["LLM"] = pretrained(
        "llm", lambda: LlamaForCausalLM(LlamaConfig(**llm_kwargs)), plain_ds, args, cache, homogeneous=False,
        lr=1e-3, cls=LlamaForCausalLM)
    # Branched ("upcycled") variants at equal pretraining cost: the generic SLM plus --branch-steps more steps,
    # either on generic data (SLM long), or per cluster as a hard mixture / projected network started from it.
    if args.branch_steps > 0:
        slm_cost = tuple(pre_cost["SLM"])

        def continue_slm():
            return LlamaForCausalLM.from_pretrained(cache / "slm")

        models["SLM long"], *pre_cost["SLM long"] = pretrained(
            f"slm_long{args.branch_steps}", continue_slm, plain_ds, args, cache, homogeneous=False, lr=1e-3,
            cls=LlamaForCausalLM, steps=args.branch_steps, prior_cost=slm_cost)
        models["mix br"], *pre_cost["mix br"] = pretrained(
            f"mixture_branched{args.branch_steps}",
            lambda: mixture_from_experts([continue_slm() for _ in range(args.k)]),
            generic_ds, args, cache, homogeneous=True, lr=1e-3, cls=SpecialistMixtureForCausalLM,
            steps=args.branch_steps, prior_cost=slm_cost)
        models["pn br"], *pre_cost["pn br"] = pretrained(
            f"projected_branched{args.branch_steps}",
            lambda: hyper_from_llama(continue_slm(), num_clusters=args.k, num_basis=args.pn_basis),
            generic_ds, args, cache, homogeneous=True, lr=1e-3, cls=HyperSpecialistForCausalLM,
            steps=args.branch_steps, prior_cost=slm_cost)
    total_params = {name: num_params(model) for name, model in models.items()}
    print("pretraining (seconds, FLOPs):", {k: (round(v[0], 1), f"{v[1]:.2e}") for k, v in pre_cost.items()})

    # ---------------------------------------------------------------- specialization, per target
    rows = []
    ft = dict(tokenizer=tokenizer, block_size=args.block_size, max_steps=args.finetune_steps, eval_steps=20,
              learning_rate=1e-3, batch_size=args.batch_size, early_stopping_patience=3, seed=args.seed)
    for target in args.targets:
        domain_texts, test_blocks, domain_windows = target_windows(
            target, args.corpus, args.domain_tokens, args.test_blocks, tokenizer, args.block_size, windows)
        histogram = index.histogram_of_ids(index.assign(domain_windows, progress=False))
        print(f"\n== {target}: {len(domain_windows) * args.block_size} training tokens, histogram "
              f"{np.round(histogram, 3).tolist()}")

        def record(method, base_key, result, pre_flops, extra_spec_flops=0.0, extra_spec_seconds=0.0, base=None):
            report = result.report
            start = no_ft_model(base if base is not None else models[base_key], report)
            rows.append(dict(
                domain=target, method=method,
                ppl_no_ft=block_perplexity(start, test_blocks, batch_size=32),
                ppl=block_perplexity(result.model, test_blocks, batch_size=32),
                pretrain_flops=pre_flops, spec_flops=report["flops"]["total"] + extra_spec_flops,
                spec_seconds=report["seconds"] + extra_spec_seconds, inference_params=report["inference_params"],
                pretrain_params=total_params.get(base_key, report["inference_params"]),
                finetune_steps=report["finetune_steps"], selected_cluster=report.get("selected_cluster"),
            ))
            print(f"  {method:18s} ppl {rows[-1]['ppl_no_ft']:8.2f} -> {rows[-1]['ppl']:8.2f} "
                  f"({report['finetune_steps']} steps, {report['seconds']:.0f}s)")
            return result

        record("SLM + FT", "SLM", specialize(models["SLM"], domain_texts, None, **ft), pre_cost["SLM"][1])
        # SLM-is: pretraining paid per domain (counted as specialization cost).
        is_ds = importance_sample(plain_ds, cluster_ids, histogram, args.pretrain_steps * args.batch_size,
                                  seed=args.seed)
        is_model, is_seconds, is_flops = pretrained(f"slm_is_{target}_t{args.domain_tokens}", build_slm, is_ds, args,
                                                    cache, homogeneous=False, lr=2e-3, cls=LlamaForCausalLM)
        record("SLM-is + FT", "SLM", specialize(is_model, domain_texts, None, **ft), 0.0, is_flops, is_seconds,
               base=is_model)
        record("SLM-mix + FT", "mix", specialize(models["mix"], domain_texts, index, **ft), pre_cost["mix"][1])
        record("SLM-mix best + FT", "mix",
               specialize(models["mix"], domain_texts, index, selection="best_pretrained", **ft), pre_cost["mix"][1])
        record("SLM-pn + FT", "pn", specialize(models["pn"], domain_texts, index, **ft), pre_cost["pn"][1])
        record("SLM-pn hist + FT", "pn", specialize(models["pn"], domain_texts, index, selection="histogram", **ft),
               pre_cost["pn"][1])
        if args.branch_steps > 0:
            record("SLM long + FT", "SLM long", specialize(models["SLM long"], domain_texts, None, **ft),
                   pre_cost["SLM long"][1])
            record("SLM-mix br + FT", "mix br", specialize(models["mix br"], domain_texts, index, **ft),
                   pre_cost["mix br"][1])
            record("SLM-pn br + FT", "pn br", specialize(models["pn br"], domain_texts, index, **ft),
                   pre_cost["pn br"][1])
            record("SLM-pn br hist + FT", "pn br",
                   specialize(models["pn br"], domain_texts, index, selection="histogram", **ft),
                   pre_cost["pn br"][1])
        llm = record("LLM + FT", "LLM", specialize(models["LLM"], domain_texts, None, **ft), pre_cost["LLM"][1])
        record("SLM-d (LLM teacher)", "SLM",
               specialize(models["SLM"], domain_texts, None, teacher=llm.model, **ft),
               pre_cost["SLM"][1] + pre_cost["LLM"][1], extra_spec_flops=llm.report["flops"]["total"],
               extra_spec_seconds=llm.report["seconds"])

    # ---------------------------------------------------------------- table + plot
    for row in rows:
        base = next(r for r in rows if r["domain"] == row["domain"] and r["method"] == "SLM + FT")
        row["gain_vs_slm_ft_pct"] = 100.0 * (base["ppl"] - row["ppl"]) / base["ppl"]
    args.out.mkdir(parents=True, exist_ok=True)
    table = [
        "| domain | method | inference params | pretrain GFLOPs | specialization GFLOPs | spec. s | PPL no FT | PPL FT "
        "| vs SLM+FT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['domain']} | {r['method']} | {r['inference_params'] / 1e3:.0f}k | {r['pretrain_flops'] / 1e9:.0f} "
            f"| {r['spec_flops'] / 1e9:.1f} | {r['spec_seconds']:.0f} | {r['ppl_no_ft']:.2f} | {r['ppl']:.2f} "
            f"| {r['gain_vs_slm_ft_pct']:+.1f}% |"
        )
    text = "\n".join(table)
    print("\n" + text)
    with atomic_file(args.out / "specialize_table.md", "w") as handle:
        handle.write(text + "\n")
    with atomic_file(args.out / "specialize_results.json", "w") as handle:
        json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "pretraining": pre_cost,
                   "cluster_counts_per_generic_domain": purity}, handle, indent=2)
    fig, axes = new_figure(1, len(args.targets), figsize=(6 * len(args.targets), 4.5), squeeze=False)
    for ax, target in zip(axes[0], args.targets):
        sub = [r for r in rows if r["domain"] == target]
        for r in sub:
            ax.scatter(r["spec_flops"] / 1e9, r["ppl"], s=20 + r["inference_params"] / 2e4)
            ax.annotate(r["method"], (r["spec_flops"] / 1e9, r["ppl"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("specialization GFLOPs (log)")
        ax.set_ylabel("held-out domain perplexity")
        ax.set_title(f"{target} (marker size ~ inference params)")
    write_figure(fig, args.out / "specialize_plot.png", dpi=120)
    print(f"\ntotal {time.perf_counter() - started:.0f}s; wrote {args.out}/specialize_table.md, .json, .png")
    return {"rows": rows}


if __name__ == "__main__":
    main()
