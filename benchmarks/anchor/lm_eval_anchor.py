"""The EleutherAI lm-evaluation-harness on a local task, with full attention and with the AnSAN mask.

The task is the sentence-completion multiple choice of ``hf_efficient_lm.tools.anchor_mcq`` written to local jsonl
files (test + few-shot split) with a generated task YAML (``output_type: multiple_choice``, acc / acc_norm), so
nothing is downloaded. The model is wrapped by lm-eval's own ``HFLM``: "anchor" loads the checkpoint as is (every
log-likelihood comes from one forward with the AnSAN mask, which equals pruned-cache inference — the paper's
"+AnSAN" protocol), "full" loads the same weights with ``anchor_token_ids=[]`` (plain causal attention).
Needs the optional dependency ``lm-eval`` (``pip install -e ".[eval]"``).

    python benchmarks/anchor/lm_eval_anchor.py --model runs/ep/final --items 200 --shots 5
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from bench_common_anchor import corpus_texts

from hf_efficient_lm.tools.anchor_mcq import sentence_cloze_items
from hf_efficient_lm.eval.benchmarking import benchmark_parser, parse_benchmark_args

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
output_type: multiple_choice
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: label
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_task(folder: Path, items: int, shots_pool: int, seed: int, name: str) -> None:
    texts = corpus_texts("fortunes", "valid") + corpus_texts("pydocs", "valid")
    pool = sentence_cloze_items(texts, items + shots_pool, seed=seed)
    for split, rows in (("train", pool[:shots_pool]), ("test", pool[shots_pool:])):
        with open(folder / f"{split}.jsonl", "w") as handle:
            for item in rows:
                handle.write(json.dumps(dict(context=item.context, choices=item.choices, label=item.label)) + "\n")
    (folder / f"{name}.yaml").write_text(
        TASK_YAML.format(name=name, train=folder / "train.jsonl", test=folder / "test.jsonl")
    )


def main(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", required=True, help="AnchorLlama checkpoint folder with its tokenizer")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parse_benchmark_args(parser, argv)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        sys.exit("lm-eval is not installed: pip install 'lm-eval>=0.4'")
    from transformers import AutoTokenizer

    from hf_efficient_lm.anchor import AnchorLlamaForCausalLM

    name = "hfelm_anchor_cloze"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_task(Path(tmp), args.items, max(args.shots, 1) * 4, args.seed, name)
        manager = TaskManager(include_path=tmp)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        for setting, overrides in (("full", dict(anchor_token_ids=[])), ("anchor", {})):
            model = AnchorLlamaForCausalLM.from_pretrained(args.model, **overrides).eval()
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu" if not torch.cuda.is_available()
                      else "cuda")
            out = simple_evaluate(model=lm, tasks=[name], num_fewshot=args.shots, task_manager=manager,
                                  random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                  fewshot_random_seed=args.seed)
            results[setting] = out["results"][name]
    print(f"\nlm-eval {name} ({args.items} items, {args.shots}-shot, 4 choices) on {args.model}")
    for setting, metrics in results.items():
        print(f"{setting:7} acc {metrics['acc,none']:.3f} ± {metrics['acc_stderr,none']:.3f}   "
              f"acc_norm {metrics['acc_norm,none']:.3f}")


if __name__ == "__main__":
    main()
