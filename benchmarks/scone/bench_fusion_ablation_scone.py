"""Why does SCONE's replace fusion lose when it wraps a trained Llama? (issue #13, item 1)

Protocol (CPU scale, every run single-threaded):

1. A small trained base: a byte-level BPE (``--vocab-size``) and a ``--preset`` Llama pretrained on the first half of
   the packed training blocks of ``../shared/corpus`` (all five domains). Cached under
   ``$HFELM_CACHE/scone_ablation/`` (outside git); reruns reuse it.
2. f-grams mined on all the training blocks. Each configuration wraps the base with
   ``SconeLlamaForCausalLM.from_pretrained(base, fgram_vocab=..., **overrides)``. At step 0 (no training) it measures,
   on held-out text: f-gram coverage, the RMS of the f-gram vectors ``A_f(...)`` vs the RMS of the token embeddings
   they replace / add to, their cosine, the relative change of the main model's input vectors, and the held-out
   loss of the wrapped model vs the base (the "loss jump" of the wrap).
3. Continual training on the second half of the blocks: the same steps, batches (per seed), optimiser and LR for every
   configuration, the plain base trained alike; held-out loss curves for ``--seeds``. After training, held-out
   per-token losses are split by how often the position's f-gram was seen in the training batches ("updates per
   f-gram"), as the difference to the base trained alike.

Configurations (default: the grid of issue #13 item 1, {replace, gated} x {without, with final norm + output
scale} x {random, identity init of A_f}, plus ``base``): ``replace`` (= ``FGRAM_RECIPES["paper"]``), ``replace_ns``
(replace + final RMSNorm + output scale), ``gated`` (= ``FGRAM_RECIPES["gated"]``, ours), ``gated_plain`` (gated, no
norm/scale), and the same four with ``_id`` / ``gated_id``: the config field ``fgram_init="identity"`` (``A_f``'s
residual branches -- attention ``o_proj``, MLP ``down_proj`` -- and its position embeddings start at zero, so
``A_f(x_j..x_i) = T(x_i)`` before norm/scale; the paper's architecture and table model, another initialisation).
Also available: ``replace_lr10`` (the paper recipe with 10x the learning rate on ``A_f``).

``--base-steps 0`` skips step 1 (the "base" is the random initialisation): the from-scratch protocol of the earlier
quality study (``bench_quality_scone.py``), for comparison.

    cd benchmarks/scone && OMP_NUM_THREADS=1 nice -n 19 python bench_fusion_ablation_scone.py

Writes ``results/<--name>.json`` and ``.png`` (``--out``). Seeds can run in separate processes (``--seeds 1 2
--name part2 --out /tmp/x``) and be reported together with ``--merge /tmp/x/part1.json /tmp/x/part2.json``.
``--report results/X.json`` re-reports a results file (an ablation's or an ``--axes`` one) and rewrites its plot
``results/X.png``, the JSON unchanged. Every "±" is the sample standard deviation over seeds (ddof=1).

Both scaling axes (issue #13 item 3): one process per (S, depth) point of one configuration, without the base, then
``--axes`` reports loss minus the base against S and depth (the first file holds the base runs)::

    python bench_fusion_ablation_scone.py --configs replace_id --skip-base --num-fgrams 100000 --name S100000_L1 --out /tmp/axes
    python bench_fusion_ablation_scone.py --configs replace_id --name scaling_axes_scone \
        --axes results/fusion_ablation_scone.json /tmp/axes/S*.json
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import LlamaForCausalLM

from corpus_scone import add_results_options, load_data, make_schedule, match_blocks, seed_std
from hf_efficient_lm.eval import rows_nll
from hf_efficient_lm.io_utils import atomic_dir, atomic_file
from hf_efficient_lm.scone import FGRAM_RECIPES, SconeLlamaForCausalLM, mine_fgrams
from hf_efficient_lm.train import llama_config_from_preset
from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure

NO_EXTRAS = {"fgram_final_norm": False, "fgram_output_scale": False}
WITH_EXTRAS = {"fgram_final_norm": True, "fgram_output_scale": True}
IDENTITY = {"fgram_init": "identity"}
# name -> (config overrides, learning-rate multiplier on A_f); None = the plain base Llama
CONFIGS = {
    "base": None,
    "replace": (dict(FGRAM_RECIPES["paper"]), 1.0),
    "replace_ns": ({"fgram_fusion": "replace", **WITH_EXTRAS}, 1.0),
    "gated": (dict(FGRAM_RECIPES["gated"]), 1.0),
    "gated_plain": ({"fgram_fusion": "gated", **NO_EXTRAS}, 1.0),
    "replace_id": ({**FGRAM_RECIPES["paper"], **IDENTITY}, 1.0),
    "replace_ns_id": ({"fgram_fusion": "replace", **WITH_EXTRAS, **IDENTITY}, 1.0),
    "gated_id": ({**FGRAM_RECIPES["gated"], **IDENTITY}, 1.0),
    "gated_plain_id": ({"fgram_fusion": "gated", **NO_EXTRAS, **IDENTITY}, 1.0),
    "replace_lr10": (dict(FGRAM_RECIPES["paper"]), 10.0),
}
# the grid of issue #13 item 1: {replace, gated} x {no norm/scale, norm + scale} x {random, identity init}
GRID = ["base", "replace", "replace_ns", "gated", "gated_plain", "replace_id", "replace_ns_id", "gated_id",
        "gated_plain_id"]
LABELS = {
    "base": "base Llama",
    "replace": "replace (paper)",
    "replace_ns": "replace + norm + scale",
    "gated": "gated + norm + scale (ours)",
    "gated_plain": "gated, no norm/scale",
    "replace_id": "replace, identity init",
    "replace_ns_id": "replace + norm + scale, identity init",
    "gated_id": "gated + norm + scale, identity init",
    "gated_plain_id": "gated, no norm/scale, identity init",
    "replace_lr10": "replace, A_f LR x10",
}
BUCKETS = [(0, 0), (1, 9), (10, 99), (100, 10**12)]  # times the f-gram was seen in the continual-training batches


def bucket_name(low: int, high: int) -> str:
    return f"seen {low}" if low == high else (f"seen {low}+" if high >= 10**12 else f"seen {low}-{high}")


# ------------------------------------------------------------------------------------------------------------ base
def build_base(args, root: Path, tokenizer, blocks: np.ndarray) -> Path:
    """Pretrain the base Llama on the first half of the blocks (seeded), cache it; reused when present."""
    base_dir = root / f"base_steps{args.base_steps}"
    if (base_dir / "model.safetensors").exists():
        return base_dir
    config = llama_config_from_preset(args.preset, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    pretrain = blocks[: len(blocks) // 2]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.base_lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = make_schedule(optimizer, max(1, args.base_steps), 30)
    generator = torch.Generator().manual_seed(12345)
    model.train()
    # --base-steps 0 keeps the random initialisation: the "from scratch" protocol of the earlier quality study
    for _ in tqdm(range(args.base_steps), desc="pretrain base"):
        ids = torch.from_numpy(pretrain[torch.randint(0, len(pretrain), (args.batch,), generator=generator).numpy()])
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    with atomic_dir(base_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return base_dir


# ------------------------------------------------------------------------------------------------------- models
def make_model(name: str, base_dir: Path, vocab, layers: int, seed: int):
    torch.manual_seed(1000 + seed)  # A_f's initialisation depends on the seed
    if CONFIGS[name] is None:
        return LlamaForCausalLM.from_pretrained(base_dir)
    overrides, _ = CONFIGS[name]
    # fgram_init="identity" (a config field): A_f's residual branches and positions start at 0, output = T(x_i)
    model = SconeLlamaForCausalLM.from_pretrained(base_dir, fgram_vocab=vocab, fgram_num_layers=layers, **overrides)
    return model


@torch.no_grad()
def fgram_stats(model, eval_blocks: np.ndarray) -> dict:
    """Held-out coverage and how the f-gram vectors compare with the token embeddings at the matched positions."""
    if not isinstance(model, SconeLlamaForCausalLM):
        return {}
    inner = model.model
    sums = dict(v2=0.0, t2=0.0, d2=0.0, cos=0.0, n=0, tokens=0, length=0)
    for start in range(0, len(eval_blocks), 32):
        ids = torch.from_numpy(eval_blocks[start:start + 32])
        rows, lengths = model.match_fgrams(ids)
        matched = lengths >= 2
        token_embeds = inner.embed_tokens(ids)
        positions = matched.nonzero()
        vectors = inner.fgram_vectors(ids, token_embeds, positions, rows[matched], lengths[matched])
        fused = inner.scone_embeddings(ids, rows, lengths)[matched]
        t = token_embeds[matched]
        sums["v2"] += float(vectors.pow(2).sum())
        sums["t2"] += float(t.pow(2).sum())
        sums["d2"] += float((fused - t).pow(2).sum())
        sums["cos"] += float(torch.nn.functional.cosine_similarity(vectors, t, dim=-1).sum())
        sums["n"] += int(matched.sum())
        sums["tokens"] += ids.numel()
        sums["length"] += int(lengths[matched].sum())
    n, width = sums["n"], token_embeds.shape[-1]
    stats = {
        "coverage": n / sums["tokens"], "mean_match_len": sums["length"] / n,
        "rms_fgram": math.sqrt(sums["v2"] / (n * width)), "rms_token": math.sqrt(sums["t2"] / (n * width)),
        "cos_fgram_token": sums["cos"] / n,
        "input_change": math.sqrt(sums["d2"] / sums["t2"]),  # ||fused - T|| / ||T|| at matched positions
    }
    stats["rms_ratio"] = stats["rms_fgram"] / stats["rms_token"]
    if inner.fgram_gate is not None:
        stats["gate_mean_abs"] = float(inner.fgram_gate.abs().mean())
    if inner.fgram_model.output_scale is not None:
        stats["output_scale_mean"] = float(inner.fgram_model.output_scale.mean())
    return stats


def heldout_loss(model, eval_blocks: np.ndarray) -> float:
    model.eval()
    loss = rows_nll(model, eval_blocks, batch_size=32).loss
    model.train()
    return loss


@torch.no_grad()
def token_nll(model, eval_blocks: np.ndarray) -> np.ndarray:
    """``[N, T-1]`` per-token NLL (nats) of predicting ``row[1:]``."""
    model.eval()
    out = []
    for start in range(0, len(eval_blocks), 32):
        ids = torch.from_numpy(eval_blocks[start:start + 32])
        logits = model(input_ids=ids).logits[:, :-1].float()
        out.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").numpy())
    return np.concatenate(out)


def train_run(name: str, model, blocks: np.ndarray, args, seed: int, eval_blocks: np.ndarray,
              block_rows: np.ndarray) -> tuple[dict, np.ndarray]:
    """Continual training; returns the loss curve and how many times each f-gram row occurred in the batches."""
    lr_mult = 1.0 if CONFIGS[name] is None else CONFIGS[name][1]
    fgram_params = [p for n, p in model.named_parameters() if "fgram_model" in n]
    fgram_ids = {id(p) for p in fgram_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in fgram_ids], "lr": args.lr}]
    if fgram_params:
        groups.append({"params": fgram_params, "lr": args.lr * lr_mult})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = make_schedule(optimizer, args.steps, 10)
    generator = torch.Generator().manual_seed(seed)  # same batches for every configuration of a seed
    seen = np.zeros(args.num_fgrams + 1, dtype=np.int64)
    curve = {"step": [0], "loss": [heldout_loss(model, eval_blocks)], "train_loss": []}
    model.train()
    for step in tqdm(range(1, args.steps + 1), desc=f"{name} seed {seed}", leave=False):
        index = torch.randint(0, len(blocks), (args.batch,), generator=generator).numpy()
        ids = torch.from_numpy(blocks[index])
        rows = block_rows[index]
        seen += np.bincount(rows[rows >= 0], minlength=len(seen))[: len(seen)]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        curve["train_loss"].append(float(loss))
        if step in args.eval_steps or step == args.steps:
            curve["step"].append(step)
            curve["loss"].append(heldout_loss(model, eval_blocks))
    model.eval()
    return curve, seen


# ------------------------------------------------------------------------------------------------------- report
def summarise(results: dict) -> None:
    runs = results["runs"]
    base_final = np.array([r["curve"]["loss"][-1] for r in runs["base"]])
    base0 = runs["base"][0]["curve"]["loss"][0]
    print(f"\nbase step-0 held-out loss {base0:.4f}; coverage {results['coverage']:.1%}; "
          f"{results['train_tokens']:,} continual tokens")
    print("\n| configuration | RMS A_f / RMS T (step 0) | cos(A_f, T) | input change | step-0 loss (jump) | "
          "final loss, mean ± sample std | vs base (final) |")
    print("|---|---|---|---|---|---|---|")
    for name, seeds in runs.items():
        s0 = [r["stats0"] for r in seeds]
        l0 = np.array([r["curve"]["loss"][0] for r in seeds])
        final = np.array([r["curve"]["loss"][-1] for r in seeds])
        delta = final - base_final
        if s0[0]:
            geo = (f"{np.mean([s['rms_ratio'] for s in s0]):.2f} | {np.mean([s['cos_fgram_token'] for s in s0]):.2f}"
                   f" | {np.mean([s['input_change'] for s in s0]):.2f}")
        else:
            geo = "— | — | —"
        print(f"| {LABELS[name]} | {geo} | {l0.mean():.3f} ({l0.mean() - base0:+.3f}) | {final.mean():.4f} ± "
              f"{seed_std(final):.4f} | {delta.mean():+.4f} ± {seed_std(delta):.4f} "
              f"({100 * (math.exp(delta.mean()) - 1):+.1f}% ppl) |")
    print("\nheld-out NLL minus the base trained alike, by f-gram training count (mean over seeds):")
    names = [n for n in runs if n != "base" and all("buckets" in r for r in runs[n])]  # (--skip-base parts: none)
    if not names:
        return
    keys = list(runs[names[0]][0]["buckets"])
    print("| configuration | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in names:
        cells = []
        for key in keys:
            values = [r["buckets"][key]["delta"] for r in runs[name]]
            cells.append(f"{np.mean(values):+.3f} ({runs[name][0]['buckets'][key]['share']:.0%})")
        print(f"| {LABELS[name]} | " + " | ".join(cells) + " |")


def plot(results: dict, path: Path) -> None:
    runs = results["runs"]
    fig, axes = new_figure(1, 3, figsize=(16, 4.6))
    base_curves = {r["seed"]: np.array(r["curve"]["loss"]) for r in runs["base"]}
    for name, seeds in runs.items():
        steps = seeds[0]["curve"]["step"]
        losses = np.array([np.array(r["curve"]["loss"]) - base_curves[r["seed"]] for r in seeds])
        mean, std = losses.mean(0), seed_std(losses)
        line, = axes[0].plot(steps, mean, "o-", ms=3, label=LABELS[name])
        axes[0].fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axes[0].set_xlabel("continual-training step")
    axes[0].set_ylabel("held-out loss minus base, same seed (nats/token)")
    axes[0].set_yscale("symlog", linthresh=0.02)
    axes[0].set_title("held-out loss vs the base, mean ± sample std over seeds")
    axes[0].legend(fontsize=7)
    names = list(runs)
    base_final = np.array([r["curve"]["loss"][-1] for r in runs["base"]])
    base0 = runs["base"][0]["curve"]["loss"][0]
    x = np.arange(len(names))
    jump = [np.mean([r["curve"]["loss"][0] for r in runs[n]]) - base0 for n in names]
    gap = [np.array([r["curve"]["loss"][-1] for r in runs[n]]) - base_final for n in names]
    axes[1].bar(x - 0.2, jump, 0.4, label="step 0 (wrap, no training)")
    axes[1].bar(x + 0.2, [g.mean() for g in gap], 0.4, yerr=[seed_std(g) for g in gap], capsize=3,
                label=f"after {results['args']['steps']} steps")
    axes[1].axhline(0, color="gray", lw=0.8)
    axes[1].set_yscale("symlog", linthresh=0.02)
    axes[1].set_xticks(x, [LABELS[n] for n in names], rotation=30, ha="right", fontsize=7)
    axes[1].set_ylabel("held-out loss minus base (nats)")
    axes[1].set_title("loss vs the base trained alike")
    axes[1].legend(fontsize=7)
    scone = [n for n in names if n != "base" and all("buckets" in r for r in runs[n])]
    keys = list(runs[scone[0]][0]["buckets"])
    width = 0.8 / len(scone)
    for i, name in enumerate(scone):
        values = np.array([[r["buckets"][k]["delta"] for k in keys] for r in runs[name]])
        axes[2].bar(np.arange(len(keys)) + (i - len(scone) / 2 + 0.5) * width, values.mean(0), width,
                    yerr=seed_std(values), capsize=2, label=LABELS[name], color=f"C{names.index(name)}")  # = panel 1
    axes[2].axhline(0, color="gray", lw=0.8)
    axes[2].set_yscale("symlog", linthresh=0.02)
    axes[2].set_xticks(np.arange(len(keys)), keys, fontsize=8)
    axes[2].set_ylabel("held-out NLL minus base (nats/token)")
    axes[2].set_title("by how often the position's f-gram was trained")
    axes[2].legend(fontsize=6)
    write_figure(fig, path, dpi=110)


def summarise_axes(parts: list[dict], config: str, path: Path) -> dict:
    """Issue #13 item 3: ``config``'s final held-out loss minus the base (same seed) at every (S, A_f depth) point.

    ``parts``: ablation results at one protocol (same data, steps, seeds); the first one holds the ``base`` runs.
    Returns ``{"S=..,L=..": {...}}`` and plots loss-vs-base against S (depth 1) and against depth (smallest S).
    """
    base = {r["seed"]: r["curve"]["loss"][-1] for part in parts for r in part.get("runs", {}).get("base", [])}
    points = {}
    if "points" in parts[0]:  # a written --axes result (--report): its points, as summarise_axes returned them
        for entry in parts[0]["points"].values():
            points[(entry["num_fgrams"], entry["fgram_layers"])] = {
                "coverage": entry["coverage"], "delta": dict(zip(entry["seeds"], entry["delta"]))}
        parts = []
    for part in parts:
        if part["train_tokens"] != parts[0]["train_tokens"]:
            raise ValueError("every part of a sweep must train the same number of tokens")
        for r in part["runs"].get(config, []):
            key = (part["args"]["num_fgrams"], part["args"]["fgram_layers"])
            entry = points.setdefault(key, {"coverage": part["coverage"], "delta": {}})
            if r["seed"] not in base:
                raise ValueError(f"no base run for seed {r['seed']}: the first --axes file must hold the base runs "
                                 "of every seed of the sweep")
            entry["delta"][r["seed"]] = r["curve"]["loss"][-1] - base[r["seed"]]
    tokens = f"{parts[0]['train_tokens']:,} continual tokens" if parts else "re-reported"
    print(f"\n{LABELS[config]}, {tokens}: held-out loss minus the base trained alike (same seed), mean ± sample std "
          "over seeds")
    print("| S | A_f layers | held-out coverage | seeds | vs base (nats) | perplexity |")
    print("|---|---|---|---|---|---|")
    out = {}
    for (num, layers), entry in sorted(points.items()):
        delta = np.array([entry["delta"][s] for s in sorted(entry["delta"])])
        print(f"| {num:,} | {layers} | {entry['coverage']:.1%} | {len(delta)} | {delta.mean():+.4f} ± "
              f"{seed_std(delta):.4f} | {100 * (math.exp(delta.mean()) - 1):+.2f}% |")
        out[f"S={num},L={layers}"] = {"num_fgrams": num, "fgram_layers": layers, "coverage": entry["coverage"],
                                      "seeds": sorted(entry["delta"]), "delta": [float(d) for d in delta]}
    fig, axes = new_figure(1, 2, figsize=(10, 4))
    smallest = min(num for num, _ in points)
    for ax, select, xlabel, log in ((axes[0], lambda k: k[1] == 1, "f-grams S (A_f depth 1)", True),
                                    (axes[1], lambda k: k[0] == smallest, f"A_f layers (S = {smallest:,})", False)):
        keys = sorted(k for k in points if select(k))
        xs = [k[0] if log else k[1] for k in keys]
        values = [np.array(list(points[k]["delta"].values())) for k in keys]
        ax.errorbar(xs, [v.mean() for v in values], yerr=[seed_std(v) for v in values], fmt="o-", capsize=4)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log" if log else "linear")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out loss minus base (nats/token)")
    axes[0].set_title(f"{LABELS[config]}: more f-grams")
    axes[1].set_title(f"{LABELS[config]}: a deeper A_f")
    write_figure(fig, path, dpi=110)
    return out


# ------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--preset", default="1m")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--chars-per-domain", type=int, default=2_000_000, help="training text read per domain")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--base-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=100, help="continual-training steps per run")
    parser.add_argument("--lr", type=float, default=1e-3, help="continual-training peak LR (every configuration)")
    parser.add_argument("--eval-steps", type=int, nargs="+", default=[10, 25, 50, 75])
    parser.add_argument("--num-fgrams", type=int, default=10_000)
    parser.add_argument("--fgram-layers", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=GRID, choices=list(CONFIGS))
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens per domain")
    parser.add_argument("--skip-base", action="store_true",
                        help="do not train the base (merge with a part that has it; no per-f-gram-count split)")
    parser.add_argument("--axes", nargs="+", metavar="JSON",
                        help="only report the S / A_f-depth sweep of --configs[-1] over these results (the first "
                             "one holds the base runs; issue #13 item 3)")
    add_results_options(parser, "fusion_ablation_scone",
                        "only re-report a results file (an ablation or --axes one); rewrites its .png, not the JSON")
    args = parse_benchmark_args(parser, argv)
    out = Path(args.out)
    if args.report:
        path = Path(args.report)
        results = json.loads(path.read_text())
        if "points" in results:
            summarise_axes([results], results["config"], path.with_suffix(".png"))
        elif "base" in results["runs"]:
            summarise(results)
            plot(results, path.with_suffix(".png"))
        print(f"\nre-reported {path}; wrote {path.with_suffix('.png')}")
        return
    if args.axes:
        table = summarise_axes([json.loads(Path(p).read_text()) for p in args.axes], args.configs[-1],
                               out / f"{args.name}.png")
        with atomic_file(out / f"{args.name}.json", "w") as handle:
            json.dump({"config": args.configs[-1], "points": table, "parts": [Path(p).name for p in args.axes]},
                      handle, indent=1)
        return
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        results = parts[0]
        for part in parts[1:]:
            for key in ("coverage", "train_tokens"):
                if part[key] != results[key]:
                    raise ValueError(f"cannot merge {key}={part[key]} with {results[key]}: different settings")
            for name, seeds in part["runs"].items():
                have = {r["seed"] for r in results["runs"].setdefault(name, [])}
                # a part that re-ran the (seeded, deterministic) base for its own comparisons: keep one copy
                results["runs"][name].extend(r for r in seeds if r["seed"] not in have)
            results["wall_s"] += part["wall_s"]
            results["cpu_s"] += part["cpu_s"]
        results["args"]["seeds"] = sorted({r["seed"] for seeds in results["runs"].values() for r in seeds})
        results["merged_from"] = [Path(p).name for p in args.merge]
        with atomic_file(out / f"{args.name}.json", "w") as handle:
            json.dump(results, handle, indent=1)
        summarise(results)
        plot(results, out / f"{args.name}.png")
        print(f"\nCPU {results['cpu_s']:.0f}s over all parts; wrote {out}/{args.name}.json/.png")
        return
    if "base" not in args.configs and not args.skip_base:
        args.configs = ["base", *args.configs]
    started, cpu_started = time.perf_counter(), time.process_time()

    root, tokenizer, docs, blocks, eval_blocks = load_data(args)
    base_dir = build_base(args, root, tokenizer, blocks)
    continual = blocks[len(blocks) // 2:]
    barriers = [tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id]
    vocab = mine_fgrams(docs, num_fgrams=args.num_fgrams, barrier_ids=barriers, tokenizer=tokenizer,
                        show_progress=False)
    args.num_fgrams = vocab.num_fgrams
    # per row, so a match never reaches into the previous block (the model's own matching of a batch row cannot
    # either); until 2026-12-05 the blocks were matched as one flat array, and 0.08% of positions matched across a
    # block boundary (the committed results have that)
    block_rows, _ = match_blocks(vocab, continual, num_threads=1)
    eval_rows, eval_len = (x.numpy() for x in vocab.match(torch.from_numpy(eval_blocks)))
    coverage = float((eval_len >= 2).mean())
    print(f"{len(blocks):,} blocks of {args.block} ({len(continual):,} for continual training), S = {vocab.num_fgrams:,}"
          f", held-out coverage {coverage:.1%}, {eval_blocks.size:,} held-out tokens")

    results = {"args": vars(args), "coverage": coverage, "train_tokens": args.steps * args.batch * args.block,
               "runs": {}}
    base_nll = {}
    # nll[:, t] predicts token t+1 from an input whose last position t carries the f-gram ending at t
    input_rows, input_len = eval_rows[:, :-1], eval_len[:, :-1]
    for name in args.configs:
        results["runs"][name] = []
        for seed in args.seeds:
            model = make_model(name, base_dir, vocab, args.fgram_layers, seed)
            stats0 = fgram_stats(model, eval_blocks)
            run_start = time.process_time()
            curve, seen = train_run(name, model, continual, args, seed, eval_blocks, block_rows)
            nll = token_nll(model, eval_blocks)
            record = {"seed": seed, "stats0": stats0, "stats_final": fgram_stats(model, eval_blocks),
                      "curve": curve, "cpu_s": time.process_time() - run_start}
            if name == "base":
                base_nll[seed] = nll
            elif seed in base_nll:
                delta = nll - base_nll[seed]
                counts = np.where(input_len >= 2, seen[np.maximum(input_rows, 0)], -1)
                record["buckets"] = {"no f-gram": {"delta": float(delta[counts < 0].mean()),
                                                   "share": float((counts < 0).mean())}}
                for low, high in BUCKETS:
                    mask = (counts >= low) & (counts <= high)
                    record["buckets"][bucket_name(low, high)] = {
                        "delta": float(delta[mask].mean()) if mask.any() else float("nan"),
                        "share": float(mask.mean())}
            results["runs"][name].append(record)
            print(f"{name} seed {seed}: held-out loss {curve['loss'][0]:.4f} -> {curve['loss'][-1]:.4f} "
                  f"({record['cpu_s']:.0f} CPU-s)", flush=True)
    results["wall_s"], results["cpu_s"] = time.perf_counter() - started, time.process_time() - cpu_started
    with atomic_file(out / f"{args.name}.json", "w") as handle:
        json.dump(results, handle, indent=1)
    if "base" in results["runs"]:
        summarise(results)
        plot(results, out / f"{args.name}.png")
    print(f"\nwall {results['wall_s']:.0f}s, CPU {results['cpu_s']:.0f}s; wrote {out}/{args.name}.json/.png")


if __name__ == "__main__":
    main()
