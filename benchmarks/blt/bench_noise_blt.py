"""Robustness to noised text at matched clean quality: BLT vs the token-level Llama (checkpoints of
``bench_scaling_blt.py``), bits/byte and next-byte accuracy on clean and noised held-out text.

Pair: among the scaling runs (seed-mean clean bits/byte over all domains, ``results/scaling_blt.json``) the Llama run
and the BLT run whose clean bits/byte are closest (``--llama-run`` / ``--blt-run`` override); every training seed of
both is evaluated, so the spread covers training seeds.

Text: the first ``--chars`` characters (whole documents) of each domain's ``*.valid.jsonl.gz``, cut into pieces of
``--piece-chars`` characters; every piece is one short document (``BOS piece EOS``) for both models, clean and under
each noise of ``hf_efficient_lm.data.noise`` (``noise_texts(pieces, kind, seed=--noise-seed)``): random case (each
letter flips with p 0.5), drop (10% of characters), repeat (20% of characters written 2-4 times), upper case (the BLT
paper's Table 3 kinds but AntSpeak, which doubles the length past the Llama's training context).

Metrics (both models score every byte / token of a piece plus its EOS; the denominator is the piece's UTF-8 bytes,
noised text for the noised rows):
- **bits/byte** (primary);
- **next-byte accuracy at token starts**: at every byte where the Llama's tokenization of the (noised) piece starts a
  token, is the argmax next byte right? Llama: its exact next-byte marginal given that tokenization of the prefix,
  p(b) = sum of p(token) over the tokens whose first byte is b (special tokens get none); BLT: its next-byte
  distribution at the same byte. (The Llama's marginal ignores the other tokenizations of the prefix, the usual
  canonical-tokenization assumption; within a token the Llama has no next-byte prediction without that
  marginalisation, so it is scored only at token starts.)
- **next-byte accuracy, all bytes**: BLT only.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/blt/bench_noise_blt.py

Writes ``results/noise_blt.{json,md,png}``.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hf_efficient_lm.data import CORPUS_DOMAINS as DOMAINS
from hf_efficient_lm.data import cache_dir, corpus_texts, noise_texts
from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure
from hf_efficient_lm.io_utils import atomic_file

HERE = Path(__file__).resolve().parent
KINDS = ("random_case", "drop", "repeat", "uppercase")


def byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's bytes_to_unicode) inverted: symbol -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tokenizer) -> list[bytes | None]:
    """id -> the bytes the token stands for (None for special tokens)."""
    dec = byte_decoder()
    special = set(tokenizer.all_special_ids)
    out = []
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        out.append(None if i in special else bytes(dec[ch] for ch in tok))
    return out


def pieces_of(chars: int, piece_chars: int) -> list[str]:
    pieces = []
    for d in DOMAINS:
        text = "\n".join(t for t in corpus_texts(d, "valid", limit_chars=chars) if t)[:chars]
        pieces += [text[i : i + piece_chars] for i in range(0, len(text), piece_chars)]
    return [p for p in pieces if p.strip()]


@torch.no_grad()
def score_llama(model, tokenizer, first_byte: torch.Tensor, texts: list[str]) -> dict:
    """NLL (nats) over tokens + EOS, bytes, and next-byte accuracy at token starts via the first-byte marginal."""
    tb = token_bytes_cache[id(tokenizer)]
    nats, nbytes, hits, starts = 0.0, 0, 0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        raw = text.encode("utf-8")
        if b"".join(tb[i] for i in ids) != raw:
            raise RuntimeError(f"token bytes do not spell the text {text[:40]!r}")
        row = torch.tensor([[tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id]])
        logits = model(input_ids=row, use_cache=False).logits[0, :-1].float()
        nats += float(F.cross_entropy(logits, row[0, 1:], reduction="sum"))
        nbytes += len(raw)
        marginal = logits[: len(ids)].softmax(-1) @ first_byte  # [tokens, 256]
        truth = torch.tensor([tb[i][0] for i in ids])
        hits += int((marginal.argmax(-1) == truth).sum())
        starts += len(ids)
    return dict(nats=nats, bytes=nbytes, acc_token_starts=hits / starts, token_starts=starts)


token_bytes_cache: dict[int, list] = {}


@torch.no_grad()
def score_blt(model, tokenizer, texts: list[str]) -> dict:
    """NLL over bytes + EOS with in-forward patching; next-byte accuracy at all bytes and at the Llama's token starts."""
    tb = token_bytes_cache[id(tokenizer)]
    nats, nbytes, hits, hits_starts, starts = 0.0, 0, 0, 0, 0
    for text in texts:
        raw = text.encode("utf-8")
        row = torch.tensor([[1] + [b + 4 for b in raw] + [2]])  # BOS bytes+4 EOS (BLTTokenizer ids)
        logits = model(input_ids=row, use_cache=False).logits[0, :-1].float()
        nats += float(F.cross_entropy(logits, row[0, 1:], reduction="sum"))
        nbytes += len(raw)
        correct = logits[: len(raw)].argmax(-1) == row[0, 1 : len(raw) + 1]  # byte j predicted at position j
        hits += int(correct.sum())
        offsets = list(itertools.accumulate((len(tb[i]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]),
                                            initial=0))[:-1]
        hits_starts += int(correct[offsets].sum())
        starts += len(offsets)
    return dict(nats=nats, bytes=nbytes, acc_all_bytes=hits / nbytes, acc_token_starts=hits_starts / starts,
                token_starts=starts)


def pick_pair(scaling: dict) -> tuple[str, str, float, float]:
    s = scaling["summary"]
    best = None
    for ln, bn in itertools.product([n for n in s if s[n]["kind"] == "llama"], [n for n in s if s[n]["kind"] == "blt"]):
        gap = abs(s[ln]["bits_per_byte"]["all"][0] - s[bn]["bits_per_byte"]["all"][0])
        if best is None or gap < best[0]:
            best = (gap, ln, bn)
    _, ln, bn = best
    return ln, bn, s[ln]["bits_per_byte"]["all"][0], s[bn]["bits_per_byte"]["all"][0]


def main(argv=None) -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--cache", default=str(cache_dir("bltexp")))
    p.add_argument("--scaling-json", default=str(HERE / "results" / "scaling_blt.json"))
    p.add_argument("--llama-run", default=None)
    p.add_argument("--blt-run", default=None)
    p.add_argument("--chars", type=int, default=3000, help="validation characters per domain")
    p.add_argument("--piece-chars", type=int, default=128)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = parse_benchmark_args(p, argv)
    from transformers import AutoTokenizer, LlamaForCausalLM

    from hf_efficient_lm.blt import BLTForCausalLM

    scaling = json.loads(Path(args.scaling_json).read_text())
    for option, run, kind in (("--llama-run", args.llama_run, "llama"), ("--blt-run", args.blt_run, "blt")):
        runs = sorted(n for n, r in scaling["summary"].items() if r["kind"] == kind)
        if run is not None and run not in runs:
            p.error(f"{option} {run!r} is not among the {kind} runs of {args.scaling_json}: {runs}")
    ln, bn, lb, bb = pick_pair(scaling)
    ln, bn = args.llama_run or ln, args.blt_run or bn
    lb, bb = (scaling["summary"][n]["bits_per_byte"]["all"][0] for n in (ln, bn))
    print(f"pair: {ln} ({lb:.3f} bits/byte) vs {bn} ({bb:.3f}); |diff| {abs(lb - bb):.3f}")
    tokenizer = AutoTokenizer.from_pretrained(scaling["prep"]["tokenizer"])
    token_bytes_cache[id(tokenizer)] = tb = token_bytes(tokenizer)
    first_byte = torch.zeros(len(tb), 256)
    for i, b in enumerate(tb):
        if b:
            first_byte[i, b[0]] = 1.0

    clean = pieces_of(args.chars, args.piece_chars)
    texts = {"clean": clean, **{k: noise_texts(clean, k, seed=args.noise_seed) for k in args.kinds}}
    seeds = sorted(set(scaling["summary"][ln]["seeds"]) & set(scaling["summary"][bn]["seeds"]))
    t0 = time.perf_counter()
    per_seed = {}
    for s in tqdm(seeds, desc="seeds"):
        llama = LlamaForCausalLM.from_pretrained(Path(args.cache) / "runs" / f"{ln}-seed{s}" / "model").eval()
        blt = BLTForCausalLM.from_pretrained(Path(args.cache) / "runs" / f"{bn}-seed{s}" / "model").eval()
        per_seed[s] = {}
        for cond, ts in tqdm(texts.items(), desc=f"seed {s}", leave=False):
            lr, br = score_llama(llama, tokenizer, first_byte, ts), score_blt(blt, tokenizer, ts)
            per_seed[s][cond] = dict(
                llama_bpb=lr["nats"] / math.log(2) / lr["bytes"], blt_bpb=br["nats"] / math.log(2) / br["bytes"],
                llama_acc_token_starts=lr["acc_token_starts"], blt_acc_token_starts=br["acc_token_starts"],
                blt_acc_all_bytes=br["acc_all_bytes"], bytes=br["bytes"], token_starts=br["token_starts"])
    metrics = ("llama_bpb", "blt_bpb", "llama_acc_token_starts", "blt_acc_token_starts", "blt_acc_all_bytes")

    def ms(values):
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    summary = {c: {m: ms([per_seed[s][c][m] for s in seeds]) for m in metrics} for c in texts}
    for c in texts:  # degradation vs clean, per seed
        summary[c]["llama_bpb_increase"] = ms([per_seed[s][c]["llama_bpb"] - per_seed[s]["clean"]["llama_bpb"] for s in seeds])
        summary[c]["blt_bpb_increase"] = ms([per_seed[s][c]["blt_bpb"] - per_seed[s]["clean"]["blt_bpb"] for s in seeds])
        summary[c]["llama_acc_drop_pts"] = ms([100 * (per_seed[s]["clean"]["llama_acc_token_starts"]
                                                      - per_seed[s][c]["llama_acc_token_starts"]) for s in seeds])
        summary[c]["blt_acc_drop_pts"] = ms([100 * (per_seed[s]["clean"]["blt_acc_token_starts"]
                                                    - per_seed[s][c]["blt_acc_token_starts"]) for s in seeds])
    nb = {c: per_seed[seeds[0]][c]["bytes"] for c in texts}

    def f(x, scale=1.0, sign=False):
        return f"{x[0] * scale:{'+' if sign else ''}.3f} ± {x[1] * scale:.3f}" if scale == 1 else \
            f"{x[0] * scale:{'+' if sign else ''}.1f} ± {x[1] * scale:.1f}"

    lines = [f"Pair at matched clean quality: {ln} vs {bn} (scaling eval, seed mean: {lb:.3f} vs {bb:.3f} bits/byte, "
             f"|diff| {abs(lb - bb):.3f}); training seeds {seeds}, mean ± std; {len(clean)} pieces of "
             f"{args.piece_chars} characters ({args.chars} per domain), noise seed {args.noise_seed}.", "",
             "| text | bytes | Llama bits/byte | BLT bits/byte | Llama Δ vs clean | BLT Δ vs clean | "
             "Llama next-byte acc. @token starts (%) | BLT @token starts (%) | BLT all bytes (%) |",
             "|" + "---|" * 9]
    for c in texts:
        r = summary[c]
        lines.append(f"| {c} | {nb[c]} | {f(r['llama_bpb'])} | {f(r['blt_bpb'])} | {f(r['llama_bpb_increase'], sign=True)} | "
                     f"{f(r['blt_bpb_increase'], sign=True)} | {f(r['llama_acc_token_starts'], 100)} | "
                     f"{f(r['blt_acc_token_starts'], 100)} | {f(r['blt_acc_all_bytes'], 100)} |")
    md = "\n".join(lines)
    print(md)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "noise_blt.json", "w") as fh:
        fh.write(json.dumps(dict(args=vars(args), llama_run=ln, blt_run=bn, clean_bpb_scaling=dict(llama=lb, blt=bb),
                                 seeds=seeds, per_seed=per_seed, summary=summary, wall_s=time.perf_counter() - t0),
                            indent=2))
    with atomic_file(out / "noise_blt.md", "w") as fh:
        fh.write(md + "\n")

    fig, (a1, a2) = new_figure(1, 2, figsize=(11, 4))
    x = range(len(texts))
    for off, key, label in ((-0.2, "llama", ln), (0.2, "blt", bn)):
        a1.bar([i + off for i in x], [summary[c][f"{key}_bpb"][0] for c in texts], 0.4,
               yerr=[summary[c][f"{key}_bpb"][1] for c in texts], capsize=2, label=label)
        a2.bar([i + off for i in x], [100 * summary[c][f"{key}_acc_token_starts"][0] for c in texts], 0.4,
               yerr=[100 * summary[c][f"{key}_acc_token_starts"][1] for c in texts], capsize=2, label=label)
    for a, yl in ((a1, "bits/byte (lower is better)"), (a2, "next-byte accuracy at Llama token starts (%)")):
        a.set_xticks(list(x), list(texts), fontsize=8)
        a.set_ylabel(yl)
        a.legend(fontsize=8)
    a1.set_title(f"matched clean quality ({lb:.2f} vs {bb:.2f} bits/byte), seeds {seeds}", fontsize=9)
    write_figure(fig, out / "noise_blt.png", dpi=110)
    print(f"wrote {out / 'noise_blt.md'} and .json/.png ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
