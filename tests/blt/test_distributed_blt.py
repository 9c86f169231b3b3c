"""``accelerate launch`` with two CPU processes (gloo DDP) trains a tiny BLT with ``examples/train_blt.py`` (frozen
entropy model inside, precomputed patch lengths, unpacked documents right-padded per process), and its losses, final
evaluation and saved weights equal one process with the doubled batch."""

import json
from pathlib import Path

import pytest
import torch

from hf_efficient_lm import BLTForCausalLM
from hf_efficient_lm.tools.blt_testing import make_tiny_blt, random_bytes
from tests.helpers import make_documents, requires_accelerate_cli, run_two_processes_and_one, write_jsonl

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_blt.py"


def _train_args(root: Path, out: Path, per_process_batch: int) -> list[str]:
    return [
        "--train-files", str(root / "train.jsonl"), "--valid-files", str(root / "code.valid.jsonl"),
        "--entropy-model", str(root / "entropy"), "--target-patch-size", "3", "--local-hidden", "32",
        "--latent-hidden", "64", "--latent-layers", "2", "--decoder-layers", "1", "--window", "16",
        "--hash-buckets", "97", "--seq-len", "128", "--no-pack", "--max-steps", "4", "--eval-rows", "2",
        "--batch-size", str(per_process_batch), "--output-dir", str(out), "--seed", "0",
    ]


@requires_accelerate_cli
def test_two_cpu_processes_train_blt_like_one_process_with_doubled_batch(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", make_documents(40))  # 45..242 bytes: most rows shorter than --seq-len
    write_jsonl(tmp_path / "code.valid.jsonl", make_documents(4, seed=1))
    make_tiny_blt(seed=0).model.entropy_model.save_pretrained(tmp_path / "entropy")
    run_two_processes_and_one(SCRIPT, _train_args(tmp_path, tmp_path / "ddp", 2),
                              _train_args(tmp_path, tmp_path / "single", 4))

    ddp = json.loads((tmp_path / "ddp" / "train_blt_metrics.json").read_text())
    one = json.loads((tmp_path / "single" / "train_blt_metrics.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["global_batch"] == one["global_batch"] == 4 and ddp["steps"] == one["steps"] == 4
    assert ddp["patching_mode"] == "entropy" and 2 < ddp["mean_patch_size"] < 5
    assert len(ddp["train_losses"]) == 4 and all(0 < loss < 10 for loss in ddp["train_losses"])
    assert ddp["train_losses"] == pytest.approx(one["train_losses"], rel=1e-4)
    assert ddp["bits_per_byte"]["code"] == pytest.approx(one["bits_per_byte"]["code"], rel=1e-4)

    # the saved models load, their entropy model is the one given (frozen, untouched) and the weights agree
    models = [BLTForCausalLM.from_pretrained(tmp_path / name).eval() for name in ("ddp", "single")]
    x = random_bytes(2, 40, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [m(x).logits for m in models]
        entropies = models[0].model.entropy_model.entropies(x)[0]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(entropies, make_tiny_blt(seed=0).model.entropy_model.entropies(x)[0], atol=0, rtol=0)
    assert not any(p.requires_grad for p in models[0].model.entropy_model.parameters())
