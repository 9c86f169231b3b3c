"""Small shared test helpers: documents written by the tests themselves, the CLI run as the console script runs it,
a Hub API that records what a publish sends, the 2-process DDP launcher, a Trainer killed mid-run and forced thread
switches."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", "model", "token", "cache", "anchor", "byte", "patch", "expert", "cluster"]


def make_documents(n: int = 60, seed: int = 0) -> list[str]:
    """Deterministic pseudo-text: sentences of a small vocabulary with punctuation and newlines."""
    import random

    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        docs.append(" ".join(sentences) + "\n")
    return docs


def write_jsonl(path: Path, texts: list[str], column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        handle.writelines(json.dumps({column: text}) + "\n" for text in texts)
    return path


def write_tiny_corpus(root: Path) -> list[str]:
    """A 300-token BPE tokenizer (``root/tok``) and ``train.jsonl`` / ``valid.jsonl`` (70 / 10 documents) for the
    pretraining tests; returns the documents."""
    from datasets import Dataset

    from hf_efficient_lm.data import iter_texts, train_tokenizer

    docs = make_documents(80)
    tokenizer = train_tokenizer(iter_texts(Dataset.from_dict({"text": docs})), 300, show_progress=False)
    tokenizer.save_pretrained(root / "tok")
    write_jsonl(root / "train.jsonl", docs[:70])
    write_jsonl(root / "valid.jsonl", docs[70:])
    return docs


def save_tiny_base(path: Path, docs: list[str]) -> Path:
    """A tiny random Llama with a 300-token BPE tokenizer trained on ``docs``, both saved in ``path`` (the base a
    continual-pretraining test wraps)."""
    from datasets import Dataset

    from hf_efficient_lm.data import iter_texts, train_tokenizer
    from hf_efficient_lm.testing_utils import save_tiny_llama

    tokenizer = train_tokenizer(iter_texts(Dataset.from_dict({"text": docs})), 300, show_progress=False)
    save_tiny_llama(path, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(path)
    return path


ACCELERATE = Path(sys.executable).with_name("accelerate")
requires_accelerate_cli = pytest.mark.skipif(
    shutil.which("accelerate") is None and not ACCELERATE.exists(), reason="accelerate CLI not installed"
)


# TrainingArguments that make a two-process run comparable with a one-process run of the doubled batch
DDP_PARITY_TRAINER_ARGS = [
    "--learning_rate", "1e-2", "--max_steps", "4", "--logging_steps", "1", "--save_strategy", "no",
    "--seed", "0", "--train_sampling_strategy", "sequential", "--disable_tqdm", "true",
    "--dataloader_pin_memory", "false",
]


def run_cli(*args: str, timeout: int = 300, script: Path | None = None,
            fresh_process: bool = False) -> subprocess.CompletedProcess:
    """``hf-efficient-lm ARGS``: its exit status and what it printed.

    By default in this process, through the wrapper the console script itself runs (``cli.run_cli(cli.main)``, see
    ``cli.console_main``): a fresh interpreter spends ~5 s importing torch and Transformers before the command
    starts. ``fresh_process=True`` (or a ``script``) runs ``python -m hf_efficient_lm.cli ARGS`` (the script) in a
    new process instead, for what only a real interpreter shows (an uncaught traceback).
    """
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if script is not None or fresh_process:
        command = [sys.executable, str(script)] if script else [sys.executable, "-m", "hf_efficient_lm.cli"]
        env = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
        env.pop("HFELM_DEBUG", None)
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    from hf_efficient_lm import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        os.environ.pop(cli.DEBUG_ENV, None)  # (restored by patch.dict)
        try:
            status = cli.run_cli(cli.main, list(args), prog=cli.PROG)
        except SystemExit as stop:  # argparse's usage errors, as the interpreter would turn them into a status
            status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
    return subprocess.CompletedProcess(["hf-efficient-lm", *args], status, stdout.getvalue(), stderr.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, no traceback, and one ``error:`` line holding every needle."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


class FakeHfApi:
    """Records what a publish would send to the Hub."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        self.uploads.append((repo_id, files, kwargs))
        return "commit-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes_and_one(script: Path, ddp_args: list[str], single_args: list[str], timeout: int = 300) -> None:
    """Run ``script`` under ``accelerate launch`` as 2-process CPU (gloo) DDP with ``ddp_args``, then as one plain
    process with ``single_args``; fail with the tail of stderr if either exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launched = subprocess.run(
        [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script), *ddp_args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    assert launched.returncode == 0, launched.stderr[-4000:]
    single = subprocess.run([sys.executable, str(script), *single_args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    assert single.returncode == 0, single.stderr[-4000:]


def one_sgd_step(trainer_class, model, dataset, *, batch_size: int, accumulation: int, output_dir, **trainer_kwargs):
    """The weight change ``[num_params]`` of one optimizer step of ``trainer_class`` (plain SGD, lr 1e-2, no clipping)
    over ``batch_size * accumulation`` rows of ``dataset``: one step over 4 rows must equal 2 x 2 accumulated."""
    import copy

    import torch
    from transformers import TrainingArguments

    from hf_efficient_lm.tools.specialists_training import SpecialistCollator

    model = copy.deepcopy(model).train()
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, learning_rate=1e-2, optim="sgd",
                             max_grad_norm=0.0, lr_scheduler_type="constant", report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, logging_strategy="no", seed=0)
    trainer_class(model=model, args=args, train_dataset=dataset, data_collator=SpecialistCollator(0),
                  **trainer_kwargs).train()
    return torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])


class Killed(Exception):
    """Raised by :func:`trainer_killed_at` in place of a process being killed."""


def trainer_killed_at(trainer_class, step: int):
    """A subclass of ``trainer_class`` whose run dies (:class:`Killed`) when it has finished ``step`` steps, after the
    checkpoints of the earlier steps were written: monkeypatch it into a command's module to test resuming."""
    from transformers import TrainerCallback

    class KillAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Killed

    class KilledTrainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAtStep())

    return KilledTrainer


@contextlib.contextmanager
def forced_thread_switches(interval: float = 1e-6):
    """Inside, Python switches threads every ``interval`` seconds (default a microsecond, against 5 ms), so calls that
    threads make on a shared model interleave finely: state one call leaves for another shows up."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def two_lora_adapters(model, target_modules):
    """``model`` wrapped by PEFT with two LoRA adapters, ``"first"`` and ``"second"``, of random (seeded) weights, so they
    give different logits (PEFT's default init makes an adapter a no-op); in eval mode, as mixed adapter batches need."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = dict(r=4, lora_alpha=8, target_modules=target_modules, init_lora_weights=False)
    peft_model = get_peft_model(model, LoraConfig(**config), adapter_name="first")
    peft_model.add_adapter("second", LoraConfig(**config))
    return peft_model.eval()


@contextlib.contextmanager
def only_adapter(peft_model, name: str):
    """Inside, ``peft_model`` runs with adapter ``name`` alone, or with none for ``"__base__"`` (PEFT's name for the
    base model in ``adapter_names``): what one row of a mixed adapter batch must equal."""
    if name == "__base__":
        with peft_model.disable_adapter():
            yield
    else:
        peft_model.set_adapter(name)
        yield
