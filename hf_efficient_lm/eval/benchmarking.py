"""The scaffolding every script in ``benchmarks/`` shares: its option parser (the module docstring as help, a
``--threads`` option applied before anything is timed) and its figures (drawn headless, written atomically).

Timing itself is :mod:`hf_efficient_lm.eval.speed`; a benchmark prints method vs baseline measured in one process.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..io_utils import save_figure


def benchmark_parser(doc: str | None, *, threads: int = 1) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` showing ``doc`` (the script's docstring, its run commands kept as written) with a
    ``--threads`` option (torch intra-op threads, default ``threads``); parse it with :func:`parse_benchmark_args`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads (default: %(default)s)")
    return parser


def parse_benchmark_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (``sys.argv[1:]`` when None), then set torch's thread count to ``--threads`` (timings on a
    shared machine depend on it) and keep the Hub offline unless the caller says otherwise."""
    args = parser.parse_args(argv)
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


def new_figure(*subplots_args, **subplots_kwargs):
    """``matplotlib.pyplot.subplots(...)`` on the file-only Agg backend (benchmarks run without a display).
    Returns ``(figure, axes)``; finish with :func:`write_figure`."""
    try:
        import matplotlib
    except ModuleNotFoundError as error:  # an optional dependency: say which extra brings it
        raise ModuleNotFoundError("benchmark plots need matplotlib: pip install 'hf-efficient-lm[plots]' (or run the "
                                  "benchmark with --no-plot where it has that option)", name="matplotlib") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*subplots_args, **subplots_kwargs)


def write_figure(figure, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Lay ``figure`` out tightly, write it atomically to ``path`` (folders made; format from the suffix), close it
    and print where it went. Returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    save_figure(figure, path, **savefig_kwargs)
    plt.close(figure)
    print(f"wrote {path}")
    return path
