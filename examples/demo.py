"""One family's demo on its own, on a tiny Llama it builds first (the quickstart runs all four on the base it trains):

    python examples/demo.py anchor        # KV-cache entries the anchor cache keeps on a held-out text
    python examples/demo.py scone         # f-gram coverage, held-out loss vs the same Llama trained alike, table size
    python examples/demo.py blt           # bytes per patch, cached generation vs full recompute
    python examples/demo.py specialists   # specialist vs the generic Llama trained and fine-tuned alike

Each is `hf_efficient_lm.tools.demos.demo_<family>(base_dir, train_texts)`; the same as `hf-efficient-lm demo FAMILY`.
"""

import sys

from hf_efficient_lm.cli import run_cli
from hf_efficient_lm.tools.demos import demo_main

if __name__ == "__main__":
    sys.exit(run_cli(demo_main))
