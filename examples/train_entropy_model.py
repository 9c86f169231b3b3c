"""Train BLT's entropy model (a small causal byte LM with sliding-window attention) on the bytes of any text dataset
with the Hugging Face Trainer, report validation bits per byte, and save it (``BLTEntropyModel.from_pretrained``).
Same as ``hf-efficient-lm train-entropy``.

    nice -n 10 python examples/train_entropy_model.py --max-steps 300 \
        --output-dir ~/.cache/hf_efficient_lm/blt/entropy

Defaults read the project corpus (../shared/corpus/*.train.jsonl.gz); ``--train-files`` takes any local
json/jsonl(.gz)/txt/csv/parquet files with a ``text`` column. All options: ``--help``
(implemented in ``hf_efficient_lm.tools.blt_training``).
"""

import sys

from hf_efficient_lm.cli import run_cli
from hf_efficient_lm.tools.blt_training import train_entropy_main

if __name__ == "__main__":
    sys.exit(run_cli(train_entropy_main))
