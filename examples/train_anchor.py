"""Continual pre-training of a Llama checkpoint into AnchorLlama (AnLLM-EP or AnLLM-AC).

    python examples/train_anchor.py --base_model BASE_DIR --data_files ../shared/corpus/pydocs.train.jsonl.gz \
        --anchor_mode ac --output_dir runs/anchor-ac --max_steps 200 --per_device_train_batch_size 4 \
        --learning_rate 2e-5 --lr_scheduler_type constant_with_warmup --warmup_steps 20 [--lora_r 8]

    accelerate launch examples/train_anchor.py ...   # same arguments, several processes

Every TrainingArguments option works (--gradient_checkpointing, --bf16, --save_steps ...). A killed run resumes
from the newest checkpoint in --output_dir when its run fingerprint matches; another run's dir is refused unless
--overwrite_output_dir. The final model (LoRA merged) and tokenizer land in OUTPUT_DIR/final
and load with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True) or after `import hf_efficient_lm`.
"""

from __future__ import annotations

import os
import sys

from transformers import HfArgumentParser, TrainingArguments

from hf_efficient_lm.tools.anchor_continual import AnchorTrainArguments, run_anchor_training
from hf_efficient_lm.cli import run_cli
from hf_efficient_lm.train import parse_launched_args


def main(argv=None):
    parser = HfArgumentParser((AnchorTrainArguments, TrainingArguments), description=__doc__)
    parser.set_defaults(report_to=["none"], save_strategy="steps", save_steps=100, logging_steps=10,
                        save_total_limit=2)
    args, training_args = parse_launched_args(parser, argv)  # --use_cpu by default for CPU-only DDP
    final_dir = run_anchor_training(args, training_args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"saved AnchorLlama ({args.anchor_mode.upper()}) and tokenizer to {final_dir}")
    return final_dir


if __name__ == "__main__":
    sys.exit(run_cli(main))
