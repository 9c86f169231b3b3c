"""Train BLT from scratch on the bytes of any text dataset with the Hugging Face Trainer.

Patch boundaries come from a trained entropy model (``examples/train_entropy_model.py``) whose threshold is
calibrated to ``--target-patch-size`` bytes per patch; patch lengths are precomputed as a dataset column. Prints
FLOPs per byte and bits per byte per domain with in-forward patching. Same as ``hf-efficient-lm train-blt``.

    nice -n 10 python examples/train_blt.py --entropy-model ~/.cache/hf_efficient_lm/blt/entropy --max-steps 200

Runs under ``accelerate launch`` unchanged (the Trainer handles the distribution); ``--batch-size`` is per process:

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        examples/train_blt.py --batch-size 4 ...

All options: ``python examples/train_blt.py --help`` (implemented in ``hf_efficient_lm.tools.blt_training``).
"""

import sys

from hf_efficient_lm.cli import run_cli
from hf_efficient_lm.tools.blt_training import train_blt_main

if __name__ == "__main__":
    sys.exit(run_cli(train_blt_main))
