"""Pretrain a LlamaForCausalLM from a size preset on any text dataset.

    python examples/pretrain.py --tokenizer TOK_DIR --data_files a.jsonl b.jsonl --preset 5m \
        --block_size 256 --max_train_tokens 2000000 --output_dir runs/base-5m

Two CPU processes (gloo DDP) — note `--multi_gpu`, which on a GPU-less machine means DDP over CPUs here:

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        examples/pretrain.py --use_cpu true ...

Killed runs resume from the newest checkpoint in --output_dir when started again with the same model, tokenizer, data,
seed and schedule (the run fingerprint); any other run into that dir is refused unless --overwrite_output_dir (start
fresh). A second run into a dir that is being written to is refused. Errors are one line with exit status 2
(--debug shows the traceback).
`python examples/pretrain.py --help` lists every option (all of TrainingArguments too).
"""

import sys

from hf_efficient_lm.cli import run_cli
from hf_efficient_lm.train.pretrain import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
