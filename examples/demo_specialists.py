"""Specialists: branch a small Llama into a per-cluster hard mixture, specialise it back to ONE stock Llama and
compare it with the generic Llama trained and fine-tuned alike.

    python examples/demo_specialists.py            # builds its own tiny tokenizer + Llama first

The demo is `hf_efficient_lm.tools.demos.demo_specialists(base_dir, train_texts)`; `examples/quickstart.py` runs it on the
base Llama it trains.
"""

import torch

from hf_efficient_lm.tools.demos import run_standalone

if __name__ == "__main__":
    torch.set_num_threads(1)
    print(run_standalone("specialists"))
