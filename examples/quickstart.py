"""The main demo: from nothing to a trained base Llama and each model family, offline, in a few minutes on a CPU.

1. Builds a small training text from the docstrings of the Python standard library (every install has them).
2. Trains a byte-level BPE tokenizer and a tiny Llama (`hf_efficient_lm.train`), evaluates its held-out perplexity
   and bits-per-byte, and saves it.
3. Converts that base into each model family (`hf_efficient_lm.tools.demos.demo_<family>`), trains a few steps and
   prints the family's headline figure.

    python examples/quickstart.py [--output-dir quickstart-output] [--steps 300] [--families anchor scone blt specialists]

The same as `hf-efficient-lm quickstart`.
"""

import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

from hf_efficient_lm.cli import run_cli  # noqa: E402
from hf_efficient_lm.tools.demos import quickstart_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(quickstart_main))
