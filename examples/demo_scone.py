"""SconeLlama: mine f-grams, wrap a Llama, train a few steps against the same Llama trained alike, export the
off-accelerator f-gram table.

    python examples/demo_scone.py            # builds its own tiny tokenizer + Llama first

The demo is `hf_efficient_lm.tools.demos.demo_scone(base_dir, train_texts)`; `examples/quickstart.py` runs it on the
base Llama it trains.
"""

import torch

from hf_efficient_lm.tools.demos import run_standalone

if __name__ == "__main__":
    torch.set_num_threads(1)
    print(run_standalone("scone"))
