"""Pretrain a LlamaForCausalLM from a size preset on any text dataset.

    python examples/pretrain.py --tokenizer TOK_DIR --data_files a.jsonl b.jsonl --preset 5m \
        --block_size 256 --max_train_tokens 2000000 --output_dir runs/base-5m

Two CPU processes (gloo DDP) — note `--multi_gpu`, which on a GPU-less machine means DDP over CPUs here:

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        examples/pretrain.py --use_cpu true ...

Killed runs resume from the newest checkpoint in --output_dir when started again with the same arguments.
`python examples/pretrain.py --help` lists every option (all of TrainingArguments too).
"""

from hf_efficient_lm.train.pretrain import main

if __name__ == "__main__":
    main()
