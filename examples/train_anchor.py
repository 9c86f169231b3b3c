"""Continual pre-training of a Llama checkpoint into AnchorLlama (AnLLM-EP or AnLLM-AC).

    python examples/train_anchor.py --base_model BASE_DIR --data_files ../shared/corpus/pydocs.train.jsonl.gz \
        --anchor_mode ac --output_dir runs/anchor-ac --max_steps 200 --per_device_train_batch_size 4 \
        --learning_rate 2e-5 --lr_scheduler_type constant_with_warmup --warmup_steps 20 [--lora_r 8]

    accelerate launch examples/train_anchor.py ...   # same arguments, several processes

Every TrainingArguments option works; resuming, the final folder (OUTPUT_DIR/final, LoRA merged) and loading are
described by ``--help``. Same as ``hf-efficient-lm train-anchor`` (implemented in ``hf_efficient_lm.tools.anchor_continual``).
"""

import sys

from hf_efficient_lm.cli import run_cli
from hf_efficient_lm.tools.anchor_continual import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
