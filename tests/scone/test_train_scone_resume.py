"""Issue #15, stale resume, for ``hf-efficient-lm train-scone``: re-running into a run's dir resumes only the same
run (and says so); new data or a new seed is refused naming what differs, keeping the old weights; told to start
fresh, it trains all its steps on the new data and the metrics name it."""

import json

import pytest
from hf_efficient_lm.tools.scone_training import main as train_scone
from tests.helpers import make_documents, save_tiny_base, write_jsonl


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scone_resume")
    docs = make_documents(60)
    save_tiny_base(root / "llama", docs)
    write_jsonl(root / "train.jsonl", docs)
    write_jsonl(root / "new.jsonl", make_documents(60, seed=5))
    return root


def _argv(root, data="train.jsonl", seed="0", *extra):
    return ["--base_model", str(root / "llama"), "--data_files", str(root / data), "--num_fgrams", "100",
            "--max_fgram_len", "3", "--min_count", "2", "--fgram_num_layers", "1", "--block_size", "32",
            "--table_dtype", "float32", "--output_dir", str(root / "run"), "--per_device_train_batch_size", "4",
            "--max_steps", "2", "--save_steps", "2", "--learning_rate", "1e-2", "--seed", seed, "--use_cpu", "true",
            "--disable_tqdm", "true", "--report_to", "none", *extra]


def test_train_scone_resumes_only_its_own_run(root, capsys):
    out = train_scone(_argv(root))
    assert "starting a new run" in capsys.readouterr().out
    weights = (out / "final" / "model.safetensors").read_bytes()
    checkpoint = out / "checkpoint-2"  # loads on its own: weights, f-gram index and (as pretrain's) the tokenizer
    assert (checkpoint / "fgram_index.safetensors").exists() and (checkpoint / "tokenizer.json").exists()

    train_scone(_argv(root))  # the same run again: resumes its own checkpoint and says so
    assert "resuming from" in capsys.readouterr().out

    with pytest.raises(ValueError, match=r"different run .*data_files"):
        train_scone(_argv(root, data="new.jsonl"))
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        train_scone(_argv(root, seed="1"))
    assert (out / "final" / "model.safetensors").read_bytes() == weights

    train_scone(_argv(root, "new.jsonl", "0", "--overwrite_output_dir", "true"))
    assert "starting fresh" in capsys.readouterr().out
    metrics = json.loads((out / "train_scone_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["data_files"] == ["new.jsonl"] and metrics["resumed_from"] is None
    assert (out / "final" / "model.safetensors").read_bytes() != weights


def test_a_token_budget_gives_train_scone_the_steps_it_gives_pretrain(root):
    """--max_train_tokens 200 in rows of 4 x 32 tokens: 1.56 steps, rounded up by both commands (train-scone rounded
    down, training its 'same budget' on fewer tokens than the base it is compared with)."""
    from transformers import TrainingArguments

    from hf_efficient_lm.train.run_dir import steps_for_token_budget

    args = TrainingArguments(output_dir=str(root / "unused"), per_device_train_batch_size=4, use_cpu=True)
    assert steps_for_token_budget(200, args, 32) == 2 and steps_for_token_budget(256, args, 32) == 2
    argv = _argv(root, "train.jsonl", "0", "--max_train_tokens", "200", "--output_dir", str(root / "budget"))
    del argv[argv.index("--max_steps") : argv.index("--max_steps") + 2]  # (both are refused: the budget sets the steps)
    out = train_scone(argv)
    metrics = json.loads((out / "train_scone_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_tokens"] == 256
