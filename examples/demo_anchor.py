"""AnchorLlama: convert a Llama (EP anchors), continually pre-train a few steps with the AnSAN mask, report how much
of the KV cache the anchor cache keeps on a held-out many-sentence text.

    python examples/demo_anchor.py            # builds its own tiny tokenizer + Llama first

The demo is `hf_efficient_lm.tools.demos.demo_anchor(base_dir, train_texts)`; `examples/quickstart.py` runs it on the
base Llama it trains.
"""

import torch

from hf_efficient_lm.tools.demos import run_standalone

if __name__ == "__main__":
    torch.set_num_threads(1)
    print(run_standalone("anchor"))
