import json

import pytest
import torch
from safetensors.torch import load_file

import hf_efficient_lm.train.pretrain as pretrain_module
from hf_efficient_lm.train import LLAMA_PRESETS, llama_config_from_preset, parse_pretrain_args, run_pretrain
from tests.helpers import Killed, trainer_killed_at, write_tiny_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_tiny_corpus(root)
    return root


def _args(corpus, out, *extra):
    return parse_pretrain_args([
        "--tokenizer", str(corpus / "tok"), "--data_files", str(corpus / "train.jsonl"), "--preset", "tiny",
        "--block_size", "32", "--output_dir", str(out), "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--max_steps", "6", "--save_steps", "3", "--logging_steps", "1",
        "--seed", "0", "--use_cpu", "true", "--disable_tqdm", "true", "--dataloader_pin_memory", "false", *extra,
    ])


def test_pretrain_trains_evaluates_and_saves_final_model(corpus, tmp_path):
    final = run_pretrain(*_args(corpus, tmp_path / "run", "--validation_files", str(corpus / "valid.jsonl")))
    metrics = json.loads((final / "pretrain_metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["world_size"] == 1
    assert metrics["train_losses"][-1] < metrics["train_losses"][0]
    assert metrics["eval_perplexity"] > 1
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())


def test_killed_run_resumes_to_the_same_weights(corpus, tmp_path, monkeypatch):
    reference = run_pretrain(*_args(corpus, tmp_path / "reference"))

    monkeypatch.setattr(pretrain_module, "Trainer", trainer_killed_at(pretrain_module.Trainer, 4))
    with pytest.raises(Killed):
        run_pretrain(*_args(corpus, tmp_path / "killed"))
    assert (tmp_path / "killed" / "checkpoint-3").is_dir() and not (tmp_path / "killed" / "final").exists()
    monkeypatch.undo()
    resumed = run_pretrain(*_args(corpus, tmp_path / "killed"))
    expected, got = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_unknown_preset_and_other_model_in_output_dir(corpus, tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        llama_config_from_preset("huge", vocab_size=300)
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    other = llama_config_from_preset("1m", vocab_size=300)
    other.save_pretrained(final)
    with pytest.raises(FileExistsError, match="holds another model"):
        run_pretrain(*_args(corpus, tmp_path / "run"))


def test_presets_have_the_advertised_sizes():
    from transformers import LlamaForCausalLM

    def params(preset, vocab):
        with torch.device("meta"):
            return sum(p.numel() for p in LlamaForCausalLM(llama_config_from_preset(preset, vocab_size=vocab)).parameters())

    assert 4.5e6 < params("5m", 4096) < 6e6
    assert 15e6 < params("20m", 8192) < 25e6
    assert 0.9e9 < params("1b", 32000) < 1.3e9
    assert set(LLAMA_PRESETS) >= {"tiny", "5m", "20m", "1b"}


def test_pretrain_builds_the_preset_and_reads_the_column_documents_and_blocks_it_is_given(corpus, tmp_path):
    """--preset, --max_position_embeddings, --text_column, --max_documents and --block_size reach the model, the
    training blocks and the held-out figure (eval_loss: the mean token loss of the validation blocks)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM

    from hf_efficient_lm.data import load_text_dataset, pack_dataset
    from tests.helpers import write_jsonl

    docs = load_text_dataset(str(corpus / "train.jsonl"))["text"]
    valid = load_text_dataset(str(corpus / "valid.jsonl"))["text"]
    write_jsonl(tmp_path / "train.jsonl", docs, column="body")
    write_jsonl(tmp_path / "valid.jsonl", valid, column="body")
    args, training_args = _args(corpus, tmp_path / "run", "--preset", "200k", "--max_position_embeddings", "64",
                                "--text_column", "body", "--max_documents", "20", "--block_size", "16",
                                "--validation_files", str(tmp_path / "valid.jsonl"), "--max_steps", "1")
    args.data_files = [str(tmp_path / "train.jsonl")]
    final = run_pretrain(args, training_args)
    model = LlamaForCausalLM.from_pretrained(final).eval()
    preset = LLAMA_PRESETS["200k"]
    assert {key: getattr(model.config, key) for key in preset} == preset
    assert model.config.max_position_embeddings == 64
    tok = AutoTokenizer.from_pretrained(final)
    metrics = json.loads((final / "pretrain_metrics.json").read_text())
    blocks = pack_dataset(Dataset.from_dict({"text": docs[:20]}), tok, 16)
    assert metrics["train_blocks"] == len(blocks) != len(pack_dataset(Dataset.from_dict({"text": docs}), tok, 16))
    valid_ids = torch.tensor(pack_dataset(Dataset.from_dict({"text": valid}), tok, 16)["input_ids"])
    with torch.no_grad():
        loss = model(valid_ids, labels=valid_ids).loss.item()
    assert metrics["eval_loss"] == pytest.approx(loss, rel=1e-4)
