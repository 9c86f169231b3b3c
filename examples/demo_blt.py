"""BLT: train a tiny entropy model and a tiny BLT, then generate with the byte- and patch-level caches and compare
with full recomputation.

    python examples/demo_blt.py            # builds its own tiny tokenizer + Llama first

The demo is `hf_efficient_lm.tools.demos.demo_blt(base_dir, train_texts)`; `examples/quickstart.py` runs it on the
base Llama it trains.
"""

import torch

from hf_efficient_lm.tools.demos import run_standalone

if __name__ == "__main__":
    torch.set_num_threads(1)
    print(run_standalone("blt"))
