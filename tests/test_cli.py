import json
import subprocess
import sys

import pytest

from hf_efficient_lm.cli import COMMANDS, build_parser, main
from tests.helpers import FakeHfApi, make_documents, write_jsonl


def test_every_subcommand_explains_itself(capsys):
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert {"train-tokenizer", "pretrain", "evaluate", "publish"} <= set(subcommands)
    passthrough = {command.name for command in COMMANDS if command.passthrough}  # their own parsers: next test
    for name, sub in subcommands.items():
        if name in passthrough:
            continue
        assert sub.format_help().count("--") >= 2, name
    result = subprocess.run([sys.executable, "-m", "hf_efficient_lm.cli", "pretrain", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--preset" in result.stdout and "--max_train_tokens" in result.stdout


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.passthrough], ids=lambda c: c.name)
def test_every_tool_command_is_in_the_table_and_answers_help(command, capsys):
    assert command.name in build_parser()._subparsers._group_actions[0].choices
    with pytest.raises(SystemExit) as done:
        main([command.name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.count("--") >= 2, command.name


def test_underscore_options_reach_a_command_with_its_own_parser(capsys):
    """README promises either spelling; the passthrough tools' argparse parsers knew the dashes only."""
    main(["plan-specialists", "--pretraining_budget", "100", "--specialization_budget", "10", "--num_domains", "2"])
    underscores = capsys.readouterr().out
    main(["plan-specialists", "--pretraining-budget", "100", "--specialization-budget", "10", "--num-domains", "2"])
    assert underscores == capsys.readouterr().out and underscores.strip()


def test_the_table_covers_every_family():
    targets = " ".join(command.target for command in COMMANDS)
    for family in ("anchor", "scone", "blt", "specialists"):
        assert family in targets, family


def test_train_tokenizer_then_evaluate_then_dry_run_publish(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "docs.jsonl", make_documents(40))
    main(["train-tokenizer", "--data-files", str(data), "--vocab-size", "300", "--output-dir", str(tmp_path / "tok")])
    from transformers import AutoTokenizer

    from hf_efficient_lm.testing_utils import make_tiny_llama

    # sharpened (initializer_range 0.2): a near-uniform random model scores alike under every window size
    make_tiny_llama(vocab_size=300, initializer_range=0.2).save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tmp_path / "tok").save_pretrained(tmp_path / "model")
    capsys.readouterr()
    main(["evaluate", "--model", str(tmp_path / "model"), "--data-files", str(data), "--block-size", "32"])
    result = json.loads(capsys.readouterr().out)
    assert result["documents"] == 40 and result["bits_per_byte"] > 0
    # the options reach the evaluation: the figures are evaluate_causal_lm's with the same settings (and those
    # settings change them)
    from hf_efficient_lm.eval import evaluate_causal_lm

    model = make_tiny_llama(vocab_size=300, initializer_range=0.2)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    documents = make_documents(40)
    assert result == pytest.approx(evaluate_causal_lm(model, tokenizer, documents, block_size=32,
                                                      show_progress=False).as_dict(), rel=1e-5)
    main(["evaluate", "--model", str(tmp_path / "model"), "--data-files", str(data), "--block-size", "16",
          "--max-documents", "10"])
    small = json.loads(capsys.readouterr().out)
    expected = evaluate_causal_lm(model, tokenizer, documents[:10], block_size=16, show_progress=False)
    assert small == pytest.approx(expected.as_dict(), rel=1e-5) and small["documents"] == 10
    window_32 = evaluate_causal_lm(model, tokenizer, documents[:10], block_size=32, show_progress=False)
    assert abs(window_32.loss / expected.loss - 1) > 1e-3
    # --dtype reaches the loaded model (its figures differ from float32 by less than kernel noise: checked at the load)
    import torch

    import hf_efficient_lm.eval as evaluation

    loaded, load = [], evaluation.load_causal_lm_strict

    def recording_load(*args, **kwargs):
        loaded.append(load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(evaluation, "load_causal_lm_strict", recording_load)
    main(["evaluate", "--model", str(tmp_path / "model"), "--data-files", str(data), "--max-documents", "2",
          "--dtype", "bfloat16"])
    assert json.loads(capsys.readouterr().out)["documents"] == 2 and loaded[0].dtype == torch.bfloat16
    main(["publish", "--model", str(tmp_path / "model"), "--repo-id", "me/tiny", "--dry-run",
          "--metric", "docs:perplexity=12.5", "--base-model", "me/base-5m", "--staging-dir", str(tmp_path / "staged")])
    published = json.loads(capsys.readouterr().out)
    assert "README.md" in published["files"] and "model.safetensors" in published["files"]
    card = (tmp_path / "staged" / "README.md").read_text()
    assert "12.5" in card and "base_model: me/base-5m" in card


def test_publish_command_uploads_through_hfapi_with_its_visibility(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from hf_efficient_lm.testing_utils import make_tiny_llama

    api = FakeHfApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)  # (publish makes its HfApi when none is given)
    make_tiny_llama().save_pretrained(tmp_path / "model")
    for flags, private in (([], False), (["--private"], True)):
        main(["publish", "--model", str(tmp_path / "model"), "--repo-id", "me/x", *flags])
        assert api.repos[-1] == ("me/x", {"exist_ok": True, "private": private, "repo_type": "model"})
    assert [repo for repo, _, _ in api.uploads] == ["me/x", "me/x"] and "README.md" in api.uploads[-1][1]


def test_bad_metric_syntax_is_explained(capsys):
    with pytest.raises(SystemExit):
        main(["publish", "--model", "x", "--repo-id", "me/x", "--metric", "oops"])
    assert "is not DATASET:METRIC=VALUE" in capsys.readouterr().err


def test_vocab_mismatch_in_evaluate_is_named(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", make_documents(40))
    main(["train-tokenizer", "--data-files", str(data), "--vocab-size", "300", "--output-dir", str(tmp_path / "tok")])
    from hf_efficient_lm.testing_utils import save_tiny_llama

    save_tiny_llama(tmp_path / "model")  # vocab 128 < 300
    with pytest.raises(ValueError, match="vocab mismatch"):
        main(["evaluate", "--model", str(tmp_path / "model"), "--tokenizer", str(tmp_path / "tok"),
              "--data-files", str(data)])
