"""Continual pretraining of a Llama checkpoint into a SconeLlama with the Trainer, then export the f-gram table.
Same as ``hf-efficient-lm train-scone`` (implemented in ``hf_efficient_lm.tools.scone_training``).

    python examples/train_scone.py --base_model ~/.cache/hf_efficient_lm/base \
        --data_files ../shared/corpus/*.train.jsonl.gz --validation_files ../shared/corpus/*.valid.jsonl.gz \
        --num_fgrams 100000 --fgram_num_layers 2 --max_train_tokens 2000000 --output_dir runs/scone-5m

From scratch: ``--from_scratch_preset 5m --tokenizer TOK_DIR``. Two CPU processes (gloo DDP; ``--use_cpu true`` is
implied when several processes are launched without GPUs; ``--per_device_train_batch_size`` is per process):

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        examples/train_scone.py --use_cpu true ...

Writes ``output_dir/final`` (training mode), ``output_dir/table`` (inference mode) and ``train_scone_metrics.json``;
``--help`` lists every option (all of TrainingArguments too).
"""

import sys

from hf_efficient_lm.cli import run_cli
from hf_efficient_lm.tools.scone_training import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
