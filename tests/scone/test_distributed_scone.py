"""``accelerate launch`` with two CPU processes (gloo DDP) runs ``examples/train_scone.py``: continual SCONE
pretraining of a tiny Llama checkpoint (f-grams mined in the script, precomputed match columns, gated fusion), then
the table export. Its per-step losses equal one process with the doubled batch, and both exported table models load
and give the same logits."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from hf_efficient_lm.scone import SconeLlamaForCausalLM
from tests.helpers import (
    DDP_PARITY_TRAINER_ARGS,
    make_documents,
    requires_accelerate_cli,
    run_two_processes_and_one,
    save_tiny_base,
    write_jsonl,
)

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_scone.py"


def _train_args(root: Path, out: Path, per_process_batch: int) -> list[str]:
    return [
        "--base_model", str(root / "llama"), "--data_files", str(root / "train.jsonl"),
        "--validation_files", str(root / "valid.jsonl"), "--num_fgrams", "300", "--max_fgram_len", "4",
        "--min_count", "3", "--fgram_num_layers", "1", "--block_size", "32", "--eval_block_size", "32",
        "--table_dtype", "float32", "--output_dir", str(out), "--per_device_train_batch_size", str(per_process_batch),
        *DDP_PARITY_TRAINER_ARGS,
    ]


@requires_accelerate_cli
def test_two_cpu_processes_train_scone_like_one_process_with_doubled_batch(tmp_path):
    docs = make_documents(80)
    save_tiny_base(tmp_path / "llama", docs)
    write_jsonl(tmp_path / "train.jsonl", docs)
    write_jsonl(tmp_path / "valid.jsonl", make_documents(6, seed=1))
    run_two_processes_and_one(SCRIPT, [*_train_args(tmp_path, tmp_path / "ddp", 2), "--use_cpu", "true"],
                              _train_args(tmp_path, tmp_path / "single", 4))

    ddp = json.loads((tmp_path / "ddp" / "train_scone_metrics.json").read_text())
    one = json.loads((tmp_path / "single" / "train_scone_metrics.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["global_batch"] == one["global_batch"] == 4 and ddp["steps"] == one["steps"] == 4
    assert ddp["num_fgrams"] == one["num_fgrams"] > 0
    assert len(ddp["train_losses"]) == 4 and all(0 < loss < 20 for loss in ddp["train_losses"])
    assert ddp["train_losses"] == pytest.approx(one["train_losses"], rel=2e-3)
    assert ddp["train_losses"][-1] < ddp["train_losses"][0]

    # the exported table models load without the f-gram model, use their f-grams and agree with each other
    tables = [SconeLlamaForCausalLM.from_pretrained(tmp_path / name / "table").eval() for name in ("ddp", "single")]
    assert all(m.config.fgram_mode == "table" and m.model.fgram_model is None for m in tables)
    assert float(tables[0].model.fgram_gate.detach().abs().max()) > 0  # the zero-initialised gate was trained
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llama")
    ids = torch.tensor([tokenizer(make_documents(1, seed=2)[0])["input_ids"][:24]])
    assert (tables[0].match_fgrams(ids)[1] >= 2).any()
    with torch.no_grad():
        logits = [m(ids).logits for m in tables]
    assert torch.isfinite(logits[0]).all()
    torch.testing.assert_close(logits[0], logits[1], atol=2e-3, rtol=2e-3)
    evaluated = [json.loads((tmp_path / name / "eval_scone.json").read_text()) for name in ("ddp", "single")]
    assert evaluated[0]["valid.jsonl"]["scone_ppl"] == pytest.approx(evaluated[1]["valid.jsonl"]["scone_ppl"], rel=2e-3)
