"""``accelerate launch`` with two CPU processes (gloo DDP) runs the pretraining script, and its losses equal one
process with the doubled batch."""

import json
from pathlib import Path

import pytest
from datasets import Dataset

from hf_efficient_lm.data import iter_texts, train_tokenizer
from tests.helpers import DDP_PARITY_TRAINER_ARGS, make_documents, requires_accelerate_cli, run_two_processes_and_one, write_jsonl

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pretrain.py"


def _pretrain_args(root: Path, out: Path, per_device_batch: int) -> list[str]:
    return [
        "--tokenizer", str(root / "tok"), "--data_files", str(root / "train.jsonl"), "--preset", "tiny",
        "--block_size", "32", "--output_dir", str(out), "--per_device_train_batch_size", str(per_device_batch),
        *DDP_PARITY_TRAINER_ARGS,
    ]


@requires_accelerate_cli
def test_two_cpu_processes_match_one_process_with_doubled_batch(tmp_path):
    docs = make_documents(60)
    tokenizer = train_tokenizer(iter_texts(Dataset.from_dict({"text": docs})), 300, show_progress=False)
    tokenizer.save_pretrained(tmp_path / "tok")
    write_jsonl(tmp_path / "train.jsonl", docs)
    run_two_processes_and_one(SCRIPT, _pretrain_args(tmp_path, tmp_path / "ddp", 2),
                              [*_pretrain_args(tmp_path, tmp_path / "single", 4), "--use_cpu", "true"], timeout=400)
    ddp = json.loads((tmp_path / "ddp" / "final" / "pretrain_metrics.json").read_text())
    one = json.loads((tmp_path / "single" / "final" / "pretrain_metrics.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["global_batch"] == one["global_batch"] == 4
    assert len(ddp["train_losses"]) == len(one["train_losses"]) == 4
    assert ddp["train_losses"] == pytest.approx(one["train_losses"], rel=2e-3)
