"""Average patch size vs entropy threshold, per corpus domain, for the global and approximate-monotonic rules.

Uses a trained entropy model (``hf-efficient-lm train-entropy`` writes ``$HFELM_CACHE/blt/entropy``, default
``~/.cache/hf_efficient_lm/blt/entropy``);
writes ``patch_size_vs_threshold.png`` next to this script (or ``--out``).

    nice -n 10 python benchmarks/blt/bench_patch_size_blt.py
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hf_efficient_lm.blt import BLTEntropyModel
from hf_efficient_lm.data import CORPUS_DOMAINS as DOMAINS
from hf_efficient_lm.data import corpus_texts
from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure
from hf_efficient_lm.tools.blt_data import calibrate_threshold, mean_patch_size, pack_texts
from hf_efficient_lm.tools.blt_training import DEFAULT_ENTROPY_MODEL


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--entropy-model", default=DEFAULT_ENTROPY_MODEL)
    parser.add_argument("--rows", type=int, default=8, help="512-byte validation rows per domain")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "patch_size_vs_threshold.png"))
    args = parse_benchmark_args(parser, argv)
    if not os.path.isfile(os.path.join(args.entropy_model, "config.json")):
        parser.error(f"no entropy model at {args.entropy_model}; run `hf-efficient-lm train-entropy` first")
    model = BLTEntropyModel.from_pretrained(args.entropy_model).eval()

    thresholds = torch.linspace(0.0, 4.0, 33)
    curves = {}
    for domain in DOMAINS:
        rows = pack_texts(corpus_texts(domain, "valid", limit=100), 512)[: args.rows]
        with torch.no_grad():
            entropies, _ = model.entropies(torch.tensor(rows))
        curves[domain] = [mean_patch_size(entropies, float(t)) for t in thresholds]
        curves[domain + " (monotonic)"] = [mean_patch_size(entropies, float(t) / 4, monotonic=True) for t in thresholds]
        print(f"{domain:10s} mean entropy {float(entropies[:, 1:].mean()):.2f} nats; "
              f"threshold for 4.5 bytes/patch: global {calibrate_threshold(entropies, 4.5):.3f}, "
              f"monotonic {calibrate_threshold(entropies, 4.5, monotonic=True):.3f}")
    print("threshold  " + "  ".join(f"{d[:10]:>10s}" for d in DOMAINS))
    for i in range(0, len(thresholds), 4):
        print(f"{float(thresholds[i]):9.2f}  " + "  ".join(f"{curves[d][i]:10.2f}" for d in DOMAINS))

    fig, axes = new_figure(1, 2, figsize=(11, 4))
    for domain in DOMAINS:
        axes[0].plot(thresholds, curves[domain], label=domain)
        axes[1].plot(thresholds / 4, curves[domain + " (monotonic)"], label=domain)
    axes[0].set(xlabel="global threshold θ (nats)", ylabel="mean bytes per patch", title="H(x_t) > θ", yscale="log")
    axes[1].set(xlabel="monotonic threshold θ_r (nats)", title="H(x_t) − H(x_{t−1}) > θ_r", yscale="log")
    for ax in axes:
        ax.axhline(4.5, color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=8)
    write_figure(fig, args.out, dpi=110)


if __name__ == "__main__":
    main()
