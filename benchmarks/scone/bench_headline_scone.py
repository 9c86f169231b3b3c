"""SCONE's headline comparison at CPU scale (issue #13, item 2): main model + SCONE vs the same main model and vs a
larger baseline with about twice the accelerator FLOPs per token.

The paper (arXiv 2502.01637, Table 1/3): OLMo-1B + SCONE (1.8B f-gram model ``A_f``, 10M-1B f-grams) matches or beats
a 1.9B baseline at about half the inference FLOPs; SCONE models get half the baselines' training tokens so that
training FLOPs (which include ``A_f``) are about equal.

Protocol here (every model trained from scratch, single-threaded, on the same shuffled packed blocks of the five
domains of ``../shared/corpus``; tokenizer and blocks as in ``bench_fusion_ablation_scone.py``):

* ``main``: the ``--preset`` Llama (``1m``: width 128, 4 layers).
* ``large``: the same with ``--large-layers`` layers (8: about 2x the main model's non-embedding FLOPs/token).
* ``wide``: the main depth at width ``--wide-width`` (176, MLP 2.75x, heads of 44: 1.74x the main model's inference
  FLOPs/token), the other ~2x baseline: at this scale a deeper model trains more slowly per step than a wider one.
* ``wide_mlp``: the same with the attention at the main width (4 heads of 32 reading and writing the 176-wide
  residual stream): 1.60x. It is what ``wide`` built until 2026-12-04.
* ``scone_*``: the main model (the same initial weights as ``main`` for a seed) wrapped by ``SconeLlamaForCausalLM``
  with an ``A_f`` of ``--fgram-layers`` layers at the main width (4 = the main model's non-embedding size), S =
  ``--num-fgrams`` f-grams mined on the training blocks; fusions ``scone_replace_id`` (the paper's replace fusion,
  ``fgram_init="identity"``) and ``scone_gated`` (``FGRAM_RECIPES["gated"]``).
* Equal training *tokens* for every model (``--steps`` x ``--batch`` x ``--block``), and each model's training FLOPs
  reported beside it: ``6 x`` forward FLOPs/token, SCONE adding ``6 x`` ``A_f``'s FLOPs on the padded, batch-deduped
  f-gram windows it really ran (counted per batch). ``scone_*_half`` variants train on half the steps (the paper's
  way of equalising training FLOPs; only meaningful when ``A_f`` costs about as much as the main model).
* Inference accelerator FLOPs/token (forward, context = block): ``2 x`` (decoder + LM-head weights) + attention
  ``4 x layers x heads x head_dim x (mean context)`` (the attention width, 128 for ``wide_mlp`` whose residual is
  176; until 2026-12-05 the formula used ``hidden_size`` there and printed 1.62x for it); SCONE's is the main
  model's (its f-gram vectors come from a CPU-side table) plus ``2 x d`` for the gated fusion's multiply-add. The
  formula equals torch's ``FlopCounterMode`` for every model at context = block (eager attention).
* Held-out perplexity per domain (first ``--eval-tokens`` of each valid split), mean ± std over ``--seeds`` (the
  sample standard deviation, ddof=1, as the anchor and BLT benchmarks). SCONE is evaluated in training mode, which
  the test suite shows equal to the exported table model (fp32 logits).

    cd benchmarks/scone && OMP_NUM_THREADS=1 nice -n 19 python bench_headline_scone.py --seeds 0 --name s0 --out DIR
    python bench_headline_scone.py --merge DIR/s0.json DIR/s1.json DIR/s2.json   # -> results/headline_scone.*
    python bench_headline_scone.py --report results/headline_scone_400.json  # re-report a results file in place

``--merge`` refuses parts whose settings differ in anything but ``--seeds`` / ``--models`` (a setting a part does
not record counts as the script's default), and a (model, seed) run that two parts both hold.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from corpus_scone import DOMAINS, add_results_options, load_data, make_schedule, match_blocks, seed_std
from tqdm import tqdm
from transformers import LlamaForCausalLM

from hf_efficient_lm.eval import rows_nll
from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure
from hf_efficient_lm.io_utils import atomic_file
from hf_efficient_lm.scone import FGRAM_RECIPES, SconeLlamaForCausalLM, mine_fgrams
from hf_efficient_lm.train import llama_config_from_preset

SCONE_MODELS = {
    "scone_replace_id": {**FGRAM_RECIPES["paper"], "fgram_init": "identity"},
    "scone_gated": dict(FGRAM_RECIPES["gated"]),
}
MODELS = ["main", *SCONE_MODELS, *(f"{m}_half" for m in SCONE_MODELS), "large", "wide", "wide_mlp"]
LABELS = {"main": "main (1m)", "large": "large (2x layers)", "wide": "wide (same depth, --wide-width)",
          "wide_mlp": "wide residual + MLP (attention at the main width)",
          "scone_replace_id": "main + SCONE replace, identity init", "scone_gated": "main + SCONE gated", "scone_replace_id_half": "main + SCONE replace id, half tokens",
          "scone_gated_half": "main + SCONE gated, half tokens"}


def head_dim(config) -> int:
    """What the built model has (q_proj: hidden_size -> heads x head_dim); LlamaConfig fixes it when built."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def decoder_params(config) -> int:
    """Weights one token's forward multiplies by in ``num_hidden_layers`` Llama layers (no norms, no embedding)."""
    d, f, heads, kv = config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads
    return config.num_hidden_layers * (d * head_dim(config) * (2 * heads + 2 * kv) + 3 * d * f)


def forward_flops(config, context: float) -> float:
    """Forward FLOPs per token: 2 x (decoder + LM head weights) + 4 x layers x heads x head_dim x context (QK^T and
    AV run at the attention width heads x head_dim, which is not hidden_size for ``wide_mlp``)."""
    return 2 * (decoder_params(config) + config.hidden_size * config.vocab_size) + \
        4 * config.num_hidden_layers * config.num_attention_heads * head_dim(config) * context


def preset_config(args, tokenizer, layers: int | None = None, width: int | None = None, wide_attention: bool = True):
    config = llama_config_from_preset(args.preset, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if layers is not None:
        config.num_hidden_layers = layers
    if width is not None:  # same heads, MLP ratio kept
        if width % config.num_attention_heads:
            raise ValueError(f"--wide-width {width} is not a multiple of the {config.num_attention_heads} heads")
        config.intermediate_size = round(config.intermediate_size * width / config.hidden_size)
        # head_dim too (LlamaConfig fixed it at hidden_size / heads when built). Without it (``wide_mlp``) the
        # attention keeps the main width: q/k/v/o map width -> heads x main head_dim. Until 2026-12-04 that model
        # was trained and reported as "wide", with the FLOPs of the all-wide one (1.74x instead of its 1.60x).
        config.hidden_size = width
        if wide_attention:
            config.head_dim = width // config.num_attention_heads
    return config


def model_config(name: str, args, tokenizer):
    """The Llama config of model ``name``: the baselines' own, else the main model's (SCONE wraps it)."""
    if name == "large":
        return preset_config(args, tokenizer, layers=args.large_layers)
    if name in ("wide", "wide_mlp"):
        return preset_config(args, tokenizer, width=args.wide_width, wide_attention=name == "wide")
    return preset_config(args, tokenizer)


def build(name: str, args, seed: int, tokenizer, vocab, init_dir: Path):
    """A fresh model; every model of a seed starts from that seed's main-model weights (baselines: their own)."""
    if name in ("large", "wide", "wide_mlp"):
        torch.manual_seed(seed)
        return LlamaForCausalLM(model_config(name, args, tokenizer))
    if name == "main":
        return LlamaForCausalLM.from_pretrained(init_dir)
    torch.manual_seed(1000 + seed)  # A_f's initialisation
    return SconeLlamaForCausalLM.from_pretrained(init_dir, fgram_vocab=vocab, fgram_num_layers=args.fgram_layers,
                                                 **SCONE_MODELS[name.removesuffix("_half")])


def heldout(model, eval_sets: dict) -> dict:
    model.eval()
    with torch.no_grad():
        losses = {d: rows_nll(model, rows, batch_size=32).loss for d, rows in eval_sets.items()}
    model.train()
    return losses


def train(name: str, model, blocks, block_rows, block_lens, args, seed: int, eval_sets: dict) -> dict:
    steps = args.steps // 2 if name.endswith("_half") else args.steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = make_schedule(optimizer, steps, args.warmup)
    generator = torch.Generator().manual_seed(seed)  # the same batches for every model of a seed
    fgram_window_tokens = 0
    model.train()
    for _ in tqdm(range(steps), desc=f"{name} seed {seed}", leave=False):
        index = torch.randint(0, len(blocks), (args.batch,), generator=generator).numpy()
        ids = torch.from_numpy(blocks[index])
        if isinstance(model, SconeLlamaForCausalLM):
            rows, lens = block_rows[index], block_lens[index]
            matched = lens >= 2
            if matched.any():  # A_f runs once per distinct f-gram, windows padded to the batch's longest
                fgram_window_tokens += len(np.unique(rows[matched])) * int(lens[matched].max())
            out = model(input_ids=ids, labels=ids, fgram_row=torch.from_numpy(rows), fgram_len=torch.from_numpy(lens))
        else:
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    tokens = steps * args.batch * args.block
    return {"steps": steps, "tokens": tokens, "fgram_window_tokens": fgram_window_tokens,
            "heldout": heldout(model, eval_sets)}


def summarise(results: dict) -> list[dict]:
    rows = []
    for name, seeds in results["runs"].items():
        if not seeds:  # (a partial result)
            continue
        loss = np.array([[r["heldout"][d] for d in DOMAINS] for r in seeds])  # [seeds, domains]
        ppl = np.exp(loss)
        mean_ppl = ppl.mean(1)  # the mean over domains, per seed
        main_by_seed = {r["seed"]: np.mean([math.exp(r["heldout"][d]) for d in DOMAINS])
                        for r in results["runs"].get("main", [])}
        # the same seed = the same batches and (SCONE) the same initial main weights: compare within a seed
        paired = [m / main_by_seed[r["seed"]] - 1 for m, r in zip(mean_ppl, seeds) if r["seed"] in main_by_seed]
        # spreads: the sample std over seeds (ddof=1), as in the anchor and BLT benchmarks
        rows.append({"name": name, "ppl_mean": ppl.mean(0).tolist(), "ppl_std": seed_std(ppl).tolist(),
                     "vs_main_paired": [float(np.mean(paired)), seed_std(paired)] if paired else None,
                     "avg_mean": float(mean_ppl.mean()), "avg_std": seed_std(mean_ppl),
                     "infer_flops": results["flops"][name]["infer"],
                     "train_flops": float(np.mean([r["train_flops"] for r in seeds])),
                     "tokens": seeds[0]["tokens"], "seeds": [r["seed"] for r in seeds]})
    rows.sort(key=lambda r: MODELS.index(r["name"]))
    main = next(r for r in rows if r["name"] == "main")
    print(f"\n{results['args']['steps']} steps x {results['args']['batch']} x {results['args']['block']} tokens; "
          f"S = {results['num_fgrams']:,}, held-out f-gram coverage {results['coverage']:.1%}")
    print("\n| model | " + " | ".join(DOMAINS) + " | mean ppl | vs main (same seed) | inference FLOPs/token | "
          "training FLOPs (total) | tokens |")
    print("|---|" + "---|" * (len(DOMAINS) + 5))
    for r in rows:
        cells = " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(r["ppl_mean"], r["ppl_std"]))
        print(f"| {LABELS[r['name']]} | {cells} | **{r['avg_mean']:.1f} ± {r['avg_std']:.1f}** | "
              f"{100 * r['vs_main_paired'][0]:+.1f}% ± {100 * r['vs_main_paired'][1]:.1f}% | {r['infer_flops'] / 1e6:.2f}M "
              f"({r['infer_flops'] / main['infer_flops']:.2f}x) | {r['train_flops']:.2e} "
              f"({r['train_flops'] / main['train_flops']:.2f}x) | {r['tokens']:,} |")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = new_figure(1, 2, figsize=(12, 4.6))
    for i, r in enumerate(rows):
        for ax, key, label in ((axes[0], "infer_flops", "inference accelerator FLOPs/token"),
                               (axes[1], "train_flops", "training FLOPs (total, incl. A_f)")):
            ax.errorbar(r[key], r["avg_mean"], yerr=r["avg_std"], fmt="o", capsize=4, color=f"C{i}",
                        label=LABELS[r["name"]])
            ax.set_xlabel(label)
            ax.set_xscale("log")
    axes[0].set_ylabel("held-out perplexity, mean of 5 domains (± sample std over seeds)")
    axes[0].set_title("perplexity vs inference FLOPs/token")
    axes[1].set_title("perplexity vs training compute")
    axes[0].legend(fontsize=7)
    write_figure(fig, path, dpi=110)


MERGE_FREE_ARGS = {"seeds", "models", "name", "out", "merge", "report"}  # what parts of one merge may differ in


def merge(paths: list[str], defaults: dict) -> dict:
    """The runs of ``paths`` in one result. Refuses parts whose settings differ in anything but the seeds and models
    (a key a part lacks, e.g. one added to the script later, counts as the script's default), whose f-grams or
    FLOPs differ, and any (model, seed) run held twice."""
    parts = [(Path(p), json.loads(Path(p).read_text())) for p in paths]
    first_path, results = parts[0]
    reference = {**defaults, **results["args"]}
    held, flops = {}, {}  # (model, seed) -> the part holding it; model -> (its FLOPs, the part that gave them)
    for path, part in parts:
        settings = {**defaults, **part["args"]}
        differ = {k: (reference.get(k), settings.get(k)) for k in sorted(set(reference) | set(settings))
                  if k not in MERGE_FREE_ARGS and reference.get(k) != settings.get(k)}
        if differ:
            raise ValueError(f"cannot merge {path.name} with {first_path.name}: settings differ "
                             + ", ".join(f"{k}={b!r} vs {a!r}" for k, (a, b) in differ.items()))
        for key in ("num_fgrams", "coverage"):
            if part[key] != results[key]:
                raise ValueError(f"cannot merge {path.name}: {key}={part[key]} vs {results[key]} in {first_path.name}")
        for name, seeds in part["runs"].items():
            other, source = flops.setdefault(name, (part["flops"][name], path.name))
            if part["flops"][name] != other:
                raise ValueError(f"cannot merge {path.name}: {name}'s FLOPs {part['flops'][name]} differ from "
                                 f"{other} in {source}")
            for run in seeds:
                key = (name, run["seed"])
                if key in held:
                    raise ValueError(f"{name} seed {run['seed']} is in both {held[key]} and {path.name}")
                held[key] = path.name
    for path, part in parts[1:]:
        for name, seeds in part["runs"].items():
            results["runs"].setdefault(name, []).extend(seeds)
            results["flops"][name] = part["flops"][name]
        results["cpu_s"] += part["cpu_s"]
    results["merged_from"] = [path.name for path, _ in parts]
    return results


def rereport(path: Path) -> None:
    """Rewrite the summary of the results file ``path`` in place and its plot beside it (nothing trained)."""
    results = json.loads(path.read_text())
    results["summary"] = rows = summarise(results)
    with atomic_file(path, "w") as handle:
        json.dump(results, handle, indent=1)
    plot(rows, path.with_suffix(".png"))
    print(f"\nrewrote {path} (summary) and {path.with_suffix('.png')}")


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--preset", default="1m")
    parser.add_argument("--large-layers", type=int, default=8)
    parser.add_argument("--wide-width", type=int, default=176)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--chars-per-domain", type=int, default=2_000_000)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--num-fgrams", type=int, default=10_000)
    parser.add_argument("--fgram-layers", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["scone_replace_id", "main", "large"], choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens per domain")
    add_results_options(parser, "headline_scone",
                        "only re-report a results file: rewrite its summary and plot in place (nothing trained)")
    args = parse_benchmark_args(parser, argv)
    if args.report:
        rereport(Path(args.report))
        return
    out = Path(args.out)
    if args.merge:
        results = merge(args.merge, defaults=vars(parser.parse_args([])))
    else:
        started = time.process_time()
        _, tokenizer, docs, blocks, eval_sets = load_data(args, per_domain=True)  # the ablation's data and held-out
        vocab = mine_fgrams(docs, num_fgrams=args.num_fgrams, tokenizer=tokenizer, show_progress=False,
                            barrier_ids=[tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id])
        # per row: a match never reaches into the previous block (until 2026-12-05 the blocks were matched as one
        # flat array, and 0.08% of positions matched across a block boundary; the committed results have that)
        block_rows, block_lens = match_blocks(vocab, blocks, num_threads=1)
        eval_len = vocab.match(torch.from_numpy(np.concatenate(list(eval_sets.values()))))[1]
        results = {"args": vars(args), "num_fgrams": vocab.num_fgrams, "coverage": float((eval_len >= 2).float().mean()),
                   "runs": {}, "flops": {}}
        context = (args.block - 1) / 2  # mean number of earlier positions attended to in a block
        fgram_params = decoder_params(preset_config(args, tokenizer, args.fgram_layers))
        for name in args.models:
            config = model_config(name, args, tokenizer)
            results["flops"][name] = {"infer": forward_flops(config, context) + (2 * config.hidden_size
                                                                                 if "gated" in name else 0)}
            results["runs"][name] = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:  # the seed's initial main model, shared by main and SCONE
                torch.manual_seed(seed)
                LlamaForCausalLM(preset_config(args, tokenizer)).save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                for name in args.models:
                    run_start = time.process_time()
                    model = build(name, args, seed, tokenizer, vocab, Path(tmp))
                    record = train(name, model, blocks, block_rows, block_lens, args, seed, eval_sets)
                    config = model_config(name, args, tokenizer)
                    # training: 3 x forward FLOPs per token; A_f: 6 x its weights per window token it ran
                    # (attention inside <= K-token windows is negligible)
                    record["train_flops"] = 3 * forward_flops(config, context) * record["tokens"] + \
                        6 * fgram_params * record["fgram_window_tokens"] * ("scone" in name)
                    record.update(seed=seed, cpu_s=time.process_time() - run_start)
                    results["runs"][name].append(record)
                    mean = np.mean([math.exp(v) for v in record["heldout"].values()])
                    print(f"{name} seed {seed}: mean held-out ppl {mean:.2f} ({record['cpu_s']:.0f} CPU-s)", flush=True)
                    results["cpu_s"] = time.process_time() - started
                    with atomic_file(out / f"{args.name}.json", "w") as handle:  # partial results survive a stop
                        json.dump(results, handle, indent=1)
    rows = summarise(results)
    results["summary"] = rows
    with atomic_file(out / f"{args.name}.json", "w") as handle:
        json.dump(results, handle, indent=1)
    plot(rows, out / f"{args.name}.png")
    print(f"\nCPU {results['cpu_s']:.0f}s; wrote {out}/{args.name}.json/.png")


if __name__ == "__main__":
    main()
