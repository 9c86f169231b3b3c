"""Why does the projected network (SLM-pn) trained from scratch lose to the generic SLM at CPU scale?

Same setting as ``bench_specialize_quality.py`` (generic = kernel + code + dictionary, targets pydocs and fortunes
held out, 64-token windows, hashed n-gram clusters k=4, PN h=3, 400 steps of 16 windows, lr 2e-3 cosine), with one
candidate cause changed per variant, several seeds each:

    slm           generic Llama, shuffled batches (the baseline)
    slm_homog     the same Llama trained on cluster-homogeneous batches (the PN's batch order, no routing)
    pn            PN as in the old experiment: one M shared by gate/up/down, default init
    pn_k1         PN with a single cluster (every window routed to code 0): the reparameterisation alone
    pn_rescaled   PN whose bases are rescaled after init so every materialised W starts at std 0.02 (as the SLM)
    pn_permatrix  PN with one M per matrix (config.projection_per_matrix)
    pn_lr1e-3     PN with half the learning rate
    pn_shared     PN with config.projection_init="shared_start": every cluster starts from the same Llama-initialised
                  MLP (basis 0; the other bases 0) and the clusters diverge by training
    pn_shared_pm  shared_start and one M per matrix
    mix           hard mixture (reference)

Reported per run: generic held-out loss (each window routed to its cluster), and per target the perplexity of the
most-frequent-cluster model before fine-tuning, and after it (``specialize``: <= 100 steps, early stopping)
unless ``--finetune-steps 0``.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/specialists/bench_pn_diagnosis.py --seeds 0 1 2 --finetune-steps 0
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
from torch.utils.data import SequentialSampler
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from common_specialists import GENERIC, generic_windows, target_windows

from hf_efficient_lm.data import cache_dir, corpus_dir, corpus_texts
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args
from hf_efficient_lm.io_utils import atomic_file
from hf_efficient_lm.specialists import (
    ClusterIndex,
    HashedNgramEmbedder,
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
    specialize,
)
from hf_efficient_lm.tools.specialists_training import (
    ClusterHomogeneousTrainer,
    SpecialistCollator,
    cluster_homogeneous_order,
)
from hf_efficient_lm.tools.specialize import block_perplexity, token_blocks

VARIANTS = ("slm", "slm_homog", "pn", "pn_k1", "pn_rescaled", "pn_permatrix", "pn_lr1e-3", "pn_shared", "pn_shared_pm",
            "mix")


class _SequentialTrainer(Trainer):
    """Trainer that reads the (pre-ordered) dataset in order: a plain Llama on cluster-homogeneous batches."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def rescale_bases(model: HyperSpecialistForCausalLM, target_std: float) -> None:
    """Scale each layer's bases so the materialised matrices average ``target_std`` over the clusters."""
    with torch.no_grad():
        for layer in model.model.layers:
            stds = [w.std().item() for c in range(model.config.num_clusters)
                    for w in layer.mlp.materialize(model.model.cluster_codes[c]).values()]
            factor = target_std / float(np.mean(stds))
            for basis in (layer.mlp.gate_basis, layer.mlp.up_basis, layer.mlp.down_basis):
                basis.mul_(factor)


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--corpus", type=Path, default=corpus_dir())
    parser.add_argument("--targets", nargs="+", default=["pydocs", "fortunes"])
    parser.add_argument("--generic-chars", type=int, default=600_000, help="characters per generic domain")
    parser.add_argument("--domain-tokens", type=int, default=100_000)
    parser.add_argument("--test-blocks", type=int, default=96)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--pn-basis", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache-dir", type=Path, default=cache_dir("specialists_pn_diagnosis"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/specialists/results"))
    args = parse_benchmark_args(parser, argv)
    hf_logging.set_verbosity_error()
    cache = args.cache_dir / f"c{args.generic_chars}_b{args.block_size}_v{args.vocab_size}_k{args.k}"
    cache.mkdir(parents=True, exist_ok=True)
    runs_path = cache / "runs.jsonl"
    # what else decides a run: a row of other settings (or of a version that did not record them) is not reused
    # (rows were keyed by variant and seed only, so reruns with other --steps or --pn-basis merged old rows)
    settings = {key: getattr(args, key) for key in ("corpus", "domain_tokens", "test_blocks", "batch_size", "pn_basis",
                                                      "steps", "finetune_steps", "targets")}
    settings = json.loads(json.dumps(settings, default=str))
    done = {}
    if runs_path.is_file():
        for line in runs_path.read_text().splitlines():
            row = json.loads(line)
            if row.get("settings") == settings:
                done[(row["variant"], row["seed"])] = row

    tokenizer, blocks, windows = generic_windows(args.corpus, args.generic_chars, args.vocab_size, args.block_size, cache)
    if (cache / "index" / "cluster_index.json").is_file():
        index = ClusterIndex.from_pretrained(cache / "index")
    else:
        index = ClusterIndex.fit(windows, args.k, embedder=HashedNgramEmbedder(dim=512), seed=0, progress=False)
        index.save_pretrained(cache / "index")
    cluster_ids = index.assign(windows, progress=False)
    valid_blocks = [b for d in GENERIC
                    for b in token_blocks(corpus_texts(d, "valid", corpus=args.corpus, limit_chars=200_000), tokenizer,
                                          args.block_size)[:64]]
    valid_clusters = index.assign([tokenizer.decode(b) for b in valid_blocks], progress=False)
    targets = {}
    for target in args.targets:
        texts, test, domain_windows = target_windows(target, args.corpus, args.domain_tokens, args.test_blocks, tokenizer,
                                                     args.block_size, windows)
        hist = index.histogram(domain_windows, progress=False)
        targets[target] = (texts, test, hist)
    print(f"{len(blocks)} generic windows, cluster sizes {np.bincount(cluster_ids, minlength=args.k).tolist()}; "
          + "; ".join(f"{t} histogram {np.round(h, 2).tolist()}" for t, (_, _, h) in targets.items()), flush=True)

    slm_kwargs = dict(vocab_size=len(tokenizer), max_position_embeddings=args.block_size, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, num_attention_heads=4,
                      num_key_value_heads=2, hidden_size=64, intermediate_size=256, num_hidden_layers=2)
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            started = time.perf_counter()
            torch.manual_seed(seed)
            routed = variant.startswith("pn") or variant == "mix"
            k = 1 if variant == "pn_k1" else args.k
            ids = np.zeros_like(cluster_ids) if k == 1 else cluster_ids
            if variant.startswith("slm"):
                model = LlamaForCausalLM(LlamaConfig(**slm_kwargs))
            elif variant == "mix":
                model = SpecialistMixtureForCausalLM(SpecialistMixtureConfig(**slm_kwargs, num_experts=k))
            else:
                model = HyperSpecialistForCausalLM(HyperSpecialistConfig(
                    **slm_kwargs, num_clusters=k, num_basis=args.pn_basis, code_dim=args.k,
                    projection_per_matrix=variant in ("pn_permatrix", "pn_shared_pm"),
                    projection_init="shared_start" if variant.startswith("pn_shared") else "random"))
                if variant == "pn_rescaled":
                    rescale_bases(model, 0.02)
            lr = 1e-3 if variant == "pn_lr1e-3" else 2e-3
            targs = TrainingArguments(
                output_dir=str(cache / "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 20),
                max_grad_norm=5.0, weight_decay=0.0, logging_strategy="no", save_strategy="no", report_to=[],
                seed=seed, disable_tqdm=True, dataloader_num_workers=0,
            )
            if variant == "slm_homog":
                order = cluster_homogeneous_order(cluster_ids, args.batch_size, seed=seed)
                ds = Dataset.from_dict({"input_ids": [blocks[i] for i in order]})
                trainer = _SequentialTrainer(model=model, args=targs, train_dataset=ds,
                                             data_collator=SpecialistCollator(0))
            elif routed:
                ds = Dataset.from_dict({"input_ids": blocks, "cluster_ids": ids.tolist()})
                trainer = ClusterHomogeneousTrainer(model=model, args=targs, train_dataset=ds,
                                                    data_collator=SpecialistCollator(0))
            else:
                trainer = Trainer(model=model, args=targs, train_dataset=Dataset.from_dict({"input_ids": blocks}),
                                  data_collator=SpecialistCollator(0))
            trainer.train()
            model.eval()
            # generic held-out loss, every window routed to its own cluster
            nll, count = 0.0, 0
            for cluster in np.unique(valid_clusters if k > 1 else [0]):
                rows = [b for b, c in zip(valid_blocks, valid_clusters) if k == 1 or c == cluster]
                ppl = block_perplexity(model, rows, batch_size=32, cluster_id=int(cluster) if routed else None)
                nll, count = nll + math.log(ppl) * len(rows), count + len(rows)
            row = {"variant": variant, "seed": seed, "settings": settings, "generic_loss": nll / count}
            row["train_seconds"] = time.perf_counter() - started
            for target, (texts, test, hist) in targets.items():
                if routed:
                    cluster = 0 if k == 1 else int(np.argmax(hist))
                    start = model.instantiate(cluster=cluster)
                else:
                    start = model
                row[f"{target}_ppl_no_ft"] = block_perplexity(start, test, batch_size=32)
                if args.finetune_steps == 0:
                    continue
                result = specialize(start, texts, None, tokenizer=tokenizer, block_size=args.block_size,
                                    max_steps=args.finetune_steps, eval_steps=20, learning_rate=1e-3,
                                    batch_size=args.batch_size, early_stopping_patience=3, seed=seed)
                row[f"{target}_ppl_ft"] = block_perplexity(result.model, test, batch_size=32)
            row["seconds"] = time.perf_counter() - started
            done[(variant, seed)] = row
            with runs_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps({key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()}),
                  flush=True)

    # summary: mean ± std over the seeds that exist for each variant
    # the metrics every run has (--finetune-steps 0 runs have no fine-tuned perplexity)
    metrics = [m for m in ["generic_loss"] + [f"{t}_ppl_{s}" for t in args.targets for s in ("no_ft", "ft")]
               if all(m in r for r in done.values())]
    summary = {}
    for variant in VARIANTS:
        rows = [r for (v, _), r in done.items() if v == variant]
        if rows:
            summary[variant] = {"seeds": sorted(r["seed"] for r in rows), **{
                m: [float(np.mean([r[m] for r in rows])), float(np.std([r[m] for r in rows]))] for m in metrics}}
    lines = ["| variant | seeds | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
             "|---" * (2 + len(metrics)) + "|"]
    for variant, s in summary.items():
        cells = [f"{s[m][0]:.3f} ± {s[m][1]:.3f}" if m == "generic_loss" else f"{s[m][0]:.1f} ± {s[m][1]:.1f}"
                 for m in metrics]
        lines.append(f"| {variant} | {len(s['seeds'])} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / "pn_diagnosis.md", "w") as handle:
        handle.write(text + "\n")
    with atomic_file(args.out / "pn_diagnosis.json", "w") as handle:
        json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                   "runs": sorted(done.values(), key=lambda r: (r["variant"], r["seed"]))}, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
