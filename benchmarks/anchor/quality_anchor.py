"""Quality of AnLLM at CPU scale, in the paper's terms: continual pre-training of a trained base Llama with the AnSAN
mask (EP anchors = the exact ``.`` token; AC = an inserted ``<AC>``), against the same base continually trained the
same steps on the same data without anchors (the causal baseline), with seeds.

(a) Held-out perplexity per corpus domain, on pieces of the ``valid`` documents (whole sentences, at most
    ``--piece-chars`` characters): "full" = plain causal attention and a full cache on the same weights; "anchor" =
    AnLLM inference through the **pruned** ``AnchorCache``, fed ``--chunk`` tokens at a time (a finished sentence's
    keys/values are gone before the next chunk reads the cache); "compact" = the same with the official real-time
    code's compacted positions (``position_mode="compact"``). The one-forward AnSAN-mask perplexity is also computed
    and its gap to the pruned figure reported (0 up to float error: the two are the same computation). AC: ``<AC>``
    is read but never scored, and "full" reads the text without ``<AC>``, so every column scores the same tokens.
(b) Few-shot accuracy on "which sentence comes next?" (``anchor_mcq.next_sentence_items``): context = 2 sentences of a
    held-out document of any domain, 4 choices, the distractors length-matched sentences of other documents, answer
    positions balanced; 0- and 5-shot (demonstrations from the train split). ``acc_pmi`` (the headline: summed
    log-probability of the choice after the prompt minus after BOS alone, lm-eval's ``acc_mutual_info``), ``acc``
    (summed log-probability) and ``acc_norm`` (per byte). Chance = 0.25. A 1M-parameter model's summed
    log-probability mostly measures how likely a sentence is on its own, so acc / acc_norm sit near chance even for
    the base; acc_pmi asks what the context adds.
(c) KV cache kept and total inference time of (b)'s 5-shot scoring, anchor pruned cache vs full caching, timed in
    interleaved chunks of items (wall and process CPU time) on the same weights.

Results: ``benchmarks/anchor/results/quality_anchor.{json,md,png}``; checkpoints under ``--work`` (outside git). A
rerun reuses a finished training run only when every setting that shapes the trained model (the base checkpoint's and
the training data's sha256, mode, seed, steps, batch, max length, lr, warm-up, pieces, piece length) equals the one
stored in its ``final/quality_train_settings.json``, else it retrains; an evaluation cache is reused only when its
evaluation settings and the sha256 of the evaluated checkpoint (``checkpoint_fingerprint``) both match.

    OMP_NUM_THREADS=1 python benchmarks/anchor/quality_anchor.py --base ~/.cache/hf_efficient_lm/base-1m \\
        --steps 150 --batch 4 --seeds 0 1 2 --mc-seeds 0 --mc-items 500
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoTokenizer, TrainingArguments

from bench_common_anchor import CACHE, OUT_DIR, corpus_texts

from hf_efficient_lm.anchor import AnchorCache, split_sentences
from hf_efficient_lm.anchor.compat_anchor import CACHE_NAME
from hf_efficient_lm.anchor.modeling_anchor_llama import AnchorLlamaForCausalLM
from hf_efficient_lm.eval import rows_nll
from hf_efficient_lm.eval.benchmarking import (
    benchmark_parser, new_figure, parse_benchmark_args, write_figure,
)
from hf_efficient_lm.io_utils import atomic_file
from hf_efficient_lm.tools.anchor_continual import (
    AnchorTrainArguments, build_anchor_model, run_anchor_training,
)
from hf_efficient_lm.tools.anchor_mcq import evaluate_multiple_choice, next_sentence_items

DOMAINS = ["pydocs", "kernel", "code", "dictionary", "fortunes"]
LABELS = {"base": "base Llama", "none": "causal (Llama +steps)", "ep": "AnLLM-EP", "ac": "AnLLM-AC",
          "ep0": "EP, untrained", "ac0": "AC, untrained"}


def pieces(text: str, max_chars: int) -> list[str]:
    """``text`` cut into runs of whole sentences of at most ``max_chars`` characters (a longer sentence is dropped)."""
    out, current = [], ""
    for sentence in split_sentences(text):
        if len(current) + len(sentence) > max_chars:
            if current.strip():
                out.append(current.strip())
            current = "" if len(sentence) > max_chars else sentence
        else:
            current += sentence
    if current.strip():
        out.append(current.strip())
    return out


def training_file(path: Path, per_domain: int, max_chars: int, seed: int = 0) -> Path:
    """A jsonl.gz of ``per_domain`` document pieces from each domain's train split, shuffled (the same for every
    variant and seed: the seeds change the Trainer's data order, not the data)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    rows = []
    for domain in DOMAINS:
        docs = corpus_texts(domain, "train")
        rng.shuffle(docs)
        taken = []
        for doc in docs:
            taken += [p for p in pieces(doc, max_chars) if len(p) >= max_chars // 4]
            if len(taken) >= per_domain:
                break
        rows += taken[:per_domain]
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as raw, gzip.open(raw, "wt") as handle:
        for text in rows:
            handle.write(json.dumps({"text": text}) + "\n")
    return path


def eval_texts(per_domain: int, max_chars: int) -> dict[str, list[str]]:
    """Per domain: the first piece (>= max_chars / 2 characters) of up to ``per_domain`` held-out documents."""
    out = {}
    for domain in DOMAINS:
        chosen = []
        for doc in corpus_texts(domain, "valid"):
            first = next((p for p in pieces(doc, max_chars) if len(p) >= max_chars // 2), None)
            if first is not None:
                chosen.append(first)
            if len(chosen) == per_domain:
                break
        out[domain] = chosen
    return out


# ----------------------------------------------------------------------------------------------- (a) perplexity
@torch.no_grad()
def pruned_nll(model, rows: list[list[int]], chunk: int, ignore: set[int], position_mode: str = "absolute"):
    """Summed NLL of each row decoded through the pruned ``AnchorCache``, ``chunk`` tokens per forward, and the KV
    kept at the end of the row. Returns ``(nats, tokens, kept fraction)`` summed / averaged over rows."""
    old_mode = model.config.position_mode
    model.config.position_mode = position_mode
    nats, tokens, kept = 0.0, 0, 0.0
    try:
        for ids in rows:
            ids_t = torch.tensor([ids], device=model.device)
            cache = AnchorCache(config=model.config)
            logits = []
            for start in range(0, len(ids) - 1, chunk):
                piece = ids_t[:, start : min(start + chunk, len(ids) - 1)]
                logits.append(model(input_ids=piece, use_cache=True, **{CACHE_NAME: cache}).logits[0].float())
            targets = ids_t[0, 1:].clone()
            for bad in ignore:
                targets[targets == bad] = -100
            nats += float(torch.nn.functional.cross_entropy(torch.cat(logits), targets, ignore_index=-100,
                                                            reduction="sum"))
            tokens += int((targets != -100).sum())
            kept += cache.cached_tokens() / cache.get_seq_length()
    finally:
        model.config.position_mode = old_mode
    return nats, tokens, kept / len(rows)


def eval_rows(tokenizer, text: str, max_length: int, ac_id: int | None) -> tuple[list[int], list[int]]:
    """``(plain ids, AC ids)`` of ``text``, both at most ``max_length`` long and holding the *same* text tokens:
    the AC row is the plain row with ``<AC>`` inserted after the token that ends each sentence. (Tokenising
    sentence by sentence, as training does, splits whitespace runs at line ends differently, which would make the
    columns score different tokens.)"""
    encoding = tokenizer(text, add_special_tokens=False)
    ids = encoding["input_ids"]
    ends, position = [], 0
    for sentence in split_sentences(text)[:-1]:
        position += len(sentence)
        token = None
        for char in range(position - 1, max(position - 8, -1), -1):  # a trimmed whitespace char maps to no token
            token = encoding.char_to_token(char)
            if token is not None:
                break
        if token is not None:
            ends.append(token)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    keep = max_length - len(bos)
    while True:
        plain = bos + ids[:keep]
        if ac_id is None:
            return plain, plain
        ends_kept = sorted({e for e in ends if e < keep - 1})
        ac = list(bos)
        for index, token in enumerate(ids[:keep]):
            ac.append(token)
            if ends_kept and index == ends_kept[0]:
                ac.append(ac_id)
                ends_kept.pop(0)
        if len(ac) <= max_length:
            return plain, ac
        keep -= len(ac) - max_length


def perplexities(model, tokenizer, texts: dict[str, list[str]], anchor_mode: str | None, chunk: int,
                 max_length: int) -> dict:
    """Per domain: ``[nats, text tokens]`` of ``full`` and (anchor models) ``anchor`` (pruned cache), ``compact``,
    ``masked`` (one AnSAN forward); ``<AC>`` is read, never scored, so every column covers the same text tokens."""
    out = {}
    ac_id = model.config.anchor_token_ids[0] if anchor_mode == "ac" else None
    for domain, docs in texts.items():
        pairs = [eval_rows(tokenizer, t, max_length, ac_id) for t in docs]
        plain = [p for p, _ in pairs]
        zero_flags = lambda ids, _rows: {"anchor_flags": torch.zeros_like(ids, dtype=torch.bool)}  # noqa: E731
        full = rows_nll(model, plain, batch_size=1, model_inputs=zero_flags)
        row = {"full": [full.nats, full.tokens]}
        if anchor_mode is not None:
            rows = [a for _, a in pairs]
            ignore = set() if ac_id is None else {ac_id}
            masked = rows_nll(model, rows, batch_size=1, ignore_ids=ignore)
            nats, tokens, kept = pruned_nll(model, rows, chunk, ignore)
            c_nats, c_tokens, _ = pruned_nll(model, rows, chunk, ignore, "compact")
            assert tokens == full.tokens == masked.tokens == c_tokens, (tokens, full.tokens, masked.tokens)
            row.update(anchor=[nats, tokens], compact=[c_nats, c_tokens], masked=[masked.nats, masked.tokens],
                       kv_kept=kept)
        out[domain] = row
    return out


# ---------------------------------------------------------------------------------- (b), (c) multiple choice
def multiple_choice(model, tokenizer, items, demos, modes, chunk_items: int) -> dict:
    """Accuracy / KV / time per mode; the modes alternate over chunks of items so they share the machine's noise."""
    totals = {m: dict(correct=0.0, correct_norm=0.0, correct_pmi=0.0, kv=0.0, wall=0.0, cpu=0.0, prefix_tokens=0)
              for m in modes}
    for start in tqdm(range(0, len(items), chunk_items), desc=f"MC {len(demos)}-shot {'/'.join(modes)}",
                      leave=False):
        chunk = items[start : start + chunk_items]
        for mode in (modes if (start // chunk_items) % 2 == 0 else modes[::-1]):
            r = evaluate_multiple_choice(model, tokenizer, chunk, demos, mode=mode, show_progress=False,
                                         unconditional=True)
            t = totals[mode]
            # time the prompt + choice scoring only (the unconditional pass for acc_pmi is left out of both)
            t["cpu"] += r["cpu_seconds"]
            t["wall"] += r["seconds"]
            t["correct_pmi"] += r["accuracy_pmi"] * len(chunk)
            t["correct"] += r["accuracy"] * len(chunk)
            t["correct_norm"] += r["accuracy_norm"] * len(chunk)
            t["kv"] += r["kv_positions"] * len(chunk)
            t["prefix_tokens"] = r["prefix_tokens"]
    n = len(items)
    return {m: dict(accuracy=t["correct"] / n, accuracy_norm=t["correct_norm"] / n,
                    accuracy_pmi=t["correct_pmi"] / n, kv_positions=t["kv"] / n,
                    wall_s=t["wall"], cpu_s=t["cpu"], prefix_tokens=t["prefix_tokens"], items=n)
            for m, t in totals.items()}


def evaluate(model, tokenizer, anchor_mode, texts, mc_items, mc_demos, args, with_mc: bool, cache: Path,
             key: dict, model_key) -> dict:
    """(a) and, if ``with_mc``, (b)+(c) of one model, each cached in ``cache``-ppl.json / -mc.json under ``key``
    (the evaluation settings) plus ``model_key`` (what identifies the evaluated model: its checkpoint's
    ``checkpoint_fingerprint``), so a cache of another model, e.g. one since retrained, is ignored."""
    model.eval()
    result = {"ppl": cached_eval(cache.with_name(cache.name + "-ppl.json"), {**key["ppl"], "model": model_key},
                                 lambda: perplexities(model, tokenizer, texts, anchor_mode, args.chunk,
                                                      args.max_length))}
    if with_mc:
        modes = ("full",) if anchor_mode is None else ("full", "anchor")
        result["mc"] = cached_eval(cache.with_name(cache.name + "-mc.json"), {**key["mc"], "model": model_key},
                                   lambda: {str(shots): multiple_choice(model, tokenizer, mc_items,
                                                                        mc_demos[:shots], modes, args.mc_chunk)
                                            for shots in args.shots})
    return result


# ------------------------------------------------------------------------------------------------- training
TRAIN_SETTINGS = "quality_train_settings.json"  # in a run's final/: the settings it was trained with
# the files of a checkpoint folder an evaluation depends on (not the Trainer's bookkeeping, e.g. training_args.bin)
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")


def sha256_of(paths) -> str:
    """sha256 over the names and bytes of ``paths`` (in the given order)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def checkpoint_fingerprint(folder) -> str:
    """sha256 of a checkpoint folder's config, tokenizer and weight files: equal fingerprints, equal models."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name in CHECKPOINT_FILES or p.name.endswith((".safetensors", ".safetensors.index.json"))
        or (p.name.startswith("pytorch_model") and p.name.endswith((".bin", ".bin.index.json")))))
    if not any(p.name.endswith((".safetensors", ".bin")) for p in files):
        raise FileNotFoundError(f"no weights in {folder}")
    return sha256_of(files)


def training_settings(args, data_file: Path, mode: str, seed: int) -> dict:
    """Every input that changes the model ``train`` produces; a finished run is reused only when these are equal."""
    return {"base_sha256": checkpoint_fingerprint(args.base), "data_file": Path(data_file).name,
            "data_sha256": sha256_of([data_file]), "train_pieces": args.train_pieces, "piece_chars": args.piece_chars,
            "anchor_mode": mode, "seed": seed, "steps": args.steps, "batch": args.batch,
            "max_length": args.max_length, "lr": args.lr, "lr_scheduler": "constant_with_warmup",
            "warmup": args.warmup}


def reusable_run(final: Path, settings: dict) -> bool:
    """Whether ``final`` holds a finished run trained with exactly ``settings``."""
    stored = final / TRAIN_SETTINGS
    if not ((final / "anchor_train_metrics.json").exists() and stored.exists()):
        return False  # unfinished, or finished before the settings were stored: its settings are unknown
    return json.loads(stored.read_text()) == settings


def train(args, data_file: Path, mode: str, seed: int) -> Path:
    run_dir = Path(args.work) / f"{mode}-s{seed}"
    final = run_dir / "final"
    settings = training_settings(args, data_file, mode, seed)
    if reusable_run(final, settings):
        return final
    (final / TRAIN_SETTINGS).unlink(missing_ok=True)  # a run killed while retraining must not look finished
    train_args = AnchorTrainArguments(base_model=args.base, data_files=[str(data_file)], anchor_mode=mode,
                                      max_length=args.max_length, overwrite_output_dir=True)
    final = run_anchor_training(train_args, TrainingArguments(
        output_dir=str(run_dir), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=args.warmup,
        logging_steps=max(1, min(25, args.steps // 4)), save_strategy="no", report_to=[], seed=seed, data_seed=seed,
        dataloader_pin_memory=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
    ))
    with atomic_file(final / TRAIN_SETTINGS, "w") as handle:
        json.dump(settings, handle, indent=1)
    return final


def cached_eval(path: Path, key: dict, compute):
    """``compute()`` unless ``path`` holds a result for the same ``key`` (the evaluation settings and the evaluated
    model's fingerprint; a cache written without the fingerprint never matches)."""
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as handle:
        json.dump({"key": key, "result": result}, handle)
    return result


# ---------------------------------------------------------------------------------------------- aggregation
def ppl_of(entries: list[list[float]]) -> float:
    nats = sum(e[0] for e in entries)
    tokens = sum(e[1] for e in entries)
    return math.exp(nats / tokens)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: dict) -> dict:
    """runs[variant][seed] = evaluate() result -> rows of mean / std over seeds."""
    summary = {"ppl": [], "mc": []}
    causal = runs.get("none", {})
    for variant, by_seed in runs.items():
        attentions = sorted({a for r in by_seed.values() for d in r["ppl"].values() for a in d
                             if a in ("full", "anchor", "compact", "masked")},
                            key=["full", "anchor", "compact", "masked"].index)
        for attention in attentions:
            row = {"variant": variant, "attention": attention, "seeds": sorted(by_seed)}
            for domain in [*DOMAINS, "pooled"]:
                values, ratios = [], []
                for seed, r in by_seed.items():
                    entries = ([r["ppl"][d][attention] for d in DOMAINS] if domain == "pooled"
                               else [r["ppl"][domain][attention]])
                    values.append(ppl_of(entries))
                    ref = causal.get(seed) or next(iter(causal.values()), None)
                    if ref is not None:
                        ref_entries = ([ref["ppl"][d]["full"] for d in DOMAINS] if domain == "pooled"
                                       else [ref["ppl"][domain]["full"]])
                        ratios.append(values[-1] / ppl_of(ref_entries))
                row[domain] = mean_std(values)
                if ratios:
                    row[f"{domain}_vs_causal"] = mean_std(ratios)
            if attention == "anchor":
                row["kv_kept"] = mean_std([statistics.fmean(r["ppl"][d]["kv_kept"] for d in DOMAINS)
                                           for r in by_seed.values()])
                row["masked_gap"] = max(abs(ppl_of([r["ppl"][d]["anchor"]]) / ppl_of([r["ppl"][d]["masked"]]) - 1)
                                        for r in by_seed.values() for d in DOMAINS)
            summary["ppl"].append(row)
        losses = [r["train_loss_end"] for r in by_seed.values() if "train_loss_end" in r]
        if losses:
            summary.setdefault("train_loss_end", {})[variant] = mean_std(losses)
        mc_seeds = {s: r["mc"] for s, r in by_seed.items() if "mc" in r}
        if mc_seeds:
            first = next(iter(mc_seeds.values()))
            for shots, by_mode in first.items():
                for mode in by_mode:
                    rs = [m[shots][mode] for m in mc_seeds.values()]
                    row = {"variant": variant, "shots": int(shots), "attention": mode, "seeds": sorted(mc_seeds),
                           "items": rs[0]["items"], "prefix_tokens": rs[0]["prefix_tokens"]}
                    for key in ("accuracy", "accuracy_norm", "accuracy_pmi", "kv_positions", "wall_s", "cpu_s"):
                        row[key] = mean_std([x[key] for x in rs])
                    if mode == "anchor":
                        fulls = [m[shots]["full"] for m in mc_seeds.values()]
                        row["kv_kept"] = mean_std([a["kv_positions"] / f["kv_positions"] for a, f in zip(rs, fulls)])
                        row["speedup_wall"] = mean_std([f["wall_s"] / a["wall_s"] for a, f in zip(rs, fulls)])
                        row["speedup_cpu"] = mean_std([f["cpu_s"] / a["cpu_s"] for a, f in zip(rs, fulls)])
                    summary["mc"].append(row)
    return summary


def fmt(pair, digits=2, pct=False) -> str:
    mean, std = pair
    if pct:
        return f"{100 * mean:.1f} ± {100 * std:.1f} %"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(summary: dict, settings: dict) -> str:
    lines = ["# AnchorLlama quality at CPU scale\n", f"settings: `{json.dumps(settings)}`\n",
             "## (a) held-out perplexity (mean ± std over seeds; ratio = / causal baseline, full attention)\n",
             "| model | attention | " + " | ".join(DOMAINS) + " | pooled | pooled / causal | KV kept |",
             "|---|---|" + "---|" * (len(DOMAINS) + 3)]
    for row in summary["ppl"]:
        ratio = fmt(row["pooled_vs_causal"], 3) if "pooled_vs_causal" in row else "-"
        kept = fmt(row["kv_kept"], pct=True) if "kv_kept" in row else "-"
        lines.append(f"| {LABELS[row['variant']]} | {row['attention']} | "
                     + " | ".join(fmt(row[d], 1) for d in DOMAINS) + f" | {fmt(row['pooled'], 1)} | {ratio} | {kept} |")
    gaps = [r["masked_gap"] for r in summary["ppl"] if "masked_gap" in r]
    if gaps:
        lines.append(f"\nPruned-cache vs one-forward AnSAN mask perplexity: largest relative gap {max(gaps):.1e}.\n")
    if summary.get("train_loss_end"):
        lines.append("Training loss at the end (mean of the last two logged, over all tokens incl. anchors): "
                     + ", ".join(f"{LABELS[v]} {fmt(x, 3)}" for v, x in summary["train_loss_end"].items()) + "\n")
    lines += ["## (b), (c) next-sentence multiple choice (4 choices, chance 0.25)\n",
              "| model | shots | attention | acc_pmi | acc | acc_norm | KV positions | KV kept | wall s | CPU s | "
              "speed-up (CPU) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["mc"]:
        kept = fmt(row["kv_kept"], pct=True) if "kv_kept" in row else "-"
        speed = fmt(row["speedup_cpu"]) + "x" if "speedup_cpu" in row else "-"
        lines.append(f"| {LABELS[row['variant']]} | {row['shots']} | {row['attention']} | "
                     f"{fmt(row['accuracy_pmi'], 3)} | {fmt(row['accuracy'], 3)} | "
                     f"{fmt(row['accuracy_norm'], 3)} | {fmt(row['kv_positions'], 1)} | {kept} | "
                     f"{fmt(row['wall_s'], 1)} | {fmt(row['cpu_s'], 1)} | {speed} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    fig, axes = new_figure(1, 3, figsize=(18, 5.5))
    rows = [r for r in summary["ppl"] if r["attention"] == "anchor" or (r["attention"] == "full"
                                                                        and not r["variant"].endswith("0"))]
    width = 0.8 / max(len(rows), 1)
    for k, row in enumerate(rows):
        xs = [i + k * width for i in range(len(DOMAINS) + 1)]
        keys = [*DOMAINS, "pooled"]
        axes[0].bar(xs, [row[d][0] for d in keys], width, yerr=[row[d][1] for d in keys],
                    label=f"{LABELS[row['variant']]} ({row['attention']})", hatch="//" if row["attention"] == "anchor"
                    else None)
    axes[0].set_xticks([i + 0.4 - width / 2 for i in range(len(DOMAINS) + 1)], [*DOMAINS, "pooled"])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("held-out perplexity (log)")
    axes[0].set_title("(a) perplexity, mean ± std over seeds")
    axes[0].legend(fontsize=6, ncol=2)
    mc = summary["mc"]
    labels = [f"{LABELS[r['variant']]}\n{r['attention']}" for r in mc if r["shots"] == max(x["shots"] for x in mc)]
    for k, shots in enumerate(sorted({r["shots"] for r in mc})):
        sel = [r for r in mc if r["shots"] == shots]
        axes[1].bar([i + 0.4 * k for i in range(len(sel))], [r["accuracy_pmi"][0] for r in sel], 0.4,
                    yerr=[r["accuracy_pmi"][1] for r in sel], label=f"{shots}-shot")
    axes[1].axhline(0.25, color="k", ls="--", lw=1, label="chance")
    axes[1].set_xticks([i + 0.2 for i in range(len(labels))], labels, fontsize=7, rotation=35, ha="right")
    axes[1].set_ylabel("accuracy (acc_pmi)")
    axes[1].set_title("(b) next-sentence choice (4-way)")
    axes[1].legend(fontsize=7)
    anchor_rows = [r for r in mc if r["attention"] == "anchor"]
    names = [f"{LABELS[r['variant']]}\n{r['shots']}-shot" for r in anchor_rows]
    xs = range(len(anchor_rows))
    axes[2].bar([x - 0.2 for x in xs], [r["kv_kept"][0] for r in anchor_rows], 0.4, label="KV kept (fraction)")
    axes[2].bar([x + 0.2 for x in xs], [r["speedup_cpu"][0] for r in anchor_rows], 0.4,
                yerr=[r["speedup_cpu"][1] for r in anchor_rows], label="speed-up vs full cache (CPU time)")
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set_xticks(list(xs), names, fontsize=7, rotation=35, ha="right")
    axes[2].set_title("(c) anchor cache vs full cache, MC scoring")
    axes[2].legend(fontsize=7)
    write_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--base", default=str(CACHE / "base-1m"), help="trained base Llama + tokenizer")
    parser.add_argument("--work", default=str(CACHE / "anchorq"), help="training runs and caches (outside git)")
    parser.add_argument("--modes", nargs="+", default=["none", "ep", "ac"], choices=["none", "ep", "ac"],
                        help="'none' = the same continual pre-training without anchors (the causal baseline)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--mc-seeds", nargs="+", type=int, default=None,
                        help="seeds whose models also get the MC evaluation (default: all)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per training example (block)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--train-pieces", type=int, default=600, help="training pieces per domain")
    parser.add_argument("--piece-chars", type=int, default=700, help="characters per document piece")
    parser.add_argument("--eval-docs", type=int, default=12, help="held-out pieces per domain")
    parser.add_argument("--chunk", type=int, default=64, help="tokens per forward in pruned-cache perplexity")
    parser.add_argument("--mc-items", type=int, default=500)
    parser.add_argument("--shots", nargs="+", type=int, default=[0, 5])
    parser.add_argument("--mc-chunk", type=int, default=50, help="items per interleaved timing chunk")
    parser.add_argument("--references", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate the base and the untrained conversions (--no-references: a second process "
                             "training other seeds in parallel; a final run with every seed merges all from cache)")
    parser.add_argument("--untrained-mc", action="store_true",
                        help="also run the MC task on the untrained EP / AC conversions")
    parser.add_argument("--results", default=str(OUT_DIR / "quality_anchor.json"))
    args = parse_benchmark_args(parser, argv)
    if min(args.shots) < 0:
        parser.error(f"--shots must be >= 0, got {args.shots}")
    if not (Path(args.base) / "config.json").exists():
        sys.exit(f"no base checkpoint at {args.base} (run benchmarks/make_base.py)")
    mc_seeds = set(args.seeds if args.mc_seeds is None else args.mc_seeds)
    work = Path(args.work)
    started = time.perf_counter()

    data_file = training_file(work / f"train_{args.train_pieces}x{args.piece_chars}.jsonl.gz", args.train_pieces,
                              args.piece_chars)
    texts = eval_texts(args.eval_docs, args.piece_chars)
    held_out = [doc for domain in DOMAINS for doc in corpus_texts(domain, "valid")]
    mc_items = next_sentence_items(held_out, args.mc_items, seed=0)
    train_docs = {domain: corpus_texts(domain, "train", 8) for domain in DOMAINS}
    demo_docs = [train_docs[domain][i] for i in range(8) for domain in DOMAINS]  # demos from all five domains
    # demonstrations for the largest --shots (none when every run is 0-shot)
    mc_demos = next_sentence_items(demo_docs, max(args.shots), seed=1) if max(args.shots) > 0 else []
    key = {"ppl": dict(eval_docs=args.eval_docs, piece_chars=args.piece_chars, chunk=args.chunk,
                       max_length=args.max_length),
           "mc": dict(mc_items=args.mc_items, shots=args.shots, mc_chunk=args.mc_chunk, scoring="pmi")}
    settings = {k: v for k, v in vars(args).items() if k not in ("results", "work")}
    settings["base"] = Path(args.base).name

    runs: dict[str, dict[int, dict]] = {}
    train_minutes: dict[str, float] = {}  # 0 for a run reused from an earlier invocation
    train_settings: dict[str, dict] = {}  # per run: the settings it was trained with (stored in its folder)
    base_key = checkpoint_fingerprint(args.base)
    results_path = Path(args.results)

    def save():
        summary = summarize(runs)
        payload = {"settings": settings, "summary": summary, "runs": runs, "train_minutes": train_minutes,
                   "train_settings": train_settings, "wall_minutes": (time.perf_counter() - started) / 60}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(results_path, "w") as handle:
            json.dump(payload, handle, indent=1)
        with atomic_file(results_path.with_suffix(".md"), "w") as handle:
            handle.write(markdown(summary, settings))
        return summary

    # the base and the untrained conversions (no seed: nothing is trained)
    base_tok = AutoTokenizer.from_pretrained(args.base)
    base = AnchorLlamaForCausalLM.from_pretrained(args.base, anchor_token_ids=[])
    if args.references:
        runs["base"] = {0: evaluate(base, base_tok, None, texts, mc_items, mc_demos, args, bool(mc_seeds),
                                    work / "eval-base", key, base_key)}
        save()
    for mode in ("ep", "ac"):
        if mode not in args.modes or not args.references:
            continue
        model, tok = build_anchor_model(AnchorTrainArguments(base_model=args.base, anchor_mode=mode))
        runs[f"{mode}0"] = {0: evaluate(model, tok, mode, texts, mc_items, mc_demos, args, args.untrained_mc,
                                        work / f"eval-{mode}0", key, {"base": base_key, "conversion": mode})}
        save()

    for seed in args.seeds:
        for mode in args.modes:
            train_started = time.perf_counter()
            final = train(args, data_file, mode, seed)
            train_minutes[f"{mode}-s{seed}"] = (time.perf_counter() - train_started) / 60
            train_settings[f"{mode}-s{seed}"] = json.loads((final / TRAIN_SETTINGS).read_text())
            model = AnchorLlamaForCausalLM.from_pretrained(final)
            tok = AutoTokenizer.from_pretrained(final)
            with_mc = seed in mc_seeds
            runs.setdefault(mode, {})[seed] = evaluate(model, tok, None if mode == "none" else mode, texts,
                                                       mc_items, mc_demos, args, with_mc, final.parent / "eval", key,
                                                       checkpoint_fingerprint(final))
            losses = json.loads((final / "anchor_train_metrics.json").read_text())["train_losses"]
            if losses:
                runs[mode][seed]["train_loss_end"] = statistics.fmean(losses[-2:])  # the last 2 logged
            summary = save()
            print(f"[{(time.perf_counter() - started) / 60:.1f} min] {mode} seed {seed}: pooled ppl "
                  + ", ".join(f"{r['attention']} {r['pooled'][0]:.2f}" for r in summary["ppl"]
                              if r["variant"] == mode), flush=True)

    summary = save()
    plot(summary, results_path.with_suffix(".png"))
    print(markdown(summary, settings))
    print(f"wrote {results_path} (+ .md, .png) in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
