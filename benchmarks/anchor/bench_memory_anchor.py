"""Peak training activation memory at long context: AnchorLlama (AnSAN mask) vs Llama (causal), same weights.

One forward + backward (``labels = input_ids``) on real corpus text (EP anchors), batch 1. Each point runs in a
fresh subprocess so that one measurement cannot inherit another's freed-but-kept memory:

* CPU: peak resident set (``VmHWM``, reset just before the step) minus the resident set after loading the model and a short
  warm-up step (PyTorch has no CPU allocator statistics; large tensors are mmap'd and given back, so RSS follows them).
* CUDA: ``torch.cuda.max_memory_allocated()`` during the step minus the memory allocated before it.

``--mmap-threshold 131072`` runs the children with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed, so that freed buffers go
back to the system at once and the CPU peak counts live tensors only; by default glibc raises its threshold as large
buffers are freed and keeps later ones in its heap, and the peak RSS (what a user sees) also counts those retained,
already-freed buffers. Prints MB and the ratio to Llama at each length; writes ``results/memory_anchor.png``.

    python benchmarks/anchor/bench_memory_anchor.py --size tiny --lengths 1024 2048 4096 8192
    python benchmarks/anchor/bench_memory_anchor.py --device cuda --lengths 4096 8192 16384 32768 --attn sdpa flex_attention
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# run as a script: its own folder is on sys.path, so the sibling module imports directly
from bench_common_anchor import OUT_DIR, anchor_parser, corpus_texts, ep_ids, llama_config, load_tokenizer, setup_cpu

from hf_efficient_lm.eval.benchmarking import new_figure, parse_benchmark_args, write_figure


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, MB (Linux ``/proc``)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    # Resets VmHWM to the current RSS (Linux >= 4.0). ru_maxrss cannot be used: it survives fork + exec, so a child
    # would report its parent's peak.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def measure_point(spec: dict) -> dict:
    """Runs in the child: build the model, warm up, measure one forward + backward of ``spec['length']`` tokens."""
    from transformers import LlamaForCausalLM

    from hf_efficient_lm.anchor import AnchorLlamaConfig, AnchorLlamaForCausalLM

    setup_cpu(spec["threads"])
    device = torch.device(spec["device"])
    ids = torch.load(spec["ids_path"])[: spec["length"]][None].to(device)
    config = llama_config(spec["vocab_size"], spec["size"], max_positions=max(8192, spec["length"]))
    torch.manual_seed(0)
    if spec["model"] == "llama":
        model = LlamaForCausalLM._from_config(config, attn_implementation=spec["attn"])
    else:
        anchor_config = AnchorLlamaConfig(**config.to_dict(), anchor_token_ids=spec["anchors"])
        model = AnchorLlamaForCausalLM._from_config(anchor_config, attn_implementation=spec["attn"])
    model.to(device).train()

    def step(input_ids):
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
        model.zero_grad(set_to_none=False)  # keep the gradient buffers: they belong to the "loaded" baseline
        return float(loss)

    step(ids[:, :64])  # warm-up: kernels, thread pools, gradient buffers
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = step(ids)
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        _reset_peak_rss()
        before = _status_mb("VmRSS")
        loss = step(ids)
        peak_mb = _status_mb("VmHWM") - before
    return dict(peak_mb=peak_mb, loss=loss)


def run_point(spec: dict, mmap_threshold: int | None = None) -> dict:
    """Measure one point in a fresh interpreter (the child prints one JSON line)."""
    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    proc = subprocess.run(
        [sys.executable, __file__, "--_point", json.dumps(spec)], capture_output=True, text=True, check=False, env=env
    )
    if proc.returncode != 0:
        return dict(peak_mb=float("nan"), loss=float("nan"), error=proc.stderr.strip().splitlines()[-1:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = anchor_parser(__doc__, size="tiny")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--attn", nargs="+", default=["sdpa"], help="AnchorLlama back-ends (sdpa, eager, flex_attention)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="CPU: fix glibc's MALLOC_MMAP_THRESHOLD_ (bytes) in the children: count live tensors only")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--_point", help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser, argv)
    if args._point:
        print(json.dumps(measure_point(json.loads(args._point))))
        return

    tokenizer = load_tokenizer()
    anchors = ep_ids(tokenizer)
    ids = []
    for text in corpus_texts("pydocs", "train", 3000):
        ids += tokenizer.encode(text + "\n\n", add_special_tokens=False)
        if len(ids) >= max(args.lengths):
            break
    ids = torch.tensor(ids[: max(args.lengths)])
    if len(ids) < max(args.lengths):
        sys.exit(f"the corpus gave only {len(ids)} tokens, fewer than --lengths {max(args.lengths)}")
    n_anchors = {length: int(torch.isin(ids[:length], torch.tensor(anchors)).sum()) for length in args.lengths}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = str(Path(tmp) / "ids.pt")
        torch.save(ids, ids_path)
        common = dict(ids_path=ids_path, vocab_size=len(tokenizer), size=args.size, device=args.device,
                      threads=args.threads, anchors=anchors)
        for length in args.lengths:
            row = dict(length=length, anchors=n_anchors[length])
            row["llama"] = run_point(dict(common, model="llama", attn="sdpa", length=length), args.mmap_threshold)
            for attn in args.attn:
                row[attn] = run_point(dict(common, model="anchor", attn=attn, length=length), args.mmap_threshold)
            rows.append(row)
            print(f"  {length}: " + ", ".join(f"{k} {v['peak_mb']:.0f} MB" for k, v in row.items()
                                              if isinstance(v, dict)), flush=True)

    allocator = "" if args.mmap_threshold is None else f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
    print(f"\nPeak activation memory, forward + backward, batch 1, size={args.size}, fp32, {args.device}{allocator} "
          f"(MB over the loaded model; Llama = causal sdpa)")
    header = f"{'tokens':>7} {'anchors':>8} {'Llama MB':>9}" + "".join(
        f" {'Anchor ' + a + ' MB':>24} {'ratio':>6}" for a in args.attn)
    print(header)
    for row in rows:
        line = f"{row['length']:7d} {row['anchors']:8d} {row['llama']['peak_mb']:9.1f}"
        for attn in args.attn:
            result = row[attn]
            line += f" {result['peak_mb']:24.1f} {result['peak_mb'] / row['llama']['peak_mb']:5.2f}x"
            if "error" in result:
                line += f"  ({attn} failed: {result['error']})"
        print(line)

    if not args.no_plot:
        fig, ax = new_figure(figsize=(6, 4))
        lengths = [row["length"] for row in rows]
        ax.plot(lengths, [row["llama"]["peak_mb"] for row in rows], "o-", label="Llama (causal sdpa)")
        for attn in args.attn:
            ax.plot(lengths, [row[attn]["peak_mb"] for row in rows], "o-", label=f"AnchorLlama ({attn})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens (batch 1)")
        ax.set_ylabel("peak activation memory (MB)")
        ax.set_title(f"forward + backward, size={args.size}, {args.device}")
        ax.legend()
        suffix = "" if args.device == "cpu" else f"_{args.device}"
        suffix += "" if args.mmap_threshold is None else "_live"
        write_figure(fig, OUT_DIR / f"memory_anchor{suffix}.png")


if __name__ == "__main__":
    main()
