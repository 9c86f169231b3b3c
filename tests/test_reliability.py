"""Issue #15, "silent wrong results": every case refuses (or says what it does) instead of returning a wrong figure.

CLI cases run the console script's wrapper (``tests.helpers.run_cli``) and check exit status 2 with a one-line message naming
the problem.
"""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_efficient_lm.data import iter_texts, tokenizer_digest, train_tokenizer
from hf_efficient_lm.io_utils import atomic_dir, atomic_file
from hf_efficient_lm.train import parse_pretrain_args, run_pretrain
from hf_efficient_lm.train.run_dir import FINGERPRINT_FILE, OutputDirLockedError, lock_output_dir
from tests.helpers import assert_one_line_error, make_documents, run_cli, write_jsonl, write_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_tiny_corpus(root)
    other = train_tokenizer(iter_texts(Dataset.from_dict({"text": make_documents(80, seed=9)[::-1]})), 300,
                            min_frequency=1, show_progress=False)
    other.save_pretrained(root / "other_tok")
    write_jsonl(root / "new.jsonl", make_documents(70, seed=3))
    return root


def _pretrain_argv(corpus, out, *extra, data="train.jsonl", seed="0", steps="3"):
    return ["--tokenizer", str(corpus / "tok"), "--data_files", str(corpus / data), "--preset", "tiny",
            "--block_size", "32", "--output_dir", str(out), "--per_device_train_batch_size", "4",
            "--learning_rate", "1e-2", "--max_steps", steps, "--save_steps", "3", "--logging_steps", "1",
            "--seed", seed, "--use_cpu", "true", "--disable_tqdm", "true", "--dataloader_pin_memory", "false", *extra]


def _pretrain(corpus, out, *extra, **kwargs):
    return run_pretrain(*parse_pretrain_args(_pretrain_argv(corpus, out, *extra, **kwargs)))


# ------------------------------------------------------------------------------------------------- stale resume
def test_resume_only_a_matching_run_refuse_or_start_fresh_otherwise(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    final = _pretrain(corpus, out)
    assert (out / "checkpoint-3" / FINGERPRINT_FILE).exists() and (final / FINGERPRINT_FILE).exists()
    assert "starting a new run" in capsys.readouterr().out

    # the same run again: resumes its own checkpoint and says so; its last step is done, so nothing is trained (the
    # Trainer resumed at max_steps mid-epoch trains one more step: the weights moved, the metrics said 4 steps)
    trained = (final / "model.safetensors").read_bytes()
    _pretrain(corpus, out)
    assert "resuming from" in capsys.readouterr().out and "checkpoint-3" in str(out / "checkpoint-3")
    assert (final / "model.safetensors").read_bytes() == trained and not (out / "checkpoint-4").exists()
    assert json.loads((final / "pretrain_metrics.json").read_text())["steps"] == 3

    # new data or a new seed into the finished run's dir: refused, naming what differs; the old weights stay
    before = (final / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"different run .*data_files"):
        _pretrain(corpus, out, data="new.jsonl")
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        _pretrain(corpus, out, seed="1")
    # a setting that changes the data order: its resume mixed two runs under "fingerprint matches"
    with pytest.raises(ValueError, match=r"schedule \(data_seed: None -> 7\)"):
        _pretrain(corpus, out, "--data_seed", "7")
    assert (final / "model.safetensors").read_bytes() == before

    # told to start fresh: trains all its steps on the new data, and the metrics name that data
    _pretrain(corpus, out, "--overwrite_output_dir", "true", data="new.jsonl")
    assert "starting fresh" in capsys.readouterr().out
    metrics = json.loads((final / "pretrain_metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["data_files"] == ["new.jsonl"] and metrics["resumed_from"] is None
    assert (final / "model.safetensors").read_bytes() != before


def test_checkpoints_of_another_model_are_refused_not_loaded(corpus, tmp_path):
    out = tmp_path / "run"
    foreign = out / "checkpoint-5"
    foreign.mkdir(parents=True)
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 512}))
    with pytest.raises(ValueError, match="holds no run fingerprint.*--overwrite_output_dir"):
        _pretrain(corpus, out)
    final = _pretrain(corpus, out, "--overwrite_output_dir", "true")
    assert not foreign.exists() and json.loads((final / "pretrain_metrics.json").read_text())["steps"] == 3


def _checkpoint(root, step, fingerprint=None, optimizer=True):
    from hf_efficient_lm.train.run_dir import write_fingerprint

    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if optimizer:
        (folder / "optimizer.pt").write_bytes(b"x")
    if fingerprint is not None:  # FingerprintCallback writes it last: without it the save was cut short
        write_fingerprint(folder, fingerprint)
    return folder


def test_a_checkpoint_cut_short_is_not_resumed_and_one_without_optimizer_state_is_refused(tmp_path):
    """A killed save left checkpoint-N without its fingerprint (written last): it was resumed and failed on a missing
    trainer_state.json or a truncated model.safetensors, and the dir stayed stuck. A model-only checkpoint
    (--save_only_model) resumed under "fingerprint matches" with a fresh optimizer and a restarted schedule."""
    from hf_efficient_lm.train.run_dir import decide_resume, write_fingerprint

    run = {"seed": 0}
    out = tmp_path / "run"
    _checkpoint(out, 3, run)
    broken = _checkpoint(out, 6)
    write_fingerprint(out, run)
    decision = decide_resume(out, run)
    assert decision.resume_from == str(out / "checkpoint-3") and "checkpoint-6 cut short" in decision.message
    assert not broken.exists()
    _checkpoint(out, 6)  # the only ones left cut short: the run starts again
    (out / "checkpoint-3").rename(out / "old")
    assert decide_resume(out, run).resume_from is None and not (out / "checkpoint-6").exists()

    model_only = tmp_path / "model_only"
    _checkpoint(model_only, 3, run, optimizer=False)
    write_fingerprint(model_only, run)
    with pytest.raises(ValueError, match=r"checkpoint-3 holds no optimizer state .*restart the optimizer.*--overwrite_output_dir"):
        decide_resume(model_only, run)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        decide_resume(model_only, run, resume_from_checkpoint=str(model_only / "checkpoint-3"))
    assert decide_resume(model_only, run, overwrite=True).resume_from is None and not (model_only / "checkpoint-3").exists()
    assert decide_resume(out, run, resume_from_checkpoint="true").resume_from is None  # Trainer's "newest": decided here


def test_overwrite_removes_what_the_command_wrote_beside_its_checkpoints(tmp_path):
    """train-scone writes table/ and its metrics beside final/: --overwrite_output_dir kept them, and publish put the
    old run's held-out perplexities on the new model's card."""
    from hf_efficient_lm.train.run_dir import decide_resume, write_fingerprint

    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "table").mkdir()
    write_fingerprint(out, {"seed": 0})
    for name in ("eval_scone.json", "train_scone_metrics.json", "notes.txt"):
        (out / name).write_text("{}")
    decision = decide_resume(out, {"seed": 1}, overwrite=True, outputs=("table", "train_scone_metrics.json",
                                                                        "eval_scone.json"))
    assert decision.resume_from is None and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_token_budget_counts_the_short_steps_that_end_epochs(corpus, tmp_path, monkeypatch):
    """--max_train_tokens over two epochs whose last steps are short trained 1% fewer tokens than the budget (the
    steps assumed full batches), and train_tokens reported steps x global batch x block (1% more than trained)."""
    import hf_efficient_lm.train.pretrain as pretrain_module

    seen = []

    class CountingTrainer(pretrain_module.Trainer):
        def training_step(self, model, inputs, *args, **kwargs):
            seen.append(inputs["input_ids"].numel())
            return super().training_step(model, inputs, *args, **kwargs)

    monkeypatch.setattr(pretrain_module, "Trainer", CountingTrainer)
    argv = _pretrain_argv(corpus, tmp_path / "run", "--gradient_accumulation_steps", "2", "--save_strategy", "no")
    argv[argv.index("--per_device_train_batch_size") + 1] = "5"
    at = argv.index("--max_steps")
    del argv[at : at + 2]
    budget = 2 * 32 * 150
    final = run_pretrain(*parse_pretrain_args(argv + ["--max_train_tokens", str(budget)]))
    metrics = json.loads((final / "pretrain_metrics.json").read_text())
    assert metrics["train_blocks"] * 32 < budget < 3 * metrics["train_blocks"] * 32  # into the second epoch
    assert metrics["train_blocks"] % 10 != 0  # every epoch ends in a short step
    assert sum(seen) >= budget and metrics["train_tokens"] == sum(seen)
    with pytest.raises(ValueError, match="either --max_steps .* or --max_train_tokens"):
        run_pretrain(*parse_pretrain_args(argv + ["--max_train_tokens", str(budget), "--max_steps", "4"]))


# ------------------------------------------------------------------------------------------- concurrent writers
def test_a_second_writer_into_a_locked_dir_is_refused(corpus, tmp_path):
    out = tmp_path / "run"
    with lock_output_dir(out):
        with pytest.raises(OutputDirLockedError, match=f"pid {os.getpid()}.*is writing to"):
            _pretrain(corpus, out)
        with pytest.raises(OutputDirLockedError):
            with lock_output_dir(out):
                pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hf_efficient_lm.train.run_dir import lock_output_dir\n"
         "with lock_output_dir(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli("pretrain", *_pretrain_argv(corpus, out))
        assert_one_line_error(result, "another run", str(out))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert not (out / "final").exists()


# ----------------------------------------------------------------------------------------------- pretrain numbers
@pytest.mark.parametrize("extra, needle", [
    (["--max_steps", "0"], "--max_steps must be a positive"),
    (["--max_steps", "-5"], "--max_steps must be a positive"),
    (["--block_size", "100000000"], "--block_size must be between 2 and max_position_embeddings (2048)"),
    (["--max_train_tokens", "0"], "--max_train_tokens must be a positive"),
])
def test_pretrain_numbers_that_would_do_something_else_are_refused(corpus, tmp_path, extra, needle):
    argv = _pretrain_argv(corpus, tmp_path / "run")
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        run_pretrain(*parse_pretrain_args(argv))
    assert not (tmp_path / "run" / "final").exists()


def test_pretrain_cli_max_steps_zero_exits_2_with_one_line(corpus, tmp_path):
    argv = _pretrain_argv(corpus, tmp_path / "run", steps="0")
    assert_one_line_error(run_cli("pretrain", *argv), "--max_steps must be a positive", "got 0")
    assert not (tmp_path / "run" / "final").exists()


# -------------------------------------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def model_dir(corpus, tmp_path_factory):
    from transformers import AutoTokenizer

    from hf_efficient_lm.testing_utils import make_tiny_llama

    folder = tmp_path_factory.mktemp("model") / "m"
    make_tiny_llama(vocab_size=300, max_position_embeddings=64).save_pretrained(folder)
    AutoTokenizer.from_pretrained(corpus / "tok").save_pretrained(folder)
    return folder


def test_evaluate_refuses_missing_weights_foreign_tokenizer_long_windows_and_zero_documents(corpus, model_dir, tmp_path):
    import shutil

    data = str(corpus / "valid.jsonl")
    ok = run_cli("evaluate", "--model", str(model_dir), "--data-files", data, "--block-size", "64")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["documents"] == 10

    gpt2 = tmp_path / "gpt2"
    shutil.copytree(model_dir, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert_one_line_error(run_cli("evaluate", "--model", str(gpt2), "--data-files", data, "--block-size", "32"),
                          "not in the checkpoint", "model_type ('gpt2')")

    # the same vocabulary size, other merges: the digest differs
    assert_one_line_error(run_cli("evaluate", "--model", str(model_dir), "--tokenizer", str(corpus / "other_tok"),
                                  "--data-files", data, "--block-size", "32"), "tokenizer differs")
    assert_one_line_error(run_cli("evaluate", "--model", str(model_dir), "--data-files", data, "--block-size", "256"),
                          "longer than the model's max_position_embeddings (64)")
    assert_one_line_error(run_cli("evaluate", "--model", str(model_dir), "--data-files", data, "--max-documents", "0"),
                          "--max-documents", "positive integer")


def test_evaluate_a_single_string_and_a_tokenizer_digest():
    from transformers import AutoTokenizer

    from hf_efficient_lm.eval import evaluate_causal_lm
    from hf_efficient_lm.testing_utils import make_tiny_llama

    tokenizer = train_tokenizer(iter_texts(Dataset.from_dict({"text": make_documents(30)})), 280, show_progress=False)
    with pytest.raises(TypeError, match="single string"):
        evaluate_causal_lm(make_tiny_llama(vocab_size=280), tokenizer, "one document", show_progress=False)
    assert tokenizer_digest(tokenizer) == tokenizer_digest(tokenizer)
    other = train_tokenizer(iter_texts(Dataset.from_dict({"text": make_documents(30, seed=4)})), 280,
                            show_progress=False)
    assert len(other) == len(tokenizer) and tokenizer_digest(other) != tokenizer_digest(tokenizer)
    del AutoTokenizer


# ------------------------------------------------------------------------------------------------------ specialists
def test_mine_fgrams_refuses_negative_ids_and_unverifiable_vocab_warns():
    from hf_efficient_lm.scone import mine_fgrams

    with pytest.raises(ValueError, match="token ids must be non-negative, got -3"):
        mine_fgrams([[5, 6, -3, 5, 6]], num_fgrams=2, min_count=1, show_progress=False)
    with pytest.raises(ValueError, match="barrier_ids must be non-negative"):
        mine_fgrams([[5, 6, 5, 6]], num_fgrams=2, min_count=1, barrier_ids=[-1], show_progress=False)
    tokenizer = train_tokenizer(iter_texts(Dataset.from_dict({"text": make_documents(30)})), 280, show_progress=False)
    vocab = mine_fgrams([[5, 6, 7, 5, 6, 7]], num_fgrams=3, min_count=1, show_progress=False, vocab_size=280)
    with pytest.warns(UserWarning, match="mined without tokenizer="):
        vocab.check_tokenizer(tokenizer)
    mined = mine_fgrams([[5, 6, 7, 5, 6, 7]], num_fgrams=3, min_count=1, show_progress=False, tokenizer=tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mined.check_tokenizer(tokenizer)


def test_blt_overrides_are_validated_and_an_invalid_config_is_never_saved(tmp_path):
    from hf_efficient_lm.blt import BLTForCausalLM
    from hf_efficient_lm.tools.blt_testing import make_tiny_blt

    model = make_tiny_blt()
    model.save_pretrained(tmp_path / "blt")
    for override, needle in ((dict(patching_threshold=math.nan), "patching_threshold must be a finite number"),
                             (dict(patching_mode="words"), "patching_mode must be one of"),
                             (dict(max_patch_length=0), "max_patch_length must be a positive int")):
        with pytest.raises(ValueError, match=needle):
            BLTForCausalLM.from_pretrained(tmp_path / "blt", **override)
    loaded = BLTForCausalLM.from_pretrained(tmp_path / "blt", patching_threshold=0.5)
    assert loaded.config.patching_threshold == 0.5
    with pytest.raises(ValueError, match="patching_mode"):
        loaded.config.patching_mode = "words"
    assert loaded.config.patching_mode == model.config.patching_mode  # the old value is kept
    loaded.config.__dict__["max_patch_length"] = 0  # bypassing setattr: save_pretrained still refuses
    with pytest.raises(ValueError, match="max_patch_length"):
        loaded.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad" / "config.json").exists()


def test_calibrate_threshold_refuses_nan_targets():
    from hf_efficient_lm.tools.blt_data import calibrate_threshold

    entropies = torch.rand(2, 16)
    for bad in (math.nan, math.inf, 0.5):
        with pytest.raises(ValueError, match="target_patch_size must be a finite number >= 1"):
            calibrate_threshold(entropies, bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        calibrate_threshold(torch.full((1, 4), math.nan), 2.0)
    assert math.isfinite(calibrate_threshold(entropies, 2.0))


def test_train_blt_with_a_mistyped_entropy_model_exits_2(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", make_documents(5))
    result = run_cli("--train-files", str(tmp_path / "train.jsonl"), "--entropy-model", str(tmp_path / "entropyy"),
                     "--output-dir", str(tmp_path / "out"), script=ROOT / "examples" / "train_blt.py")
    assert_one_line_error(result, "--entropy-model", "entropyy", "not a saved BLTEntropyModel")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------ permissions
def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_bytes(b"x")
        with atomic_file(tmp_path / "table.bin") as handle:
            handle.write(b"x")
        os.umask(0o027)
        with atomic_dir(tmp_path / "private") as tmp:
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "table.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o750
